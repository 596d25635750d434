//! The name of every environment variable Switchboard reads, the one place they are spelled:
//! code reads `names::SB_...`, never a string literal, so a rename is one edit here and a
//! typo is a compile error. Grouped by the part that reads them (its table is in
//! [`crate::tables`]); a variable read by more than one part is listed once, under the first.

/// What every Switchboard variable's name starts with (the harness passes these on to the
/// processes it starts; [`crate::env::check_names`] holds the tables to it).
pub const PREFIX: &str = "SB_";

// Every service: client tokens, cluster credentials, dev mode, proxies, origins (service-kit's
// `CommonConfig`).
pub const SB_JWT_SECRET: &str = "SB_JWT_SECRET";
pub const SB_CLUSTER_SECRET: &str = "SB_CLUSTER_SECRET";
pub const SB_SERVICE_SECRET: &str = "SB_SERVICE_SECRET";
pub const SB_CALLER_KEYS: &str = "SB_CALLER_KEYS";
pub const SB_JWT_PUBLIC_KEY_FILE: &str = "SB_JWT_PUBLIC_KEY_FILE";
pub const SB_JWT_PRIVATE_KEY_FILE: &str = "SB_JWT_PRIVATE_KEY_FILE";
pub const SB_DEV_MODE: &str = "SB_DEV_MODE";
pub const SB_JWT_ISSUER: &str = "SB_JWT_ISSUER";
pub const SB_JWT_AUDIENCE: &str = "SB_JWT_AUDIENCE";
pub const SB_JWT_LEEWAY_SECS: &str = "SB_JWT_LEEWAY_SECS";
pub const SB_JWT_JWKS_URL: &str = "SB_JWT_JWKS_URL";
pub const SB_JWT_JWKS_REFRESH_SECS: &str = "SB_JWT_JWKS_REFRESH_SECS";
pub const SB_JWT_JWKS_CA_FILE: &str = "SB_JWT_JWKS_CA_FILE";
pub const SB_JWT_HS256: &str = "SB_JWT_HS256";
pub const SB_TRUSTED_PROXIES: &str = "SB_TRUSTED_PROXIES";
pub const SB_SERVER_SENDER_PREFIXES: &str = "SB_SERVER_SENDER_PREFIXES";
pub const SB_ALLOWED_ORIGINS: &str = "SB_ALLOWED_ORIGINS";

// Redis through Sentinel, every service (service-kit's `RedisConfig`).
pub const SB_REDIS_SENTINELS: &str = "SB_REDIS_SENTINELS";
pub const SB_REDIS_MASTER_NAME: &str = "SB_REDIS_MASTER_NAME";
pub const SB_REDIS_PREFIX: &str = "SB_REDIS_PREFIX";
pub const SB_REDIS_TIMEOUT_MS: &str = "SB_REDIS_TIMEOUT_MS";
pub const SB_REDIS_USERNAME: &str = "SB_REDIS_USERNAME";
pub const SB_REDIS_PASSWORD: &str = "SB_REDIS_PASSWORD";
pub const SB_REDIS_SENTINEL_USERNAME: &str = "SB_REDIS_SENTINEL_USERNAME";
pub const SB_REDIS_SENTINEL_PASSWORD: &str = "SB_REDIS_SENTINEL_PASSWORD";
pub const SB_REDIS_TLS: &str = "SB_REDIS_TLS";
pub const SB_REDIS_SENTINEL_TLS: &str = "SB_REDIS_SENTINEL_TLS";
pub const SB_REDIS_TLS_CA_FILE: &str = "SB_REDIS_TLS_CA_FILE";

// Logging, every binary (service-kit's `telemetry::init`).
pub const SB_LOG_FORMAT: &str = "SB_LOG_FORMAT";
/// The standard `tracing_subscriber` filter variable (`EnvFilter::DEFAULT_ENV`).
pub const RUST_LOG: &str = "RUST_LOG";

// PostgreSQL TLS: the message service and the webhook dispatcher (service-kit's `PostgresTls`).
pub const SB_POSTGRES_SSLMODE: &str = "SB_POSTGRES_SSLMODE";
pub const SB_POSTGRES_CA_FILE: &str = "SB_POSTGRES_CA_FILE";

// The server API's keys: the message service and the webhook dispatcher (service-kit's `ApiKeys`).
pub const SB_API_KEYS_FILE: &str = "SB_API_KEYS_FILE";
pub const SB_API_KEYS: &str = "SB_API_KEYS";

// Kafka clients: socket servers, managers, message service, webhook dispatcher
// (`switchboard-kafka`'s `KafkaConfig`).
pub const SB_KAFKA_BROKERS: &str = "SB_KAFKA_BROKERS";
pub const SB_MESSAGE_TOPIC: &str = "SB_MESSAGE_TOPIC";
pub const SB_EVENTS_TOPIC: &str = "SB_EVENTS_TOPIC";
pub const SB_HANDLER_TOPIC_PREFIX: &str = "SB_HANDLER_TOPIC_PREFIX";
pub const SB_KAFKA_LINGER_MS: &str = "SB_KAFKA_LINGER_MS";
pub const SB_KAFKA_IDEMPOTENCE: &str = "SB_KAFKA_IDEMPOTENCE";
pub const SB_KAFKA_REPLICATION_FACTOR: &str = "SB_KAFKA_REPLICATION_FACTOR";
pub const SB_KAFKA_SECURITY_PROTOCOL: &str = "SB_KAFKA_SECURITY_PROTOCOL";
pub const SB_KAFKA_CA_FILE: &str = "SB_KAFKA_CA_FILE";
pub const SB_KAFKA_SASL_MECHANISM: &str = "SB_KAFKA_SASL_MECHANISM";
pub const SB_KAFKA_SASL_USERNAME: &str = "SB_KAFKA_SASL_USERNAME";
pub const SB_KAFKA_SASL_PASSWORD: &str = "SB_KAFKA_SASL_PASSWORD";

// The registry (`registry::config`).
pub const SB_REGISTRY_BIND: &str = "SB_REGISTRY_BIND";
pub const SB_SERVER_STALE_MS: &str = "SB_SERVER_STALE_MS";
pub const SB_RESERVATION_TTL_MS: &str = "SB_RESERVATION_TTL_MS";
pub const SB_DEV_TOKEN_TTL_SECS: &str = "SB_DEV_TOKEN_TTL_SECS";
pub const SB_ASSIGN_RATE_PER_IP: &str = "SB_ASSIGN_RATE_PER_IP";
pub const SB_ASSIGN_BURST_PER_IP: &str = "SB_ASSIGN_BURST_PER_IP";
pub const SB_RESERVATIONS_PER_IP: &str = "SB_RESERVATIONS_PER_IP";
pub const SB_REGISTRY_HTTP_WORKERS: &str = "SB_REGISTRY_HTTP_WORKERS";
pub const SB_PUBLIC_SERVER_LIST: &str = "SB_PUBLIC_SERVER_LIST";

// The socket server (`socket_server::config`).
pub const SB_SOCKET_BIND: &str = "SB_SOCKET_BIND";
pub const SB_SOCKET_PUBLIC_URL: &str = "SB_SOCKET_PUBLIC_URL";
pub const SB_SOCKET_HEALTH_URL: &str = "SB_SOCKET_HEALTH_URL";
pub const SB_SOCKET_OPS_BIND: &str = "SB_SOCKET_OPS_BIND";
pub const SB_HANDSHAKE_TIMEOUT_MS: &str = "SB_HANDSHAKE_TIMEOUT_MS";
pub const SB_HANDSHAKES_PER_IP: &str = "SB_HANDSHAKES_PER_IP";
pub const SB_MAX_CONNECTIONS_PER_IP: &str = "SB_MAX_CONNECTIONS_PER_IP";
pub const SB_SERVER_ID: &str = "SB_SERVER_ID";
pub const SB_REGISTRY_URL: &str = "SB_REGISTRY_URL";
pub const SB_MAX_CONNECTIONS: &str = "SB_MAX_CONNECTIONS";
pub const SB_MAX_FRAME_BYTES: &str = "SB_MAX_FRAME_BYTES";
pub const SB_MAX_BODY_BYTES: &str = "SB_MAX_BODY_BYTES";
pub const SB_HEARTBEAT_INTERVAL_MS: &str = "SB_HEARTBEAT_INTERVAL_MS";
pub const SB_CLIENT_TIMEOUT_MS: &str = "SB_CLIENT_TIMEOUT_MS";
pub const SB_CLIENT_WRITE_TIMEOUT_MS: &str = "SB_CLIENT_WRITE_TIMEOUT_MS";
pub const SB_RECONCILE_INTERVAL_MS: &str = "SB_RECONCILE_INTERVAL_MS";
pub const SB_OUTBOUND_QUEUE: &str = "SB_OUTBOUND_QUEUE";
pub const SB_CLIENT_RATE_PER_SEC: &str = "SB_CLIENT_RATE_PER_SEC";
pub const SB_CLIENT_RATE_BURST: &str = "SB_CLIENT_RATE_BURST";
pub const SB_SHUTDOWN_GRACE_MS: &str = "SB_SHUTDOWN_GRACE_MS";
pub const SB_MESSAGING_ENABLED: &str = "SB_MESSAGING_ENABLED";
pub const SB_MANAGER_URLS: &str = "SB_MANAGER_URLS";
pub const SB_MANAGER_LANES: &str = "SB_MANAGER_LANES";
pub const SB_CONNECTS_PER_IP_PER_SEC: &str = "SB_CONNECTS_PER_IP_PER_SEC";
pub const SB_CONNECTS_BURST_PER_IP: &str = "SB_CONNECTS_BURST_PER_IP";
pub const SB_MAX_CONNECTIONS_PER_USER: &str = "SB_MAX_CONNECTIONS_PER_USER";
pub const SB_MANAGER_LANE_BATCHES: &str = "SB_MANAGER_LANE_BATCHES";
pub const SB_HANDLER_HEARTBEAT_MS: &str = "SB_HANDLER_HEARTBEAT_MS";
pub const SB_MAPPING_RENEW_MS: &str = "SB_MAPPING_RENEW_MS";
pub const SB_DELIVERY_FETCH_WAIT_MS: &str = "SB_DELIVERY_FETCH_WAIT_MS";
pub const SB_TOKEN_EXPIRY_NOTICE_MS: &str = "SB_TOKEN_EXPIRY_NOTICE_MS";
pub const SB_TOKEN_MAX_LIFETIME_SECS: &str = "SB_TOKEN_MAX_LIFETIME_SECS";

// The socket manager (`socket_manager::config`).
// Also reads `SB_MAX_BODY_BYTES`, `SB_TOKEN_MAX_LIFETIME_SECS` (above).
pub const SB_MANAGER_BIND: &str = "SB_MANAGER_BIND";
pub const SB_MESSAGE_SERVICE_URL: &str = "SB_MESSAGE_SERVICE_URL";
pub const SB_LOCK_TTL_MS: &str = "SB_LOCK_TTL_MS";
pub const SB_LOCK_WAIT_MS: &str = "SB_LOCK_WAIT_MS";
pub const SB_PRODUCE_TIMEOUT_MS: &str = "SB_PRODUCE_TIMEOUT_MS";
pub const SB_IDEMPOTENCY_TTL_SECS: &str = "SB_IDEMPOTENCY_TTL_SECS";
pub const SB_USER_MAPPING_TTL_MS: &str = "SB_USER_MAPPING_TTL_MS";
pub const SB_HANDLER_TTL_MS: &str = "SB_HANDLER_TTL_MS";
pub const SB_MESSAGE_PARTITIONS: &str = "SB_MESSAGE_PARTITIONS";
pub const SB_PRESENCE_MAX_GROUP: &str = "SB_PRESENCE_MAX_GROUP";
pub const SB_DELETE_HANDLER_TOPICS: &str = "SB_DELETE_HANDLER_TOPICS";
pub const SB_SEQ_REPLICA_ACKS: &str = "SB_SEQ_REPLICA_ACKS";
pub const SB_SEQ_REPLICA_ACK_TIMEOUT_MS: &str = "SB_SEQ_REPLICA_ACK_TIMEOUT_MS";
pub const SB_MANAGER_ID: &str = "SB_MANAGER_ID";
pub const SB_SEQ_FLUSHES_IN_FLIGHT: &str = "SB_SEQ_FLUSHES_IN_FLIGHT";
pub const SB_ROUTE_BROADCAST_FROM: &str = "SB_ROUTE_BROADCAST_FROM";
pub const SB_USER_FRAMES_PER_MIN: &str = "SB_USER_FRAMES_PER_MIN";
pub const SB_USER_FRAMES_BURST: &str = "SB_USER_FRAMES_BURST";
pub const SB_USER_BYTES_PER_MIN: &str = "SB_USER_BYTES_PER_MIN";
pub const SB_USER_BYTES_BURST: &str = "SB_USER_BYTES_BURST";
pub const SB_TYPING_INTERVAL_MS: &str = "SB_TYPING_INTERVAL_MS";
pub const SB_USER_SENDS_PER_DAY: &str = "SB_USER_SENDS_PER_DAY";

// The message service (`message_service::config`).
// Also reads `SB_MANAGER_URLS` (above).
pub const SB_MESSAGE_BIND: &str = "SB_MESSAGE_BIND";
pub const SB_DATABASE_URL: &str = "SB_DATABASE_URL";
pub const SB_DB_MAX_CONNECTIONS: &str = "SB_DB_MAX_CONNECTIONS";
pub const SB_MAX_GROUP_MEMBERS: &str = "SB_MAX_GROUP_MEMBERS";
pub const SB_INGEST_FETCH_WAIT_MS: &str = "SB_INGEST_FETCH_WAIT_MS";
pub const SB_INGEST_REWIND_RECORDS: &str = "SB_INGEST_REWIND_RECORDS";
pub const SB_DB_REST_MAX_CONNECTIONS: &str = "SB_DB_REST_MAX_CONNECTIONS";
pub const SB_DB_REST_STATEMENT_TIMEOUT_MS: &str = "SB_DB_REST_STATEMENT_TIMEOUT_MS";
pub const SB_CONVERSATIONS_PER_MINUTE: &str = "SB_CONVERSATIONS_PER_MINUTE";
pub const SB_MEMBERS_ADDED_PER_MINUTE: &str = "SB_MEMBERS_ADDED_PER_MINUTE";
pub const SB_GROUP_ADD_POLICY: &str = "SB_GROUP_ADD_POLICY";
pub const SB_PRESENCE_POLICY: &str = "SB_PRESENCE_POLICY";

// Message events: edits, deletes, reactions (`message_service::events`).
pub const SB_EDIT_WINDOW_SECS: &str = "SB_EDIT_WINDOW_SECS";
pub const SB_MAX_EDITS: &str = "SB_MAX_EDITS";
pub const SB_MAX_REACTIONS_PER_MESSAGE: &str = "SB_MAX_REACTIONS_PER_MESSAGE";

// Attachments of the message service (`message_service::attachments::config`).
pub const SB_S3_ENDPOINT: &str = "SB_S3_ENDPOINT";
pub const SB_S3_PUBLIC_ENDPOINT: &str = "SB_S3_PUBLIC_ENDPOINT";
pub const SB_S3_REGION: &str = "SB_S3_REGION";
pub const SB_S3_BUCKET: &str = "SB_S3_BUCKET";
pub const SB_S3_ACCESS_KEY_ID: &str = "SB_S3_ACCESS_KEY_ID";
pub const SB_S3_SECRET_ACCESS_KEY: &str = "SB_S3_SECRET_ACCESS_KEY";
pub const SB_S3_PATH_STYLE: &str = "SB_S3_PATH_STYLE";
pub const SB_ATTACHMENT_URL_EXPIRY_SECS: &str = "SB_ATTACHMENT_URL_EXPIRY_SECS";
pub const SB_ATTACHMENT_MAX_BYTES: &str = "SB_ATTACHMENT_MAX_BYTES";
pub const SB_ATTACHMENT_USER_QUOTA_BYTES: &str = "SB_ATTACHMENT_USER_QUOTA_BYTES";
pub const SB_ATTACHMENT_CONTENT_TYPES: &str = "SB_ATTACHMENT_CONTENT_TYPES";
pub const SB_ATTACHMENT_IMAGE_MAX_PIXELS: &str = "SB_ATTACHMENT_IMAGE_MAX_PIXELS";
pub const SB_ATTACHMENT_UNREFERENCED_TTL_SECS: &str = "SB_ATTACHMENT_UNREFERENCED_TTL_SECS";
pub const SB_ATTACHMENT_SWEEP_INTERVAL_SECS: &str = "SB_ATTACHMENT_SWEEP_INTERVAL_SECS";

// The health checker (`health_checker::config`).
pub const SB_HEALTH_BIND: &str = "SB_HEALTH_BIND";
pub const SB_PROBE_INTERVAL_MS: &str = "SB_PROBE_INTERVAL_MS";
pub const SB_PROBE_TIMEOUT_MS: &str = "SB_PROBE_TIMEOUT_MS";
pub const SB_FAILURE_THRESHOLD: &str = "SB_FAILURE_THRESHOLD";

// The webhook dispatcher (`webhook_dispatcher::config`).
pub const SB_WEBHOOK_BIND: &str = "SB_WEBHOOK_BIND";
pub const SB_WEBHOOK_DATABASE_URL: &str = "SB_WEBHOOK_DATABASE_URL";
pub const SB_WEBHOOK_DB_SCHEMA: &str = "SB_WEBHOOK_DB_SCHEMA";
pub const SB_WEBHOOK_DB_MAX_CONNECTIONS: &str = "SB_WEBHOOK_DB_MAX_CONNECTIONS";
pub const SB_WEBHOOK_ALLOW_NETS: &str = "SB_WEBHOOK_ALLOW_NETS";
pub const SB_WEBHOOK_TIMEOUT_MS: &str = "SB_WEBHOOK_TIMEOUT_MS";
pub const SB_WEBHOOK_CONNECT_TIMEOUT_MS: &str = "SB_WEBHOOK_CONNECT_TIMEOUT_MS";
pub const SB_WEBHOOK_RETRY_BASE_MS: &str = "SB_WEBHOOK_RETRY_BASE_MS";
pub const SB_WEBHOOK_RETRY_MAX_DELAY_MS: &str = "SB_WEBHOOK_RETRY_MAX_DELAY_MS";
pub const SB_WEBHOOK_RETRY_FOR_SECS: &str = "SB_WEBHOOK_RETRY_FOR_SECS";
pub const SB_WEBHOOK_DISABLE_AFTER_FAILURES: &str = "SB_WEBHOOK_DISABLE_AFTER_FAILURES";
pub const SB_WEBHOOK_DISABLE_AFTER_SECS: &str = "SB_WEBHOOK_DISABLE_AFTER_SECS";
pub const SB_WEBHOOK_MAX_PENDING: &str = "SB_WEBHOOK_MAX_PENDING";
pub const SB_WEBHOOK_IN_FLIGHT: &str = "SB_WEBHOOK_IN_FLIGHT";
pub const SB_WEBHOOK_SECRET_OVERLAP_SECS: &str = "SB_WEBHOOK_SECRET_OVERLAP_SECS";
pub const SB_WEBHOOK_RETENTION_SECS: &str = "SB_WEBHOOK_RETENTION_SECS";
pub const SB_WEBHOOK_MAX_ENDPOINTS: &str = "SB_WEBHOOK_MAX_ENDPOINTS";

// Push notifications of the webhook dispatcher (`webhook_dispatcher::push`).
pub const SB_PUSH_GATEWAY_URL: &str = "SB_PUSH_GATEWAY_URL";
pub const SB_PUSH_GATEWAY_SECRET: &str = "SB_PUSH_GATEWAY_SECRET";
pub const SB_PUSH_DATABASE_URL: &str = "SB_PUSH_DATABASE_URL";
pub const SB_PUSH_COALESCE_MS: &str = "SB_PUSH_COALESCE_MS";
pub const SB_PUSH_GRACE_MS: &str = "SB_PUSH_GRACE_MS";
pub const SB_PUSH_TTL_SECS: &str = "SB_PUSH_TTL_SECS";
pub const SB_PUSH_PREVIEW_CHARS: &str = "SB_PUSH_PREVIEW_CHARS";
pub const SB_PUSH_MAX_RECIPIENTS: &str = "SB_PUSH_MAX_RECIPIENTS";
pub const SB_PUSH_RETRY_BASE_MS: &str = "SB_PUSH_RETRY_BASE_MS";
pub const SB_PUSH_RETRY_MAX_DELAY_MS: &str = "SB_PUSH_RETRY_MAX_DELAY_MS";
pub const SB_PUSH_TIMEOUT_MS: &str = "SB_PUSH_TIMEOUT_MS";
pub const SB_PUSH_IN_FLIGHT: &str = "SB_PUSH_IN_FLIGHT";

// The tools: the reference push gateway (`push-gateway-sink`, which also reads
// `SB_PUSH_GATEWAY_SECRET`), `devstack`, and the test harness's local object store.
pub const SB_PUSH_SINK_BIND: &str = "SB_PUSH_SINK_BIND";
pub const SB_PUSH_SINK_REJECT: &str = "SB_PUSH_SINK_REJECT";
pub const SB_DEVSTACK_WEBHOOKS: &str = "SB_DEVSTACK_WEBHOOKS";
/// Extra page origins the harness's object store allows (its bucket's CORS rule), comma
/// separated (docs/configuration.md, "Attachments"), on top of the stack's own nginx.
pub const SB_S3_CORS_ORIGINS: &str = "SB_S3_CORS_ORIGINS";
