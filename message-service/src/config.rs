//! The message service's settings, read from the environment (or any lookup of variables): its
//! table ([`tables::message_service`]) names every variable it reads itself (beside the common and
//! Kafka ones), `from_lookup` reads them (`from_env` from the process environment).

use switchboard_config::env::EnvTable;
use switchboard_config::lookup::{lookup_or, lookup_string, process_env, ConfigError, Lookup};
use switchboard_config::names::{
    SB_CONVERSATIONS_PER_MINUTE, SB_DATABASE_URL, SB_DB_MAX_CONNECTIONS,
    SB_DB_REST_MAX_CONNECTIONS, SB_DB_REST_STATEMENT_TIMEOUT_MS, SB_GROUP_ADD_POLICY,
    SB_INGEST_FETCH_WAIT_MS, SB_INGEST_REWIND_RECORDS, SB_MANAGER_URLS, SB_MAX_GROUP_MEMBERS,
    SB_MEMBERS_ADDED_PER_MINUTE, SB_MESSAGE_BIND, SB_PRESENCE_POLICY,
};
use switchboard_config::tables;
use switchboard_kafka::KafkaConfig;
use switchboard_protocol::UserId;
use switchboard_service_kit::config::CommonConfig;

/// Everything the message-service binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    tables::COMMON[0],
    tables::COMMON[1],
    tables::COMMON[2],
    tables::kafka::TABLE,
    tables::message_service::TABLE,
    tables::message_service::API_KEYS_TABLE,
    tables::attachments::TABLE,
    tables::postgres::TABLE,
    tables::events::TABLE,
];

#[derive(Debug, Clone)]
pub struct MessageServiceConfig {
    pub common: CommonConfig,
    pub kafka: KafkaConfig,
    /// `SB_MESSAGE_BIND`, default `127.0.0.1:8401`.
    pub bind: String,
    /// `SB_DATABASE_URL`, default `postgres://switchboard@127.0.0.1:5432/switchboard`.
    pub database_url: String,
    /// `SB_DB_MAX_CONNECTIONS` (the ingest pool), default 10.
    pub db_max_connections: u32,
    /// Largest group (`SB_MAX_GROUP_MEMBERS`, default 1000).
    pub max_group_members: usize,
    /// How long a log fetch lets records accumulate (`SB_INGEST_FETCH_WAIT_MS`, default 100).
    pub ingest_fetch_wait_ms: u64,
    /// Records re-read before each committed offset on start (`SB_INGEST_REWIND_RECORDS`,
    /// default 1000).
    pub ingest_rewind_records: u64,
    /// `SB_DB_REST_MAX_CONNECTIONS`, default 10.
    pub db_rest_max_connections: u32,
    /// `SB_DB_REST_STATEMENT_TIMEOUT_MS`, default 5000 (0: none).
    pub db_rest_statement_timeout_ms: u64,
    /// `SB_CONVERSATIONS_PER_MINUTE`, default 60.
    pub conversations_per_minute: u32,
    /// `SB_MEMBERS_ADDED_PER_MINUTE`, default 300.
    pub members_added_per_minute: u32,
    /// `SB_GROUP_ADD_POLICY`, default `open`.
    pub group_add_policy: GroupAddPolicy,
    /// `SB_PRESENCE_POLICY`, default `shared`.
    pub presence_policy: PresencePolicy,
    /// `SB_MANAGER_URLS`: the managers that number server-API messages.
    pub manager_urls: Vec<String>,
    /// `SB_API_KEYS_FILE` / `SB_API_KEYS`: the server API's keys (none: every /server
    /// request is 401).
    pub api_keys: switchboard_service_kit::api_keys::ApiKeys,
}

impl MessageServiceConfig {
    /// Whether `user` is a reserved system/bot sender (`SB_SERVER_SENDER_PREFIXES`, a
    /// common setting: token verification refuses such ids everywhere).
    pub fn is_reserved_sender(&self, user: &UserId) -> bool {
        self.common.token_policy.is_reserved(user)
    }
}

/// A comma-separated list, blanks dropped.
fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// How users come into groups (`SB_GROUP_ADD_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAddPolicy {
    /// Added directly (a user who left is invited instead).
    Open,
    /// Invited; a member only on accepting.
    Invite,
}

impl std::str::FromStr for GroupAddPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(GroupAddPolicy::Open),
            "invite" => Ok(GroupAddPolicy::Invite),
            _ => Err("must be `open` or `invite`".into()),
        }
    }
}

/// Whose presence a user may see (`SB_PRESENCE_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresencePolicy {
    /// Anyone sharing a conversation.
    Shared,
    /// Only through a conversation both accepted.
    Accepted,
}

impl std::str::FromStr for PresencePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(PresencePolicy::Shared),
            "accepted" => Ok(PresencePolicy::Accepted),
            _ => Err("must be `shared` or `accepted`".into()),
        }
    }
}

impl MessageServiceConfig {
    /// Reads the settings from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads the settings from `lookup` (a variable's value by name): the same parsing and
    /// defaults as `from_env`, from a map of one's own (tests).
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(MessageServiceConfig {
            common: CommonConfig::from_lookup(lookup)?,
            kafka: KafkaConfig::from_lookup(lookup)?,
            bind: lookup_string(lookup, SB_MESSAGE_BIND, "127.0.0.1:8401"),
            database_url: lookup_string(
                lookup,
                SB_DATABASE_URL,
                "postgres://switchboard@127.0.0.1:5432/switchboard",
            ),
            db_max_connections: lookup_or(lookup, SB_DB_MAX_CONNECTIONS, 10)?,
            max_group_members: lookup_or(lookup, SB_MAX_GROUP_MEMBERS, 1000)?,
            ingest_fetch_wait_ms: lookup_or(lookup, SB_INGEST_FETCH_WAIT_MS, 100)?,
            ingest_rewind_records: lookup_or(lookup, SB_INGEST_REWIND_RECORDS, 1000)?,
            db_rest_max_connections: lookup_or(lookup, SB_DB_REST_MAX_CONNECTIONS, 10)?,
            db_rest_statement_timeout_ms: lookup_or(lookup, SB_DB_REST_STATEMENT_TIMEOUT_MS, 5000)?,
            conversations_per_minute: lookup_or(lookup, SB_CONVERSATIONS_PER_MINUTE, 60)?,
            members_added_per_minute: lookup_or(lookup, SB_MEMBERS_ADDED_PER_MINUTE, 300)?,
            group_add_policy: lookup_or(lookup, SB_GROUP_ADD_POLICY, GroupAddPolicy::Open)?,
            presence_policy: lookup_or(lookup, SB_PRESENCE_POLICY, PresencePolicy::Shared)?,
            manager_urls: list(&lookup_string(
                lookup,
                SB_MANAGER_URLS,
                "http://127.0.0.1:8201,http://127.0.0.1:8202",
            )),
            api_keys: switchboard_service_kit::api_keys::ApiKeys::from_lookup(lookup)?,
        })
    }
}
