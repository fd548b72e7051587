-- Signed consent receipts, as returned to the caller (they name the subject as
-- given, so erasure deletes them with the subject's other records).
CREATE TABLE receipts (
    id           TEXT  PRIMARY KEY,
    subject_hash TEXT  NOT NULL,
    body         BLOB NOT NULL
);
CREATE INDEX receipts_subject ON receipts (subject_hash);
