-- Issue 28 part 1: `unread` (GET /api/v1/conversations) counts messages, not the edits,
-- deletes and reactions numbered among them. It is `last_seq` less the caller's position,
-- less the events past that position: this index makes that count proportional to the
-- unread events alone (rare), not to the unread messages.
CREATE INDEX messages_events ON messages (conversation_id, seq) WHERE kind <> 'message';
