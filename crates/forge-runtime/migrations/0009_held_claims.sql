-- Held claims (see the worker module): a worker locks the jobs it claims in an open
-- transaction and writes each once, when it ended or ran long enough: from `pending` or
-- `retry` straight to `running` or to how it ended, with its attempt counted in the same write.
-- The trigger of 0007 publishes `claimed` (and `running`, as for a job whose start was not
-- written) before such a status, so every transition is still published, in order. A write
-- that starts an attempt is one that adds one to `attempts`; cancelling a pending job does not.
CREATE OR REPLACE FUNCTION forge.publish_job_updates() RETURNS trigger LANGUAGE plpgsql
SET enable_nestloop = off AS $$
DECLARE
    payload text;
    -- Computed once per statement: the transaction already has an xid (it is writing).
    xid text := pg_current_xact_id()::text;
BEGIN
    FOR payload IN
        SELECT '[' || string_agg(obj, ',') || ']'
        FROM (
            SELECT obj,
                   -- Chunks of about 5,000 bytes. One element is at most ~2,600 bytes (a
                   -- final update with a 500-character message, after `claimed` and `running`
                   -- ones that never have a message), so a chunk stays below 8,000.
                   (sum(octet_length(obj)) OVER (ROWS UNBOUNDED PRECEDING)) / 5000 AS chunk
            FROM (
                SELECT CASE WHEN n.attempts = o.attempts + 1 AND n.status <> 'claimed'
                            -- A held claim written once its job got further (see 0009).
                            THEN '{"job_id":"' || n.id::text
                                 || '","status":"claimed","attempt":' || n.attempts::text
                                 || ',"progress":null,"message":null,"xid":' || xid || '},'
                            ELSE ''
                       END
                       || CASE WHEN n.status <> 'running' AND n.started_at IS NOT NULL
                                 AND n.started_at IS DISTINCT FROM o.started_at
                                 AND (o.status = 'claimed' OR n.attempts = o.attempts + 1)
                            -- A job that ended before its start was written (see 0005).
                            THEN '{"job_id":"' || n.id::text
                                 || '","status":"running","attempt":' || n.attempts::text
                                 || ',"progress":null,"message":null,"xid":' || xid || '},'
                            ELSE ''
                       END
                       || '{"job_id":"' || n.id::text || '","status":"' || n.status
                       || '","attempt":' || n.attempts::text
                       || ',"progress":' || COALESCE(n.progress::text, 'null')
                       || ',"message":' || COALESCE(to_json(n.message)::text, 'null')
                       || ',"xid":' || xid || '}' AS obj
                FROM new_rows n JOIN old_rows o ON o.id = n.id
                WHERE n.status IS DISTINCT FROM o.status
                   -- A held claim of a `retry` job that failed again: `retry` both before
                   -- and after, but a new attempt.
                   OR n.attempts IS DISTINCT FROM o.attempts
                   OR n.progress IS DISTINCT FROM o.progress
                   OR n.message IS DISTINCT FROM o.message
                OFFSET 0
            ) changed
        ) chunked
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('forge_job_updates', payload);
    END LOOP;
    RETURN NULL;
END $$;
