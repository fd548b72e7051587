-- The current state per subject and purpose, without the copy of its event's body
-- that every write stored a second time: the evidence is kept once, in
-- consent_events (found by event_id). Clustered on its key (WITHOUT ROWID), so a
-- check's read is one B-tree lookup among small rows instead of an index lookup
-- and then a row holding the whole evidence (a cold 10,000-subject
-- BatchCheckConsent reads 10,000 of them). (PostgreSQL keeps the column for one
-- more release, for the previous release's pods during a rolling upgrade: see
-- PG_WRITE in services/consent/src/records.rs.)
CREATE TABLE subject_consents_v2 (
    subject_hash TEXT    NOT NULL,
    purpose_id   TEXT    NOT NULL,
    state        INTEGER NOT NULL,
    decision_us  INTEGER NOT NULL,
    expire_us    INTEGER,
    event_id     TEXT    NOT NULL,
    PRIMARY KEY (subject_hash, purpose_id)
) WITHOUT ROWID;
INSERT INTO subject_consents_v2 (subject_hash, purpose_id, state, decision_us, expire_us, event_id)
    SELECT subject_hash, purpose_id, state, decision_us, expire_us, event_id FROM subject_consents;
-- Drops its index and its trigger too (and fires no trigger).
DROP TABLE subject_consents;
ALTER TABLE subject_consents_v2 RENAME TO subject_consents;
CREATE INDEX subject_consents_expiry ON subject_consents (purpose_id, expire_us);
CREATE TRIGGER subject_consents_erased AFTER DELETE ON subject_consents
BEGIN
    UPDATE consent_cache_epoch SET erasures = erasures + 1 WHERE id = 1;
END;
