-- Recurring jobs (see docs/schedules.md). A schedule is either declared in code
-- (`#[forge::cron]`, one row per function, kept in step with the code by every node that starts
-- a scheduler) or created at run time and owned by a user.
CREATE TABLE forge.schedules (
    id             uuid PRIMARY KEY,
    -- Declared: the function's name, unique among declared schedules. Run-time: a label.
    name           text NOT NULL,
    declared       boolean NOT NULL,
    function_name  text NOT NULL,
    args           jsonb NOT NULL,
    cron           text NOT NULL,
    timezone       text NOT NULL,
    missed         text NOT NULL CHECK (missed IN ('skip', 'latest', 'backfill')),
    backfill       integer NOT NULL DEFAULT 0 CHECK (backfill >= 0),
    overlap        text NOT NULL CHECK (overlap IN ('allow', 'skip')),
    owner          text,
    paused         boolean NOT NULL DEFAULT false,
    -- The first tick not yet handled: a node handles a schedule once this has passed.
    next_tick      timestamptz NOT NULL,
    -- The job of the last tick that enqueued one, for the overlap policy.
    last_job_id    uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX schedules_declared_name ON forge.schedules (name) WHERE declared;
CREATE INDEX schedules_due ON forge.schedules (next_tick) WHERE NOT paused;
CREATE INDEX schedules_owner ON forge.schedules (owner, created_at) WHERE owner IS NOT NULL;

-- One row per handled tick: the primary key is what makes a tick run once however many nodes
-- see it due. A tick skipped by the overlap policy has no job.
CREATE TABLE forge.schedule_ticks (
    schedule_id uuid NOT NULL REFERENCES forge.schedules (id) ON DELETE CASCADE,
    tick        timestamptz NOT NULL,
    job_id      uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, tick)
);

-- `JobContext::scheduled_for` looks a job's tick up by the job.
CREATE INDEX schedule_ticks_job ON forge.schedule_ticks (job_id) WHERE job_id IS NOT NULL;
