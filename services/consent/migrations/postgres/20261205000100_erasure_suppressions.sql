-- What an erasure keeps so that it can honour the subject's choices (Art. 17(3),
-- Art. 21(3)): per erased subject (keyed hash only) and purpose, the standing
-- objection or withdrawal, when it was decided and on what ground. A grant for a
-- suppressed subject through a channel the subject does not operate (a CRM
-- import, staff) is refused; a fresh consent the subject gives lifts the entry.
CREATE TABLE erasure_suppressions (
    subject_hash TEXT    NOT NULL,
    purpose_id   TEXT    NOT NULL,
    state        BIGINT NOT NULL,
    decision_us  BIGINT NOT NULL,
    erase_us     BIGINT NOT NULL,
    ground       BIGINT NOT NULL,
    PRIMARY KEY (subject_hash, purpose_id)
);
