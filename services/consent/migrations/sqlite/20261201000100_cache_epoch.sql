-- Moved by every erasure, so each replica drops its cached check states (an
-- erasure deletes the subject's events, leaving nothing in consent_events for the
-- other replicas to see). A trigger moves it, so any code that deletes a current
-- state (an older replica during a rolling upgrade included) moves it too.
CREATE TABLE consent_cache_epoch (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    erasures  BIGINT  NOT NULL
);
INSERT INTO consent_cache_epoch (id, erasures) VALUES (1, 0);

CREATE TRIGGER subject_consents_erased AFTER DELETE ON subject_consents
BEGIN
    UPDATE consent_cache_epoch SET erasures = erasures + 1 WHERE id = 1;
END;
