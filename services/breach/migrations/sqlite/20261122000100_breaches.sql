-- The breach register (B-1..B-6). `record` is the protobuf encoding of the
-- breach's input fields (custodia.breach.v1.Breach with output fields cleared);
-- the columns beside it are what listings filter and sort on.
CREATE TABLE breaches (
    id               TEXT    PRIMARY KEY,
    state            TEXT    NOT NULL,
    record           BLOB    NOT NULL,
    reporter         TEXT    NOT NULL,
    awareness_us     INTEGER NOT NULL,
    deadline_us      INTEGER NOT NULL,
    risk_level       INTEGER NOT NULL DEFAULT 0,
    first_notice_us  INTEGER,
    lessons_learned  TEXT    NOT NULL DEFAULT '',
    close_us         INTEGER,
    retain_until_us  INTEGER,
    version          INTEGER NOT NULL DEFAULT 1,
    create_us        INTEGER NOT NULL,
    update_us        INTEGER NOT NULL
);
CREATE INDEX breaches_deadline ON breaches (deadline_us, id);

-- Kept parts of a breach: each row is one protobuf message (`body`) in the
-- order recorded. Kinds: `assessment` (RiskAssessment, computed and override
-- both kept), `notification` (AuthorityNotification), `communication`
-- (SubjectCommunication), `waiver` (CommunicationWaiver), `timeline`
-- (TimelineEntry). All are append-only.
CREATE TABLE breach_items (
    breach_id  TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    body       BLOB    NOT NULL,
    create_us  INTEGER NOT NULL,
    PRIMARY KEY (breach_id, kind, seq)
);

-- The response team, replaced as a whole by AssignTeam (the change is in the
-- timeline).
CREATE TABLE breach_team (
    breach_id  TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    body       BLOB    NOT NULL,
    PRIMARY KEY (breach_id, position)
);

-- Idempotency keys of mutations: a retry with the same request_id gets the
-- first call's resource back.
CREATE TABLE breach_idempotency (
    method     TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    create_us  INTEGER NOT NULL,
    PRIMARY KEY (method, request_id)
);

-- Append-only in the database itself: kept items are never changed, and only
-- removed together with their breach (DeleteBreach deletes the breach row
-- first, after its retention period).
CREATE TRIGGER breach_items_no_update BEFORE UPDATE ON breach_items
BEGIN SELECT RAISE(ABORT, 'breach_items is append-only'); END;
CREATE TRIGGER breach_items_no_delete BEFORE DELETE ON breach_items
WHEN EXISTS (SELECT 1 FROM breaches WHERE id = OLD.breach_id)
BEGIN SELECT RAISE(ABORT, 'breach_items is append-only'); END;
-- Only a closed breach can be deleted (the retention check is the service's).
CREATE TRIGGER breaches_delete_closed_only BEFORE DELETE ON breaches
WHEN OLD.state <> 'CLOSED'
BEGIN SELECT RAISE(ABORT, 'only a closed breach can be deleted'); END;
