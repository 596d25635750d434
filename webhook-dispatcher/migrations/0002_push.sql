-- The notifier's queue (docs/push.md): one row per (user, conversation). `waiting` rows are
-- pushes to decide and send once `due_at` comes; messages that arrive meanwhile collapse into
-- the row (its newest message is the push's). `idle` rows remember the newest message already
-- pushed (or suppressed, or dropped), so a message read again from the log after a crash is
-- not pushed twice. `version` grows with every message, so finishing a push never forgets a
-- message that arrived while it was being sent.

CREATE TABLE push_queue (
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    -- waiting | idle
    state           TEXT NOT NULL DEFAULT 'waiting',
    -- What the user was when the window opened: offline (coalescing window) or online (grace).
    mode            TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    message_id      TEXT NOT NULL,
    sender_id       TEXT NOT NULL,
    -- The body's first SB_PUSH_PREVIEW_CHARS characters; NULL in id-only mode.
    preview         TEXT,
    message_at      TIMESTAMPTZ NOT NULL,
    due_at          TIMESTAMPTZ NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    version         BIGINT NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    PRIMARY KEY (user_id, conversation_id)
);
CREATE INDEX push_queue_due ON push_queue (due_at) WHERE state = 'waiting';
CREATE INDEX push_queue_idle ON push_queue (updated_at) WHERE state = 'idle';
