-- Workflow updates carry the workflow's state as clients see it, so that a gateway can pass
-- every change on exactly as its transaction left it, in commit order, without reading the
-- row back (a read made after several quick changes would fold them into one and could hide
-- a status, such as a short `compensating`).
--
-- Each update keeps the fields of 0004 and adds `state`: the workflow state of the spec in its
-- wire form (camelCase, as `WorkflowState` serializes), steps included, output left out (it can
-- be large; a listener reads it once the workflow is `completed`). A state of 2,500 bytes or
-- more (many steps, long names or errors) is sent as `null`, and the listener reads the
-- workflow instead. An update is then below 4,700 bytes (names are cut as in 0004), so chunks
-- of about 3,000 bytes of updates stay below NOTIFY's 8,000-byte limit. `json`, not `jsonb`:
-- the text is built once and never parsed (a `jsonb` form of this function added about twice
-- as much to each write).
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
            SELECT id, obj, (sum(octet_length(obj)) OVER (ORDER BY id)) / 3000 AS chunk
            FROM (
                SELECT w.id,
                       json_build_object(
                           'workflow_id', w.id,
                           'status', w.status,
                           'step', left(w.step, 200),
                           'waiting_for', left(w.waiting_for, 300),
                           'xid', xid,
                           'state', CASE WHEN octet_length(st.state::text) < 2500 THEN st.state END
                       )::text AS obj
                FROM forge.workflows w,
                LATERAL (
                    SELECT json_build_object(
                               'workflowId', w.id,
                               'status', w.status,
                               'step', w.step,
                               'waitingFor', w.waiting_for,
                               'steps', COALESCE(json_agg(json_build_object(
                                          'name', s.name, 'status', s.status, 'error', s.error)
                                          ORDER BY s.run_seq NULLS LAST, s.idx), '[]'),
                               'output', NULL,
                               'error', w.error) AS state
                    FROM forge.workflow_steps s
                    WHERE s.workflow_id = w.id
                ) st
                WHERE w.id = ANY (ids)
            ) updates
        ) chunked
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('forge_workflow_updates', payload);
    END LOOP;
END $$;
