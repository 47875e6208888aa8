-- Eager start (see the worker module): a node inserts a job already claimed by its own idle
-- worker. Such an insert sets `forge.claimed_at_insert` for its transaction, and no other node
-- is woken for it: there is nothing left for them to claim.
CREATE OR REPLACE FUNCTION forge.notify_jobs_available() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('forge.claimed_at_insert', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('forge_jobs_available', '');
    END IF;
    RETURN NULL;
END $$;
