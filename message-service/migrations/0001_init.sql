-- Conversations, members, the message log and receipts.

CREATE TABLE conversations (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name        TEXT,
    -- "a|b" (sorted) for direct conversations, so a pair has exactly one.
    direct_key  TEXT UNIQUE,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seq    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    joined_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id);

-- The primary key is the fence of the sequence lock: a (conversation, seq) is stored once.
CREATE TABLE messages (
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    message_id      TEXT NOT NULL UNIQUE,
    sender_id       TEXT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, sender_id, client_msg_id)
);

CREATE TABLE receipts (
    conversation_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    delivered_seq   BIGINT NOT NULL DEFAULT 0,
    read_seq        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
