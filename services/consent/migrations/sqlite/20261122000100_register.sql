-- The register of processing (Art. 30): one row per purpose. `body` is the
-- purpose as the API returns it (protobuf bytes); the other columns are what
-- listings filter on.
CREATE TABLE purposes (
    id             TEXT    PRIMARY KEY,
    body           BLOB   NOT NULL,
    lawful_basis   INTEGER    NOT NULL,
    category       INTEGER    NOT NULL,
    state          INTEGER    NOT NULL,
    next_review_us INTEGER    NOT NULL,
    create_us      INTEGER    NOT NULL,
    update_us      INTEGER    NOT NULL,
    etag           TEXT    NOT NULL
);

-- Idempotency keys of mutations: a retry with the same request_id gets the
-- first result (the resource it created or changed) instead of a second change.
CREATE TABLE idempotency_keys (
    method     TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    create_us  INTEGER    NOT NULL,
    PRIMARY KEY (method, request_id)
);
