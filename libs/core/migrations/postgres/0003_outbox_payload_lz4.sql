-- Rows moved from the read-event journal merge up to 100 events, so their
-- payloads (~40 KB of JSON) go to TOAST compressed. With the default pglz,
-- compressing them was most of what PostgreSQL did under a steady stream of
-- checks (perf, 49,000 CheckConsent/s: pglz_compress 9 % of the machine's CPU,
-- 62 % of PostgreSQL's); lz4 compresses them at a small fraction of that (0.7 %).
-- Only where the server was built with lz4 (PostgreSQL 14 and later, with
-- --with-lz4, as the Debian, Ubuntu and official container builds are);
-- elsewhere pglz stays. EXECUTE, so that servers whose grammar lacks
-- SET COMPRESSION never parse it. Rows already stored keep their compression.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_settings
        WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)
    ) THEN
        EXECUTE 'ALTER TABLE access_event_outbox ALTER COLUMN payload SET COMPRESSION lz4';
    END IF;
END
$$;
