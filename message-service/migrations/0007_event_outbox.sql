-- Membership events for the events topic (conversation.created, member.added, member.removed
-- for the webhook dispatcher), written in the transaction of the change they describe and
-- published by the message service's outbox (src/outbox.rs) once committed, then deleted. A
-- crash between the commit and the publish delays an event, never loses it; one published
-- twice carries the same event_id.
CREATE TABLE event_outbox (
    id         BIGSERIAL PRIMARY KEY,
    -- The Kafka key (the conversation): one conversation's events stay in order.
    key        TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
