//! The variables every service reads itself: client tokens, cluster credentials, dev mode,
//! trusted proxies, browser origins. Parsed by service-kit's `CommonConfig`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_ALLOWED_ORIGINS, SB_CALLER_KEYS, SB_CLUSTER_SECRET, SB_DEV_MODE, SB_JWT_AUDIENCE,
    SB_JWT_HS256, SB_JWT_ISSUER, SB_JWT_JWKS_CA_FILE, SB_JWT_JWKS_REFRESH_SECS, SB_JWT_JWKS_URL,
    SB_JWT_LEEWAY_SECS, SB_JWT_PRIVATE_KEY_FILE, SB_JWT_PUBLIC_KEY_FILE, SB_JWT_SECRET,
    SB_SERVER_SENDER_PREFIXES, SB_SERVICE_SECRET, SB_TRUSTED_PROXIES,
};

/// The published defaults of the secrets: fine for a demo, never for a deployment.
pub const DEFAULT_JWT_SECRET: &str = "switchboard-dev-jwt-secret";
pub const DEFAULT_CLUSTER_SECRET: &str = "switchboard-dev-cluster-secret";
/// `SB_TRUSTED_PROXIES`'s default: loopback and the private networks.
pub const DEFAULT_TRUSTED_PROXIES: &str =
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

/// What service-kit's `CommonConfig::from_lookup` reads itself (Redis's are in
/// [`super::redis::ENV`]).
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_JWT_SECRET,
        default: Some(DEFAULT_JWT_SECRET),
        doc: "HS256 secret that signs and verifies client JWTs (only while SB_JWT_HS256 is \
              on). Outside dev mode the published default, or anything shorter than 32 \
              bytes, is refused at startup. Whoever holds it can mint any user's token: give \
              it to no service that only verifies; use SB_JWT_PUBLIC_KEY_FILE there.",
    },
    EnvVar {
        name: SB_JWT_PUBLIC_KEY_FILE,
        default: None,
        doc: "A PEM file with an Ed25519 public key (`openssl pkey -pubout`) that verifies \
              EdDSA client tokens. It cannot mint: the socket servers and the message service \
              should hold this, not a secret. Setting it turns SB_JWT_HS256=auto off.",
    },
    EnvVar {
        name: SB_JWT_PRIVATE_KEY_FILE,
        default: None,
        doc: "A PEM file with the matching Ed25519 private key (PKCS#8, `openssl genpkey \
              -algorithm ed25519`): mints EdDSA tokens (the registry's dev tokens, \
              mint-token). Only the service that mints holds it.",
    },
    EnvVar {
        name: SB_CLUSTER_SECRET,
        default: Some(DEFAULT_CLUSTER_SECRET),
        doc: "The shared mode's one secret of the cluster-only routes (used only where \
              SB_SERVICE_SECRET or SB_CALLER_KEYS is unset). Same rule as SB_JWT_SECRET \
              outside dev mode.",
    },
    EnvVar {
        name: SB_SERVICE_SECRET,
        default: None,
        doc: "This service's own credential, sent with its role (x-cluster-service) as \
              x-cluster-secret on every cluster-only call. Unset: SB_CLUSTER_SECRET.",
    },
    EnvVar {
        name: SB_CALLER_KEYS,
        default: None,
        doc: "The callers this service accepts on its cluster-only routes, as \
              role=sha256hex pairs, comma separated (roles: socket-server, socket-manager, \
              message-service, registry, health-checker, webhook-dispatcher; the hash is the \
              hex SHA-256 of the secret, without a newline). Each route \
              serves only the roles that need it. Unset: the shared mode, where \
              SB_CLUSTER_SECRET opens every cluster-only route.",
    },
    EnvVar {
        name: SB_DEV_MODE,
        default: Some("false"),
        doc: "true: POST /api/v1/dev/token mints tokens for any user id, and the default or \
              short secrets are accepted. For demos and tests only.",
    },
    EnvVar {
        name: SB_JWT_ISSUER,
        default: None,
        doc: "When set, a client token's `iss` must equal it. Unset: not checked. Required \
              with SB_JWT_JWKS_URL.",
    },
    EnvVar {
        name: SB_JWT_AUDIENCE,
        default: None,
        doc: "When set, a client token's `aud` must contain it. Unset: not checked. Required \
              with SB_JWT_JWKS_URL.",
    },
    EnvVar {
        name: SB_JWT_LEEWAY_SECS,
        default: Some("30"),
        doc: "Clock skew allowed when checking a token's `exp` and `nbf`, in seconds.",
    },
    EnvVar {
        name: SB_JWT_JWKS_URL,
        default: None,
        doc: "An identity provider's JWKS URL: its RS256/ES256 keys verify tokens beside the \
              HS256 secret. Unset: only the secret.",
    },
    EnvVar {
        name: SB_JWT_JWKS_REFRESH_SECS,
        default: Some("300"),
        doc: "How often the JWKS is fetched again, in seconds (only with SB_JWT_JWKS_URL).",
    },
    EnvVar {
        name: SB_JWT_JWKS_CA_FILE,
        default: None,
        doc: "A PEM file of CA certificates trusted for the https JWKS URL beside the public \
              web roots (a private CA). Unset: the public web roots only.",
    },
    EnvVar {
        name: SB_JWT_HS256,
        default: Some("auto"),
        doc: "Whether client tokens signed with SB_JWT_SECRET (HS256) are accepted: true, \
              false, or auto (true without SB_JWT_JWKS_URL, false with it: the identity \
              provider issues the tokens, and the secret every service holds cannot forge one).",
    },
    EnvVar {
        name: SB_SERVER_SENDER_PREFIXES,
        // protocol's `token::DEFAULT_RESERVED_PREFIXES`, which the config reads by default (the
        // service kit's check_defaults test compares the two).
        default: Some("_system.,_bot."),
        doc: "Reserved sender ids for the server API, as prefixes, comma separated: a sender \
              starting with one may post to any conversation without being a member (the \
              app's system and bot messages), and no user token for such an id verifies \
              anywhere (socket servers, REST) or is minted. `none`: no reserved senders.",
    },
    EnvVar {
        name: SB_TRUSTED_PROXIES,
        default: Some(DEFAULT_TRUSTED_PROXIES),
        doc: "Networks (comma separated, e.g. 10.0.0.0/8) of the proxies allowed to tell a \
              client's address in X-Forwarded-For (nginx, a load balancer, a TLS terminator): \
              the hops are walked back past every one of them. List exactly your own, the \
              same as nginx's set_real_ip_from; empty trusts nobody.",
    },
    EnvVar {
        name: SB_ALLOWED_ORIGINS,
        default: None,
        doc: "Browser origins allowed in, comma separated (e.g. https://chat.example.com), or \
              `*`. Unset: WebSocket upgrades from any origin and no CORS headers (same-origin \
              pages only). Set: a page from another origin can neither open a WebSocket (403) \
              nor read REST answers. Requests without an Origin header are not checked.",
    },
];

/// The common table.
pub const TABLE: EnvTable = EnvTable {
    title: "Common (every service)",
    vars: ENV,
};
