-- Retention of the processed-message guard (see store::purge_processed): deleting by age
-- needs an index; processed_at grows with time, so inserts append at the index's right edge.
CREATE INDEX processed_messages_by_age ON processed_messages (processed_at);
