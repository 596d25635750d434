-- Fencing the message log (docs/architecture.md, "Fencing the log").
--
-- `log_epochs`: each conversation's latest log epoch. A socket manager that checks a sequence
-- counter against the log (a new conversation, or a Redis master that may have lost numbers)
-- takes the next epoch here, durably, before it appends the fence record to the log.
CREATE TABLE log_epochs (
    conversation_id TEXT PRIMARY KEY,
    epoch           BIGINT NOT NULL
);

-- `log_fences`: written by ingest when it reaches a fence record in the log. `floor_seq` is the
-- highest seq stored from everything before the fence. A record numbered under an older epoch
-- with a seq above the floor of a later epoch's fence is a deposed holder's late append: ingest
-- refuses it (`dead_letters`, `switchboard_ingest_fenced_total`).
CREATE TABLE log_fences (
    conversation_id TEXT NOT NULL,
    epoch           BIGINT NOT NULL,
    floor_seq       BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, epoch)
);
