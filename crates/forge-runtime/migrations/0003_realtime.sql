-- What realtime delivery needs from the database.
--
-- 1. Every job update names the transaction that made it (`xid`, a 64-bit xid8 that never
--    wraps). A gateway that reads a job together with the snapshot of that read
--    (`pg_current_snapshot()`) can then tell exactly which notifications it receives later are
--    already reflected in what it read (the snapshot sees their transaction) and which are
--    newer. That closes the window between "subscribe" and "read the current state" without
--    guessing from status order.
CREATE OR REPLACE FUNCTION forge.publish_job_updates() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
    -- Computed once per statement: the transaction already has an xid (it is writing).
    xid bigint := pg_current_xact_id()::text::bigint;
BEGIN
    FOR payload IN
        SELECT '[' || string_agg(obj, ',') || ']'
        FROM (
            SELECT obj,
                   -- Chunks of about 5,000 bytes; one update is at most ~2,250 bytes
                   -- (messages are capped at 500 characters), so a chunk stays below 8,000.
                   (sum(octet_length(obj)) OVER (ORDER BY id)) / 5000 AS chunk
            FROM (
                SELECT n.id,
                       json_build_object(
                           'job_id', n.id,
                           'status', n.status,
                           'attempt', n.attempts,
                           'progress', n.progress,
                           'message', n.message,
                           'xid', xid)::text AS obj
                FROM new_rows n JOIN old_rows o ON o.id = n.id
                WHERE n.status IS DISTINCT FROM o.status
                   OR n.progress IS DISTINCT FROM o.progress
                   OR n.message IS DISTINCT FROM o.message
            ) changed
        ) chunked
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('forge_job_updates', payload);
    END LOOP;
    RETURN NULL;
END $$;

-- 2. Query subscriptions re-run when a table they read changes. Such a table gets a
--    statement-level trigger (installed on demand by `forge.watch_table`) that announces the
--    change on `forge_table_changes` with the table's oid; for a partition, the oid of the root
--    of its partition tree, since statements through the parent fire only the parent's
--    statement triggers. PostgreSQL folds identical notifications of one transaction into
--    one, so a transaction touching a table a thousand times announces it once.
CREATE FUNCTION forge.notify_table_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('forge_table_changes',
                      COALESCE(pg_partition_root(TG_RELID)::oid, TG_RELID)::text);
    RETURN NULL;
END $$;

-- Installs the change trigger on `rel` and, for a partition, on the root of its tree. Safe to
-- call concurrently and repeatedly. Returns the oid that the table's changes are announced
-- under, and whether a trigger had to be created (a caller that read the table before the
-- trigger existed must read it again: a change in between was not announced).
CREATE FUNCTION forge.watch_table(rel oid, OUT announced_as oid, OUT created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    target oid;
BEGIN
    announced_as := COALESCE(pg_partition_root(rel)::oid, rel);
    created := false;
    FOR target IN SELECT DISTINCT t FROM unnest(ARRAY[rel, announced_as]) AS t LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger
                       WHERE tgrelid = target AND tgname = 'forge_table_changes') THEN
            EXECUTE format('CREATE OR REPLACE TRIGGER forge_table_changes
                                AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s
                                FOR EACH STATEMENT EXECUTE FUNCTION forge.notify_table_changes()',
                           target::regclass);
            created := true;
        END IF;
    END LOOP;
END $$;
