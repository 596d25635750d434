-- Group roles: the owner (the creator) and admins manage members; anyone may leave.
-- Direct conversations have only members.
ALTER TABLE members
    ADD COLUMN role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member'));

UPDATE members m
   SET role = 'owner'
  FROM conversations c
 WHERE c.id = m.conversation_id
   AND c.kind = 'group'
   AND m.user_id = c.created_by;
