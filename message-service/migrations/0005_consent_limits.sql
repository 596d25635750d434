-- Issue 24: bounded REST, consent (invites, acceptance, blocks), quotas, and membership changes
-- whose mirror update cannot be lost. See docs/protocol.md and docs/security.md.

-- A membership row is `active` (a member: sends, receives, reads) or `invited` (a group
-- invite the user has not accepted yet: none of that). `accepted_at` is when the member
-- accepted the conversation: created it, asked for the same direct conversation, accepted it
-- or an invite, or had a message stored in it. Presence under SB_PRESENCE_POLICY=accepted is
-- shared only through conversations both users accepted.
ALTER TABLE members
    ADD COLUMN state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'invited')),
    ADD COLUMN accepted_at TIMESTAMPTZ,
    ADD COLUMN invited_by TEXT;

UPDATE members m
   SET accepted_at = m.joined_at
  FROM conversations c
 WHERE c.id = m.conversation_id AND c.created_by = m.user_id;
UPDATE members m
   SET accepted_at = m.joined_at
 WHERE m.accepted_at IS NULL
   AND EXISTS (SELECT 1 FROM messages msg
                WHERE msg.conversation_id = m.conversation_id AND msg.sender_id = m.user_id);

-- Bumped in the transaction of every change of a conversation's active members: the fence
-- of its Redis mirror (a mirror write of an older version is refused).
ALTER TABLE conversations
    ADD COLUMN members_version BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN member_count INTEGER NOT NULL DEFAULT 0;
UPDATE conversations c
   SET member_count = (SELECT count(*) FROM members m WHERE m.conversation_id = c.id);

-- Membership changes whose Redis mirror update is still to be applied or re-checked (by the
-- request that made the change, then by the message service's outbox sweeper): written in the
-- change's transaction, so a failed or lost mirror update is applied again.
CREATE TABLE mirror_outbox (
    conversation_id TEXT PRIMARY KEY,
    version         BIGINT NOT NULL,
    changed_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_at      TIMESTAMPTZ
);

-- Who blocked whom: a blocked user cannot start a direct conversation with, add or invite,
-- or see the presence of the user who blocked them.
CREATE TABLE blocks (
    user_id     TEXT NOT NULL,
    blocked_id  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, blocked_id)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked_id);

-- Per-user quota events (conversations created, members added), counted over the last
-- minute; older rows are deleted by the sweeper.
CREATE TABLE quota_events (
    user_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX quota_events_by_user ON quota_events (user_id, kind, at);

-- Each member's own last message, for `unread` from stored positions (no count of messages).
CREATE INDEX messages_by_sender ON messages (conversation_id, sender_id, seq);

-- Members who left a group themselves: under SB_GROUP_ADD_POLICY=open they are invited, not
-- added, when someone adds them again (leaving is a refusal to be there).
CREATE TABLE departures (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    left_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
