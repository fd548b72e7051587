-- The current state per subject and purpose, without the copy of its event's body
-- that every write stored a second time: the evidence is kept once, in
-- consent_events (found by event_id), and a check's read touches small rows.
ALTER TABLE subject_consents DROP COLUMN body;
