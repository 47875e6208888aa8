CREATE TABLE forge.jobs (
    id               uuid PRIMARY KEY,
    function_name    text NOT NULL,
    args             jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN (
                         'pending', 'claimed', 'running', 'completed', 'retry',
                         'failed', 'dead_letter', 'cancel_requested', 'cancelled')),
    queue            text NOT NULL DEFAULT 'default',
    priority         integer NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL DEFAULT now(),
    worker_id        uuid,
    lease_expires_at timestamptz,
    progress         double precision CHECK (progress >= 0 AND progress <= 100),
    message          text,
    output           jsonb,
    error            text,
    owner            text,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

-- What workers claim from: only runnable rows are indexed, so the index stays small however
-- many finished jobs the table keeps.
CREATE INDEX jobs_runnable ON forge.jobs (queue, priority, run_at)
    WHERE status IN ('pending', 'retry');

-- What the lease reaper scans.
CREATE INDEX jobs_leased ON forge.jobs (lease_expires_at)
    WHERE status IN ('claimed', 'running', 'cancel_requested');

CREATE UNIQUE INDEX jobs_idempotency_key ON forge.jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE INDEX jobs_owner ON forge.jobs (owner, created_at DESC) WHERE owner IS NOT NULL;

-- Wakes idle workers when jobs are inserted, including by a user's own transaction: the
-- notification is delivered on commit, once per statement, not once per row.
CREATE FUNCTION forge.notify_jobs_available() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('forge_jobs_available', '');
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_available AFTER INSERT ON forge.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION forge.notify_jobs_available();
