-- Records from the log the database cannot take: a data error (SQLSTATE class 22 or 23, for
-- example U+0000 in a text) or a conflict with a different stored message (two messages given
-- one seq). Ingest moves past them, counting them in `switchboard_ingest_dead_letters_total`;
-- an operator reads them here.
--
-- `record` is the record as JSON text with U+0000 escaped as \u0000 (JSONB refuses it too), so
-- a dead letter can always be stored. `"offset"` is quoted: OFFSET is a reserved word.
CREATE TABLE dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    BIGINT NOT NULL,
    -- The message's place in its Kafka record: a manager's envelope carries many.
    item        INTEGER NOT NULL DEFAULT 0,
    record      TEXT NOT NULL,
    error       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A redelivered record is dead-lettered once.
    UNIQUE (topic, partition, "offset", item)
);
