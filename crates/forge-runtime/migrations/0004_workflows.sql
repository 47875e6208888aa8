-- Durable workflows. A workflow is a row of `forge.workflows`; its history is the rows of
-- `forge.workflow_steps` that have a `run_seq`. Workflows run on the job workers: the job named
-- `workflow:<name>` whose id is in `job_id` runs (or, while `resume_at` is set, will resume)
-- the workflow, and every write of the engine is fenced by (`job_id`, `attempt`).
CREATE TABLE forge.workflows (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    args            jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'created' CHECK (status IN (
                        'created', 'running', 'waiting', 'completed', 'compensating',
                        'compensated', 'failed')),
    step            text,
    waiting_for     text,
    output          jsonb,
    error           text,
    owner           text,
    queue           text NOT NULL DEFAULT 'default',
    idempotency_key text,
    job_id          uuid NOT NULL,
    attempt         integer NOT NULL DEFAULT 0,
    -- Set while no worker runs the workflow: when its job is due. Waking the workflow early
    -- (an awaited event arrived, a cancel) replaces that job with one due now.
    resume_at       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE UNIQUE INDEX workflows_idempotency_key ON forge.workflows (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE INDEX workflows_owner ON forge.workflows (owner, created_at DESC) WHERE owner IS NOT NULL;

CREATE TABLE forge.workflow_steps (
    workflow_id           uuid NOT NULL REFERENCES forge.workflows (id) ON DELETE CASCADE,
    -- Row number: declared steps first, in declared order, then steps added as they start.
    idx                   integer NOT NULL,
    -- Position in the workflow's history; NULL until the step is reached.
    run_seq               integer,
    name                  text NOT NULL,
    kind                  text NOT NULL DEFAULT 'step' CHECK (kind IN ('step', 'sleep', 'event')),
    status                text NOT NULL DEFAULT 'pending' CHECK (status IN (
                              'pending', 'running', 'completed', 'failed', 'compensated',
                              'skipped')),
    output                jsonb,
    error                 text,
    attempts              integer NOT NULL DEFAULT 0,
    compensation_attempts integer NOT NULL DEFAULT 0,
    has_compensation      boolean NOT NULL DEFAULT false,
    -- A sleep's end, an event wait's deadline, or when a failed attempt is tried again.
    wake_at               timestamptz,
    started_at            timestamptz,
    finished_at           timestamptz,
    compensated_at        timestamptz,
    PRIMARY KEY (workflow_id, idx),
    UNIQUE (workflow_id, run_seq)
);

-- Events sent to a workflow. One that arrives before the workflow waits for it stays here
-- until a wait takes it (`consumed_by` is that wait's `run_seq`).
CREATE TABLE forge.workflow_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id uuid NOT NULL REFERENCES forge.workflows (id) ON DELETE CASCADE,
    name        text NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    consumed_by integer
);

CREATE INDEX workflow_events_by_name ON forge.workflow_events (workflow_id, name, id);

-- The publishing path for workflow state, as for jobs: statement-level triggers send every
-- workflow whose status, current step, wait or any step's status (or error) a statement
-- changed on `forge_workflow_updates`, as JSON arrays of updates below the 8,000-byte limit.
-- An update names the workflow, its status, current step and wait, and the transaction that
-- made it (`xid`, as on job updates); a listener reads the steps with the workflow state.
-- Both tables' triggers describe the workflow row as it is once the statement is done, so a
-- statement changing both sends identical payloads, which PostgreSQL folds into one.
CREATE FUNCTION forge.notify_workflow_updates(ids uuid[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    payload text;
    xid bigint;
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    xid := pg_current_xact_id()::text::bigint;
    FOR payload IN
        SELECT '[' || string_agg(obj, ',') || ']'
        FROM (
            SELECT obj,
                   -- One update is at most ~1,100 bytes (names are cut below), so chunks
                   -- of about 5,000 bytes stay below 8,000.
                   (sum(octet_length(obj)) OVER (ORDER BY id)) / 5000 AS chunk
            FROM (
                SELECT w.id,
                       json_build_object(
                           'workflow_id', w.id,
                           'status', w.status,
                           'step', left(w.step, 200),
                           'waiting_for', left(w.waiting_for, 300),
                           'xid', xid)::text AS obj
                FROM forge.workflows w
                WHERE w.id = ANY (ids)
            ) updates
        ) chunked
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('forge_workflow_updates', payload);
    END LOOP;
END $$;

CREATE FUNCTION forge.publish_workflow_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM forge.notify_workflow_updates(ARRAY(SELECT id FROM new_rows));
    ELSE
        PERFORM forge.notify_workflow_updates(ARRAY(
            SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE n.status IS DISTINCT FROM o.status
               OR n.step IS DISTINCT FROM o.step
               OR n.waiting_for IS DISTINCT FROM o.waiting_for));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER workflows_publish_insert AFTER INSERT ON forge.workflows
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION forge.publish_workflow_changes();

CREATE TRIGGER workflows_publish_update AFTER UPDATE ON forge.workflows
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION forge.publish_workflow_changes();

CREATE FUNCTION forge.publish_workflow_step_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM forge.notify_workflow_updates(ARRAY(SELECT DISTINCT workflow_id FROM new_rows));
    ELSE
        PERFORM forge.notify_workflow_updates(ARRAY(
            SELECT DISTINCT n.workflow_id
            FROM new_rows n JOIN old_rows o ON o.workflow_id = n.workflow_id AND o.idx = n.idx
            WHERE n.status IS DISTINCT FROM o.status
               OR n.error IS DISTINCT FROM o.error));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER workflow_steps_publish_insert AFTER INSERT ON forge.workflow_steps
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION forge.publish_workflow_step_changes();

CREATE TRIGGER workflow_steps_publish_update AFTER UPDATE ON forge.workflow_steps
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION forge.publish_workflow_step_changes();
