-- Attempt history. The row itself describes a job's latest attempt (`attempts`, `worker_id`,
-- `started_at`, `finished_at`, `status`, `error`); `attempt_log` keeps the attempts before it,
-- oldest first, as JSON objects. An attempt is logged only when another may follow it (it
-- ended `retry`, its lease ran out with attempts left, an operator retried the job), so a job
-- that runs once, the common case, never writes the log.
ALTER TABLE forge.jobs ADD COLUMN attempt_log jsonb;

-- `log` with `entry` appended, keeping the newest 50 entries. SQL and immutable, so the
-- planner inlines it into the statements that call it.
CREATE FUNCTION forge.log_attempt(log jsonb, entry jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_array_length(COALESCE(log, '[]')) < 50
                THEN COALESCE(log, '[]') || jsonb_build_array(entry)
                ELSE (SELECT jsonb_agg(e ORDER BY n)
                      FROM jsonb_array_elements(log) WITH ORDINALITY AS t(e, n)
                      WHERE n > jsonb_array_length(log) - 49)
                     || jsonb_build_array(entry)
           END
$$;
