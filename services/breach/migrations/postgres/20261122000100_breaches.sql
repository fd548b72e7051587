-- The breach register (B-1..B-6). `record` is the protobuf encoding of the
-- breach's input fields (custodia.breach.v1.Breach with output fields cleared);
-- the columns beside it are what listings filter and sort on.
CREATE TABLE breaches (
    id               TEXT    PRIMARY KEY,
    state            TEXT    NOT NULL,
    record           BYTEA    NOT NULL,
    reporter         TEXT    NOT NULL,
    awareness_us     BIGINT NOT NULL,
    deadline_us      BIGINT NOT NULL,
    risk_level       BIGINT NOT NULL DEFAULT 0,
    first_notice_us  BIGINT,
    lessons_learned  TEXT    NOT NULL DEFAULT '',
    close_us         BIGINT,
    retain_until_us  BIGINT,
    version          BIGINT NOT NULL DEFAULT 1,
    create_us        BIGINT NOT NULL,
    update_us        BIGINT NOT NULL
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
    seq        BIGINT NOT NULL,
    body       BYTEA    NOT NULL,
    create_us  BIGINT NOT NULL,
    PRIMARY KEY (breach_id, kind, seq)
);

-- The response team, replaced as a whole by AssignTeam (the change is in the
-- timeline).
CREATE TABLE breach_team (
    breach_id  TEXT    NOT NULL,
    position   BIGINT NOT NULL,
    body       BYTEA    NOT NULL,
    PRIMARY KEY (breach_id, position)
);

-- Idempotency keys of mutations: a retry with the same request_id gets the
-- first call's resource back.
CREATE TABLE breach_idempotency (
    method     TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    create_us  BIGINT NOT NULL,
    PRIMARY KEY (method, request_id)
);

-- Append-only in the database itself: kept items are never changed, and only
-- removed together with their breach (DeleteBreach deletes the breach row
-- first, after its retention period).
CREATE FUNCTION breach_items_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM breaches WHERE id = OLD.breach_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'breach_items is append-only';
END
$$;
CREATE TRIGGER breach_items_append_only BEFORE UPDATE OR DELETE ON breach_items
    FOR EACH ROW EXECUTE FUNCTION breach_items_refuse_change();
CREATE TRIGGER breach_items_no_truncate BEFORE TRUNCATE ON breach_items
    FOR EACH STATEMENT EXECUTE FUNCTION breach_items_refuse_change();

-- Only a closed breach can be deleted (the retention check is the service's).
CREATE FUNCTION breaches_refuse_open_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'CLOSED' THEN
        RAISE EXCEPTION 'only a closed breach can be deleted';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER breaches_delete_closed_only BEFORE DELETE ON breaches
    FOR EACH ROW EXECUTE FUNCTION breaches_refuse_open_delete();
