-- The log: one row per access event, in sequence order (seq = Merkle leaf index,
-- 0-based, gap-free). `entry` is the canonical byte string hashed into the tree;
-- personal fields inside it are encrypted with the subject's key. The other
-- columns are a clear-text projection for queries; `custodia audit verify`
-- checks they match the entry.
CREATE TABLE audit_entries (
    seq         INTEGER PRIMARY KEY,
    event_id    TEXT    NOT NULL UNIQUE,
    entry       BLOB    NOT NULL,
    leaf_hash   BLOB    NOT NULL,
    time_us     INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    resource    TEXT    NOT NULL,
    purpose     TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    appended_us INTEGER NOT NULL
);
CREATE INDEX audit_entries_actor ON audit_entries (actor, seq);
CREATE INDEX audit_entries_action ON audit_entries (action, seq);
CREATE INDEX audit_entries_resource ON audit_entries (resource, seq);
CREATE INDEX audit_entries_time ON audit_entries (time_us, seq);

-- Signed tree heads, one per integration.
CREATE TABLE audit_tree_heads (
    tree_size    INTEGER PRIMARY KEY,
    root_hash    BLOB    NOT NULL,
    timestamp_us INTEGER NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    BLOB    NOT NULL
);

-- Append-only in the database itself, not only in our code.
CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries
BEGIN SELECT RAISE(ABORT, 'audit_entries is append-only'); END;
CREATE TRIGGER audit_entries_no_delete BEFORE DELETE ON audit_entries
BEGIN SELECT RAISE(ABORT, 'audit_entries is append-only'); END;
CREATE TRIGGER audit_tree_heads_no_update BEFORE UPDATE ON audit_tree_heads
BEGIN SELECT RAISE(ABORT, 'audit_tree_heads is append-only'); END;
CREATE TRIGGER audit_tree_heads_no_delete BEFORE DELETE ON audit_tree_heads
BEGIN SELECT RAISE(ABORT, 'audit_tree_heads is append-only'); END;

-- Search index by subject (keyed hash). Not part of the tree: erasure deletes a
-- subject's rows so their entries can no longer be linked to one another.
CREATE TABLE audit_subject_index (
    subject_hash TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (subject_hash, seq)
);

-- Per-subject encryption keys. Entries name their key by `key_id` (random, so it
-- says nothing about the person). ShredSubject forgets the key and the subject
-- hash: the sealed fields become unreadable and unlinkable (crypto-shredding).
CREATE TABLE audit_subject_keys (
    key_id       TEXT    PRIMARY KEY,
    subject_hash TEXT    UNIQUE,
    key          BLOB,
    created_us   INTEGER NOT NULL,
    shredded_us  INTEGER
);

-- Next sequence number; updating this row in the append transaction serialises
-- appenders across replicas and keeps sequence numbers gap-free.
CREATE TABLE audit_log_state (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq INTEGER NOT NULL
);
INSERT INTO audit_log_state (id, next_seq) VALUES (1, 0);
