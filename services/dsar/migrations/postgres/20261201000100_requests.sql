-- Data-subject requests (D-1..D-9). `record` is the protobuf encoding of the
-- request (custodia.dsar.v1.Request without its action record, source tasks,
-- recipient notifications and export, which have their own tables); the
-- columns beside it are what listings filter and sort on.
CREATE TABLE dsar_requests (
    id          TEXT    PRIMARY KEY,
    type        BIGINT  NOT NULL,
    state       TEXT    NOT NULL,
    record      BYTEA   NOT NULL,
    receive_us  BIGINT  NOT NULL,
    due_us      BIGINT  NOT NULL,
    terminal    BIGINT  NOT NULL DEFAULT 0,
    version     BIGINT  NOT NULL DEFAULT 1,
    create_us   BIGINT  NOT NULL,
    update_us   BIGINT  NOT NULL
);
CREATE INDEX dsar_requests_due ON dsar_requests (due_us, id);

-- Keyed hashes (HMAC) of the request's subject identifiers, to find the
-- requests about one person without indexing raw identifiers.
CREATE TABLE dsar_request_subjects (
    request_id    TEXT NOT NULL,
    subject_hash  TEXT NOT NULL,
    PRIMARY KEY (request_id, subject_hash)
);
CREATE INDEX dsar_request_subjects_hash ON dsar_request_subjects (subject_hash);

-- The action record (D-3): one ActionEntry per step, append-only.
CREATE TABLE dsar_actions (
    request_id  TEXT    NOT NULL,
    seq         BIGINT  NOT NULL,
    body        BYTEA   NOT NULL,
    create_us   BIGINT  NOT NULL,
    PRIMARY KEY (request_id, seq)
);

-- Recipients told of a rectification, erasure or restriction (Art. 19).
CREATE TABLE dsar_notifications (
    request_id  TEXT    NOT NULL,
    seq         BIGINT  NOT NULL,
    body        BYTEA   NOT NULL,
    PRIMARY KEY (request_id, seq)
);

-- The fan-out: one SourceTask per request and data source. `state` and
-- `next_attempt_us` repeat the body's fields for the worker's query; the task
-- row is what makes a restart resume where it stopped.
CREATE TABLE dsar_tasks (
    request_id       TEXT    NOT NULL,
    source_id        TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    next_attempt_us  BIGINT  NOT NULL,
    body             BYTEA   NOT NULL,
    PRIMARY KEY (request_id, source_id)
);
CREATE INDEX dsar_tasks_due ON dsar_tasks (state, next_attempt_us);

-- Export packages of access and portability requests (ExportPackage).
CREATE TABLE dsar_exports (
    request_id  TEXT    PRIMARY KEY,
    state       TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    expire_us   BIGINT ,
    body        BYTEA   NOT NULL
);

-- Registered data sources (DataSource); `credentials_ref` names where the
-- token is configured, never the token.
CREATE TABLE dsar_sources (
    id         TEXT    PRIMARY KEY,
    body       BYTEA   NOT NULL,
    version    BIGINT  NOT NULL DEFAULT 1,
    create_us  BIGINT  NOT NULL,
    update_us  BIGINT  NOT NULL
);

-- Retention runs (R-3) with their results per source and rule.
CREATE TABLE dsar_retention_runs (
    id        TEXT    PRIMARY KEY,
    start_us  BIGINT  NOT NULL,
    state     TEXT    NOT NULL,
    body      BYTEA   NOT NULL
);
CREATE INDEX dsar_retention_runs_start ON dsar_retention_runs (start_us, id);

-- Idempotency keys of write calls: (method, request_id) -> the resource.
CREATE TABLE dsar_idempotency (
    method      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    resource    TEXT    NOT NULL,
    create_us   BIGINT  NOT NULL,
    PRIMARY KEY (method, request_id)
);
