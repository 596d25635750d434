-- Issue 28: attachments on an S3-compatible store, and full-text search of messages.

-- One row per attachment the message service handed an upload URL for. The object lives in
-- the bucket under `object_key` (`c/{conversation_id}/{id}`), which the server chose: the
-- key names the conversation, so an object can only be referenced from it.
CREATE TABLE attachments (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    uploader_id     TEXT NOT NULL,
    object_key      TEXT NOT NULL UNIQUE,
    filename        TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    size            BIGINT NOT NULL CHECK (size >= 0),
    -- Images: read from the object's header when a send first claims it.
    width           INTEGER,
    height          INTEGER,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The send that claimed it (verified by a socket manager before numbering): the
    -- message (conversation_id, uploader_id, claimed_client_msg_id) once stored.
    claimed_client_msg_id TEXT,
    claimed_at      TIMESTAMPTZ,
    -- Set by the trigger below when that message is stored.
    message_id      TEXT,
    -- Set when the message referencing it is deleted (issue 28 part 1 calls
    -- `attachments::mark_message_deleted`); the sweeper then deletes the object.
    message_deleted_at TIMESTAMPTZ,
    -- Set by the sweeper once the object is gone from the store (row kept for the quota's
    -- history and so a late claim finds `attachment_not_found`).
    object_deleted_at TIMESTAMPTZ
);
-- The per-user quota: live bytes of one uploader.
CREATE INDEX attachments_live_by_uploader ON attachments (uploader_id)
    WHERE object_deleted_at IS NULL;
-- History: a message's attachments.
CREATE INDEX attachments_by_message ON attachments (message_id) WHERE message_id IS NOT NULL;
-- The trigger's probe: claimed, not yet linked (a handful of rows at any time).
CREATE INDEX attachments_claimed ON attachments (conversation_id, uploader_id, claimed_client_msg_id)
    WHERE claimed_client_msg_id IS NOT NULL AND message_id IS NULL;
-- The sweeper: never referenced, or referenced by a deleted message.
CREATE INDEX attachments_unlinked ON attachments (created_at)
    WHERE message_id IS NULL AND object_deleted_at IS NULL;
CREATE INDEX attachments_doomed ON attachments (message_deleted_at)
    WHERE message_deleted_at IS NOT NULL AND object_deleted_at IS NULL;

-- Links claimed attachments to their message when ingest stores it: one statement per
-- insert statement (ingest inserts a batch at a time), joining the new rows with the few
-- claimed-but-unlinked attachments, so ingest's code is unchanged and a batch without
-- attachments costs one probe of a near-empty partial index.
CREATE FUNCTION link_attachments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE attachments a
       SET message_id = n.message_id
      FROM new_messages n
     WHERE a.claimed_client_msg_id IS NOT NULL
       AND a.message_id IS NULL
       AND a.conversation_id = n.conversation_id
       AND a.uploader_id = n.sender_id
       AND a.claimed_client_msg_id = n.client_msg_id;
    RETURN NULL;
END $$;
CREATE TRIGGER messages_link_attachments
    AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION link_attachments();

-- Search: a tsvector kept by PostgreSQL itself (a stored generated column), so ingest writes
-- it with the row and an edit or an erased body updates it in the same statement. The
-- `simple` configuration (lowercased words, no stemming, no stop words) treats every
-- language alike. The GIN index serves `@@`.
ALTER TABLE messages
    ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED;
CREATE INDEX messages_search ON messages USING GIN (search);
