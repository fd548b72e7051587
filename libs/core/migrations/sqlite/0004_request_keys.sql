-- One idempotency table for every mutating RPC of every service (issue #24):
-- a key belongs to (principal, method, request_id), and remembers a fingerprint
-- (SHA-256 of the request message) so that a reuse with another body is refused
-- instead of answered with the first call's data. `resource` names what the first
-- call wrote (a replay answers with it); `response` keeps the first answer itself
-- for methods whose answer is not a stored resource (ShredSubject, EraseSubject).
-- The per-service tables before it (idempotency_keys, breach_idempotency,
-- dsar_idempotency) were keyed without the caller; their keys are not carried
-- over (a retry across this upgrade is a new call).
CREATE TABLE request_keys (
    principal   TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    resource    TEXT    NOT NULL,
    response    BLOB,
    create_us   INTEGER NOT NULL,
    PRIMARY KEY (principal, method, request_id)
);
