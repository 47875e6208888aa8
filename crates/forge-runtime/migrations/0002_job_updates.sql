-- The publishing path for job state. Every statement that changes the status, progress or
-- message of jobs sends the changed rows on `forge_job_updates`, batched: one statement
-- touching 1,000 jobs sends a handful of notifications, each a JSON array of updates, never
-- over PostgreSQL's 8,000-byte payload limit. Because it is a trigger, no code path that
-- writes job state can forget to publish, and the notifications go out exactly when the
-- change commits.
CREATE FUNCTION forge.publish_job_updates() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    FOR payload IN
        SELECT '[' || string_agg(obj, ',') || ']'
        FROM (
            SELECT obj,
                   -- Chunks of about 5,000 bytes; one update is at most ~2,200 bytes
                   -- (messages are capped at 500 characters), so a chunk stays below 8,000.
                   (sum(octet_length(obj)) OVER (ORDER BY id)) / 5000 AS chunk
            FROM (
                SELECT n.id,
                       json_build_object(
                           'job_id', n.id,
                           'status', n.status,
                           'attempt', n.attempts,
                           'progress', n.progress,
                           'message', n.message)::text AS obj
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

CREATE TRIGGER jobs_publish AFTER UPDATE ON forge.jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION forge.publish_job_updates();

ALTER TABLE forge.jobs ADD CONSTRAINT jobs_message_length CHECK (char_length(message) <= 500);
