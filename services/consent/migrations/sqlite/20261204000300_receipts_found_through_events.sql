-- Erasure finds a subject's receipts through the subject's events (each event
-- names its call's receipt; see `ConsentStore::erase` in services/consent/src/records.rs),
-- so this index only cost writes: one more random page per RecordConsent, a sixth
-- of the log frames of a group commit. (PostgreSQL keeps it for one more release,
-- for the previous release's pods, which erase by subject_hash.)
DROP INDEX receipts_subject;
