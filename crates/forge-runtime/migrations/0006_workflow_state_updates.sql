-- Workflow updates carry the workflow's state as clients see it, so that a gateway can pass
-- every change on exactly as its transaction left it, in commit order, without reading the
-- row back (a read made after several quick changes would fold them into one and could hide
-- a status, such as a short `compensating`).
--
-- Each update keeps the fields of 0004 and adds `state`: the workflow state of the spec in its
-- wire form (camelCase, as `WorkflowState` serializes), steps included, output left out (it can
-- be large; a listener reads it once the workflow is `completed`). When an update would pass
-- 3,500 bytes with its state (long step names or errors, many steps), `state` is left out and
-- the listener reads the workflow instead. Chunks of about 4,000 bytes of such updates stay
-- below NOTIFY's 8,000-byte limit.
CREATE OR REPLACE FUNCTION forge.notify_workflow_updates(ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
    xid bigint;
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    xid := pg_current_xact_id()::text::bigint;
    FOR payload IN
        SELECT '[' || string_agg(obj, ',' ORDER BY id) || ']'
        FROM (
            SELECT id, obj, (sum(octet_length(obj)) OVER (ORDER BY id)) / 4000 AS chunk
            FROM (
                SELECT u.id,
                       CASE WHEN octet_length(u.base::text) + octet_length(u.state::text) < 3500
                            THEN u.base || jsonb_build_object('state', u.state)
                            ELSE u.base
                       END::text AS obj
                FROM (
                    SELECT w.id,
                           jsonb_build_object(
                               'workflow_id', w.id,
                               'status', w.status,
                               'step', left(w.step, 200),
                               'waiting_for', left(w.waiting_for, 300),
                               'xid', xid) AS base,
                           jsonb_build_object(
                               'workflowId', w.id,
                               'status', w.status,
                               'step', w.step,
                               'waitingFor', w.waiting_for,
                               'steps', (
                                   SELECT COALESCE(jsonb_agg(jsonb_build_object(
                                              'name', s.name, 'status', s.status,
                                              'error', s.error)
                                          ORDER BY s.run_seq NULLS LAST, s.idx), '[]')
                                   FROM forge.workflow_steps s
                                   WHERE s.workflow_id = w.id),
                               'output', NULL,
                               'error', w.error) AS state
                    FROM forge.workflows w
                    WHERE w.id = ANY (ids)
                ) u
            ) updates
        ) chunked
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('forge_workflow_updates', payload);
    END LOOP;
END $$;
