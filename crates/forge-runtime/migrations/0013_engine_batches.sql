-- Publishing for the engine's batched statements (see `store/workflows/engine.rs`).
--
-- One engine statement writes many workflows, each in two tables (its row and its steps), and
-- every table's trigger built the state of every workflow it saw changed: three or four times
-- per workflow per statement, the same JSON each time (PostgreSQL then folded the identical
-- notifications). Such a statement now sets `forge.workflow_steps_published` for its
-- transaction and updates the row of every workflow it writes: the steps' triggers are
-- skipped, and the workflows' update trigger publishes every row the statement updated, with
-- no join of old and new rows (so no plan made for small transition tables is reused for
-- large ones, the hazard 0007 removed from the jobs' trigger). Other statements (a cancel,
-- an event's delivery) are published as before.
CREATE OR REPLACE FUNCTION forge.publish_workflow_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT'
       OR current_setting('forge.workflow_steps_published', true) = 'on' THEN
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

DROP TRIGGER workflow_steps_publish_insert ON forge.workflow_steps;
CREATE TRIGGER workflow_steps_publish_insert AFTER INSERT ON forge.workflow_steps
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    WHEN (current_setting('forge.workflow_steps_published', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION forge.publish_workflow_step_changes();

DROP TRIGGER workflow_steps_publish_update ON forge.workflow_steps;
CREATE TRIGGER workflow_steps_publish_update AFTER UPDATE ON forge.workflow_steps
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    WHEN (current_setting('forge.workflow_steps_published', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION forge.publish_workflow_step_changes();
