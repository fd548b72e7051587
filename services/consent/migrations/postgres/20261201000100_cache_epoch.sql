-- Moved by every erasure, so each replica drops its cached check states (an
-- erasure deletes the subject's events, leaving nothing in consent_events for the
-- other replicas to see).
CREATE TABLE consent_cache_epoch (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    erasures  BIGINT  NOT NULL
);
INSERT INTO consent_cache_epoch (id, erasures) VALUES (1, 0);
