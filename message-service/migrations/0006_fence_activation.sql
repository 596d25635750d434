-- Fences take effect once the epoch they opened is used (docs/architecture.md, "Fencing the
-- log"). A fence whose epoch no manager ever numbered under (the request that took it was
-- abandoned: its caller timed out while the database or the broker was slow) must not refuse
-- the records of the epoch that was adopted instead.
--
-- `messages.epoch`: the epoch a stored message was numbered under (0 before epochs), so that a
-- fence becoming active can move the older epochs' late records above its floor to
-- `dead_letters`. Adding a column with a constant default rewrites nothing (PostgreSQL 11+).
ALTER TABLE messages ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE log_fences ADD COLUMN active BOOLEAN NOT NULL DEFAULT false;
