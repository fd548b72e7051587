-- A row may carry several events of one call that differ only in id and subject
-- (a BatchCheckConsent of 10,000 subjects is 10 rows, not 10,000); event_count
-- says how many, so the forwarder can size its batches without reading payloads.
ALTER TABLE access_event_outbox ADD COLUMN event_count INTEGER NOT NULL DEFAULT 1;
