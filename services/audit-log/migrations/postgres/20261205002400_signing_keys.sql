-- Every key that has signed tree heads, so that ListSigningKeys still hands out
-- the public key of heads signed before the signing key was rotated: a head is
-- checked with the key it names, for as long as the log is kept. A process adds
-- its key when it opens the log, before the first head it signs (first_used_us:
-- then, or when another process first opened the log with it).
CREATE TABLE audit_signing_keys (
    key_id        TEXT   PRIMARY KEY,
    public_key    BYTEA  NOT NULL,
    first_used_us BIGINT NOT NULL
);

-- Append-only like the heads it lets one check.
CREATE TRIGGER audit_signing_keys_append_only BEFORE UPDATE OR DELETE ON audit_signing_keys
    FOR EACH ROW EXECUTE FUNCTION custodia_refuse_change();
CREATE TRIGGER audit_signing_keys_no_truncate BEFORE TRUNCATE ON audit_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION custodia_refuse_change();
