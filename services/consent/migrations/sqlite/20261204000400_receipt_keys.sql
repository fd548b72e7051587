-- Every key that has signed receipts, so that ListReceiptKeys still hands out
-- the public key of a receipt signed before the signing key was rotated:
-- receipts are kept for years and must stay verifiable offline. A process
-- adds its key before the first receipt it signs (first_used_us: then, or
-- when another process first signed with it).
CREATE TABLE receipt_keys (
    key_id        TEXT   PRIMARY KEY,
    public_key    BLOB  NOT NULL,
    first_used_us BIGINT NOT NULL
);
