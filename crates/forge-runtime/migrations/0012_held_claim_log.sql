-- A log of open held claims (see the worker module), so that a node that dies holding one
-- costs its jobs an attempt like any other claim. A held claim's row is written (committed on
-- another connection) before any of its jobs starts, with the id of the claim's transaction,
-- and deleted by the claim's close in the same transaction as its writes. A row whose
-- transaction is no longer in progress and was not committed belongs to a claim that was
-- rolled back, most likely by a node that died (a job that aborted its process, say): the
-- reaper then marks its jobs `no_hold`, and they are only taken by plain claims, which count
-- the attempt when they claim. A job that keeps killing its node thus ends `dead_letter`
-- after `max_attempts`; its neighbours in the claim run once each.
CREATE TABLE forge.held_claims (
    id uuid PRIMARY KEY,
    xid xid8 NOT NULL,
    job_ids uuid[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE forge.jobs ADD COLUMN no_hold boolean NOT NULL DEFAULT false;
