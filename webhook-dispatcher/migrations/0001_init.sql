-- The webhook dispatcher's tables. They live in the dispatcher's own schema
-- (SB_WEBHOOK_DB_SCHEMA, default `webhooks`), the only schema on its connections' search_path,
-- so this history (`_sqlx_migrations`) is the dispatcher's alone, even in the message
-- service's database.

CREATE TABLE endpoints (
    id                   TEXT PRIMARY KEY,
    url                  TEXT NOT NULL,
    event_types          TEXT[] NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    disabled_at          TIMESTAMPTZ,
    disabled_reason      TEXT,
    -- The current streak of failed attempts (reset by any success), and when it began.
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    failing_since        TIMESTAMPTZ
);

-- Signing secrets in their text form (`whsec_...`): they sign, so they are kept, not hashed.
-- The current one has no retire_at; a rotated one signs until its retire_at.
CREATE TABLE endpoint_secrets (
    endpoint_id TEXT NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    secret      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    retire_at   TIMESTAMPTZ,
    PRIMARY KEY (endpoint_id, secret)
);

-- One row per (endpoint, event): recorded before the topics' offsets are committed, so the
-- queue of every endpoint survives a crash; (endpoint_id, webhook_id) unique, so an event read
-- twice is stored once.
CREATE TABLE deliveries (
    id              BIGSERIAL PRIMARY KEY,
    endpoint_id     TEXT NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    webhook_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    ordering_key    TEXT NOT NULL,
    ord             BIGINT NOT NULL,
    body            TEXT NOT NULL,
    -- pending | delivered | dead
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    last_status     INTEGER,
    last_error      TEXT,
    UNIQUE (endpoint_id, webhook_id)
);

-- The heads of each endpoint's streams: the lowest pending (ord, id) per ordering key.
CREATE INDEX deliveries_pending ON deliveries (endpoint_id, ordering_key, ord, id)
    WHERE state = 'pending';
CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE state <> 'pending';
