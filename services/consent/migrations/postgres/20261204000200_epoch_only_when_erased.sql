-- The erasure epoch moves only when a DELETE removed at least one current state.
-- The statement-level trigger moved it for every DELETE, also one that found
-- nothing (EraseSubject of a person with no consent record, which dsar sends for
-- every erasure request), and every move makes each replica reload its state
-- index (all current states) and drop its check cache. SQLite's trigger is per
-- row already.
CREATE FUNCTION consent_cache_epoch_bump_if_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM erased) THEN
        UPDATE consent_cache_epoch SET erasures = erasures + 1 WHERE id = 1;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER subject_consents_erased ON subject_consents;
CREATE TRIGGER subject_consents_erased AFTER DELETE ON subject_consents
    REFERENCING OLD TABLE AS erased
    FOR EACH STATEMENT EXECUTE FUNCTION consent_cache_epoch_bump_if_erased();
DROP FUNCTION consent_cache_epoch_bump();
