-- Items stored from now on hold the stanza exactly as the component is
-- sent it (jabber:component:accept), with whether the processor answers
-- it (a receipt request, an iq get/set) in its own column: handing an
-- item out then needs no XML parsing. Rows from before hold it in
-- jabber:client (form 0) and are parsed and rewritten when handed out.
ALTER TABLE queue_items ADD COLUMN form INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue_items ADD COLUMN answerable INTEGER NOT NULL DEFAULT 0;
