-- The log: one row per access event, in sequence order (seq = Merkle leaf index,
-- 0-based, gap-free). `entry` is the canonical byte string hashed into the tree;
-- personal fields inside it are encrypted with the subject's key. The other
-- columns are a clear-text projection for queries; `custodia audit verify`
-- checks they match the entry.
CREATE TABLE audit_entries (
    seq         BIGINT PRIMARY KEY,
    event_id    TEXT   NOT NULL UNIQUE,
    entry       BYTEA  NOT NULL,
    leaf_hash   BYTEA  NOT NULL,
    time_us     BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    service     TEXT   NOT NULL,
    method      TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    resource    TEXT   NOT NULL,
    purpose     TEXT   NOT NULL,
    outcome     TEXT   NOT NULL,
    appended_us BIGINT NOT NULL
);
CREATE INDEX audit_entries_actor ON audit_entries (actor, seq);
CREATE INDEX audit_entries_action ON audit_entries (action, seq);
CREATE INDEX audit_entries_resource ON audit_entries (resource, seq);
CREATE INDEX audit_entries_time ON audit_entries (time_us, seq);

-- Signed tree heads, one per integration.
CREATE TABLE audit_tree_heads (
    tree_size    BIGINT PRIMARY KEY,
    root_hash    BYTEA  NOT NULL,
    timestamp_us BIGINT NOT NULL,
    key_id       TEXT   NOT NULL,
    signature    BYTEA  NOT NULL
);

-- Append-only in the database itself, not only in our code.
CREATE FUNCTION custodia_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION custodia_refuse_change();
CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION custodia_refuse_change();
CREATE TRIGGER audit_tree_heads_append_only BEFORE UPDATE OR DELETE ON audit_tree_heads
    FOR EACH ROW EXECUTE FUNCTION custodia_refuse_change();
CREATE TRIGGER audit_tree_heads_no_truncate BEFORE TRUNCATE ON audit_tree_heads
    FOR EACH STATEMENT EXECUTE FUNCTION custodia_refuse_change();

-- Search index by subject (keyed hash). Not part of the tree: erasure deletes a
-- subject's rows so their entries can no longer be linked to one another.
CREATE TABLE audit_subject_index (
    subject_hash TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    PRIMARY KEY (subject_hash, seq)
);

-- Per-subject encryption keys. Entries name their key by `key_id` (random, so it
-- says nothing about the person). ShredSubject forgets the key and the subject
-- hash: the sealed fields become unreadable and unlinkable (crypto-shredding).
CREATE TABLE audit_subject_keys (
    key_id       TEXT    PRIMARY KEY,
    subject_hash TEXT    UNIQUE,
    key          BYTEA,
    created_us   BIGINT NOT NULL,
    shredded_us  BIGINT
);

-- Next sequence number; updating this row in the append transaction serialises
-- appenders across replicas and keeps sequence numbers gap-free.
CREATE TABLE audit_log_state (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    next_seq BIGINT NOT NULL
);
INSERT INTO audit_log_state (id, next_seq) VALUES (1, 0);
