-- Notice versions (C-6). `body` is the Notice as the API returns it.
CREATE TABLE notices (
    notice_id    TEXT    NOT NULL,
    version      INTEGER    NOT NULL,
    body         BLOB   NOT NULL,
    material     INTEGER    NOT NULL,
    effective_us INTEGER    NOT NULL,
    PRIMARY KEY (notice_id, version)
);
-- Which purposes each notice version covers.
CREATE TABLE notice_purposes (
    notice_id  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    purpose_id TEXT NOT NULL,
    PRIMARY KEY (purpose_id, notice_id, version)
);

-- Every consent decision, withdrawal and objection, with its evidence (C-2, C-4).
-- Never updated; `seq` orders the trail and is the change-stream cursor. It is
-- assigned from `consent_change_seq` under that row's lock, so it is gap-free and
-- in commit order: a watcher that has seen N has seen everything before N.
-- Subjects are stored as keyed hashes only.
CREATE TABLE consent_events (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT    NOT NULL UNIQUE,
    subject_hash TEXT    NOT NULL,
    purpose_id   TEXT    NOT NULL,
    state        INTEGER    NOT NULL,
    body         BLOB   NOT NULL,
    decision_us  INTEGER    NOT NULL,
    record_us    INTEGER    NOT NULL
);
CREATE INDEX consent_events_subject ON consent_events (subject_hash, seq);

CREATE TABLE consent_change_seq (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    next INTEGER NOT NULL
);
INSERT INTO consent_change_seq (id, next) VALUES (1, 1);

-- The current state per subject and purpose: what checks read.
CREATE TABLE subject_consents (
    subject_hash TEXT    NOT NULL,
    purpose_id   TEXT    NOT NULL,
    state        INTEGER    NOT NULL,
    decision_us  INTEGER    NOT NULL,
    expire_us    INTEGER,
    event_id     TEXT    NOT NULL,
    body         BLOB   NOT NULL,
    PRIMARY KEY (subject_hash, purpose_id)
);
CREATE INDEX subject_consents_expiry ON subject_consents (purpose_id, expire_us);

CREATE TRIGGER consent_events_no_update BEFORE UPDATE ON consent_events
BEGIN SELECT RAISE(ABORT, 'consent_events is append-only'); END;
