-- A sender that is not sure its stanza arrived (its link dropped before
-- the acknowledgement) sends it again; while the first copy is queued the
-- second one is the same item, so a processor sees it, and its sender
-- gets an answer, once. The key is the sender's bare JID and the stanza's
-- id (ids are unique per sender: docs/protocol.md).
ALTER TABLE queue_items ADD COLUMN dedup TEXT;
CREATE UNIQUE INDEX queue_items_dedup ON queue_items (queue, dedup) WHERE dedup IS NOT NULL;
