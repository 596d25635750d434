-- Issue 28 part 1: edits, deletes, reactions and replies, numbered in the conversation's
-- sequence like messages (docs/architecture.md, "Message events").
--
-- Every numbered record is a row of `messages`, events included: one table holds every
-- `seq`, so the primary key stays the last fence of the sequence, a log fence's floor
-- (`max(seq)`) counts events, and a manager restores the idempotency records of events from
-- the store as it does those of messages. An event row's `body` is always empty (so the
-- search column never indexes it); what it carries is in `payload`.

ALTER TABLE messages
    -- `message`, `edit`, `delete` or `reaction`.
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'message',
    -- Events: the message they change. Messages: the message they reply to.
    ADD COLUMN target_id TEXT,
    -- `edit`: the new text (erased when its message is deleted); `reaction`: the emoji
    -- (NULL: the sender's reaction removed).
    ADD COLUMN payload TEXT,
    -- `delete`: by a group's owner or admin, not the author (checked before numbering).
    ADD COLUMN moderated BOOLEAN NOT NULL DEFAULT false,
    -- Events: NULL until ingest applied it, then whether it changed anything (false: its
    -- message was deleted before it, or was not a message of this conversation).
    ADD COLUMN applied BOOLEAN,
    -- Messages: their current state, kept by ingest as it applies the events in seq order.
    ADD COLUMN edited_at TIMESTAMPTZ,
    ADD COLUMN edit_count INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN deleted_at TIMESTAMPTZ,
    ADD COLUMN deleted_by TEXT;

-- NOT VALID: every existing row has the default; checking them would scan the table under
-- the migration's lock. New rows are checked.
ALTER TABLE messages
    ADD CONSTRAINT messages_kind CHECK (kind IN ('message', 'edit', 'delete', 'reaction')) NOT VALID;

-- Ingest's probe for events not yet applied: a handful of rows at any time.
CREATE INDEX messages_events_unapplied ON messages (conversation_id, seq)
    WHERE kind <> 'message' AND applied IS NULL;
-- A message's edits (erased with it) and replies.
CREATE INDEX messages_by_target ON messages (target_id) WHERE target_id IS NOT NULL;

-- One reaction per user per message: a new emoji replaces the user's reaction.
CREATE TABLE message_reactions (
    message_id      TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    emoji           TEXT NOT NULL,
    -- The reaction event that set it.
    seq             BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id)
);
