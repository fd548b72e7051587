-- Notice versions (C-6). `body` is the Notice as the API returns it.
CREATE TABLE notices (
    notice_id    TEXT    NOT NULL,
    version      BIGINT    NOT NULL,
    body         BYTEA   NOT NULL,
    material     BIGINT    NOT NULL,
    effective_us BIGINT    NOT NULL,
    PRIMARY KEY (notice_id, version)
);
-- Which purposes each notice version covers.
CREATE TABLE notice_purposes (
    notice_id  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    purpose_id TEXT NOT NULL,
    PRIMARY KEY (purpose_id, notice_id, version)
);

-- Every consent decision, withdrawal and objection, with its evidence (C-2, C-4).
-- Never updated; `seq` orders the trail and is the change-stream cursor. It is
-- assigned from `consent_change_seq` under that row's lock, so it is gap-free and
-- in commit order: a watcher that has seen N has seen everything before N.
-- Subjects are stored as keyed hashes only.
CREATE TABLE consent_events (
    seq          BIGINT  PRIMARY KEY,
    event_id     TEXT    NOT NULL UNIQUE,
    subject_hash TEXT    NOT NULL,
    purpose_id   TEXT    NOT NULL,
    state        BIGINT    NOT NULL,
    body         BYTEA   NOT NULL,
    decision_us  BIGINT    NOT NULL,
    record_us    BIGINT    NOT NULL
);
CREATE INDEX consent_events_subject ON consent_events (subject_hash, seq);

CREATE TABLE consent_change_seq (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    next BIGINT NOT NULL
);
INSERT INTO consent_change_seq (id, next) VALUES (1, 1);

-- The current state per subject and purpose: what checks read.
CREATE TABLE subject_consents (
    subject_hash TEXT    NOT NULL,
    purpose_id   TEXT    NOT NULL,
    state        BIGINT    NOT NULL,
    decision_us  BIGINT    NOT NULL,
    expire_us    BIGINT,
    event_id     TEXT    NOT NULL,
    body         BYTEA   NOT NULL,
    PRIMARY KEY (subject_hash, purpose_id)
);
CREATE INDEX subject_consents_expiry ON subject_consents (purpose_id, expire_us);

CREATE FUNCTION consent_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent_events is append-only';
END
$$;
CREATE TRIGGER consent_events_no_update BEFORE UPDATE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_refuse_update();
