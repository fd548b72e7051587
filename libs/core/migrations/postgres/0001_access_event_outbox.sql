-- Access events waiting to be forwarded to audit-log. Written in the same
-- transaction as the data change they describe; deleted once audit-log has
-- acknowledged them (audit-log keeps the permanent, append-only record).
CREATE TABLE IF NOT EXISTS access_event_outbox (
    id          BIGSERIAL PRIMARY KEY,
    event_id    TEXT   NOT NULL UNIQUE,
    payload     TEXT   NOT NULL,
    enqueued_us BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0
);
