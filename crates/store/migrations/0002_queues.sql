-- Durable queues of stanzas for external components (processors): an item
-- stays until a processor acknowledges it.
CREATE TABLE queue_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    -- Full JID of the sender, and the stanza's id: how a processor's
    -- receipt or iq result is matched to the item it acknowledges.
    sender TEXT NOT NULL,
    stanza_id TEXT,
    stanza TEXT NOT NULL,
    -- Unix time in milliseconds.
    enqueued_at INTEGER NOT NULL
);
CREATE INDEX queue_items_by_queue ON queue_items (queue, id);
