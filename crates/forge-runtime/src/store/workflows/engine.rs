//! The engine's statements: loading workflows for the jobs that run them, and its fenced
//! writes, each a batch of many workflows in one statement (the engine's writer groups the
//! writes of concurrent workflows; see `workflow::engine::writer`).
//!
//! A write flushes the step results a workflow holds, records the step it starts and changes
//! the workflow, all fenced by the job (id and attempt) that runs the workflow: a worker that
//! lost its job can no longer change anything. Suspending a workflow inserts, in the same
//! statement, the job that will resume it.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use super::{status_of, WORKFLOW_JOB_ATTEMPTS};
use crate::status::{StepStatus, WorkflowStatus};
use crate::value;

/// Which job may write to a workflow: the one that runs it now, in this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub workflow_id: Uuid,
    pub job_id: Uuid,
    pub attempt: i32,
}

/// What kind of operation a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Step,
    Sleep,
    Event,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Step => "step",
            StepKind::Sleep => "sleep",
            StepKind::Event => "event",
        }
    }
}

/// One entry of a workflow's history (a step row that was reached).
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryEntry {
    pub run_seq: i32,
    pub name: String,
    pub kind: StepKind,
    pub status: StepStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub attempts: i32,
    pub compensation_attempts: i32,
    pub has_compensation: bool,
    pub wake_at: Option<DateTime<Utc>>,
}

/// A workflow as a job that runs it finds it.
#[derive(Debug, Clone)]
pub struct LoadedWorkflow {
    pub name: String,
    pub args: Value,
    /// `created` and `waiting` are already turned into `running` by the load.
    pub status: WorkflowStatus,
    pub error: Option<String>,
    pub owner: Option<String>,
    /// The database's clock at the load.
    pub now: DateTime<Utc>,
    /// Ordered by `run_seq`, from 1 without gaps.
    pub history: Vec<HistoryEntry>,
}

/// Changes a history entry that exists.
#[derive(Debug, Clone)]
pub struct StepUpdate {
    pub run_seq: i32,
    pub status: StepStatus,
    /// `None` keeps the stored output.
    pub output: Option<Value>,
    /// Replaces the stored error (`None` clears it).
    pub error: Option<String>,
    /// `None` keeps the stored count.
    pub compensation_attempts: Option<i32>,
    pub wake_at: Option<DateTime<Utc>>,
}

/// Records an entry of the history: a step that starts (or starts again), a sleep or a wait.
/// It takes the first declared row of its name not reached yet, or a new row.
#[derive(Debug, Clone)]
pub struct StepStart {
    pub run_seq: i32,
    pub name: String,
    pub kind: StepKind,
    pub status: StepStatus,
    pub output: Option<Value>,
    /// `None` keeps the error a row already has (the last failed attempt's).
    pub error: Option<String>,
    pub attempts: i32,
    pub has_compensation: bool,
    pub wake_at: Option<DateTime<Utc>>,
}

/// Hands the workflow to a new job due at `run_at` (the job is inserted by the same
/// statement). The running job then ends, and no worker slot is held until then.
#[derive(Debug, Clone, Copy)]
pub struct Park {
    pub job_id: Uuid,
    pub run_at: DateTime<Utc>,
}

/// One fenced write of the engine. `updates` always apply; the rest only while the workflow
/// has the status `expect` (a cancel may have turned it `compensating` meanwhile).
#[derive(Debug, Clone)]
pub struct WorkflowWrite {
    pub fence: Fence,
    pub updates: Vec<StepUpdate>,
    pub expect: WorkflowStatus,
    pub start: Option<StepStart>,
    pub status: WorkflowStatus,
    /// `None` keeps the current step.
    pub step: Option<String>,
    pub waiting_for: Option<String>,
    /// `None` keeps the stored output / error.
    pub output: Option<Value>,
    pub error: Option<String>,
    pub park: Option<Park>,
    /// The workflow ends: steps never reached become `skipped`.
    pub finish: bool,
}

/// What became of a [`WorkflowWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Applied,
    /// Only the `updates` applied: the workflow had this status instead of the expected one.
    StatusWas(WorkflowStatus),
    /// The job no longer runs the workflow: nothing was written.
    Lost,
}

/// Takes each workflow over for the job (id and attempt) of its fence: afterwards only writes
/// fenced by that job and attempt change it. A workflow is left out of the answer when its job
/// no longer runs it (it was handed to another job) or it has ended.
pub async fn load_workflows<'e, E: PgExecutor<'e>>(
    exec: E,
    fences: &[Fence],
) -> Result<Vec<(Uuid, LoadedWorkflow)>, sqlx::Error> {
    let ids: Vec<Uuid> = fences.iter().map(|f| f.workflow_id).collect();
    let jobs: Vec<Uuid> = fences.iter().map(|f| f.job_id).collect();
    let attempts: Vec<i32> = fences.iter().map(|f| f.attempt).collect();
    let rows = sqlx::query(
        "WITH flag AS (
             SELECT set_config('forge.workflow_steps_published', 'on', true)
         ), f AS (
             SELECT u.* FROM flag, unnest($1::uuid[], $2::uuid[], $3::int[])
                                       AS u(id, job_id, attempt)
         ), w AS (
             UPDATE forge.workflows w SET
                 attempt = f.attempt,
                 resume_at = NULL,
                 status = CASE WHEN w.status IN ('created', 'waiting') THEN 'running'
                               ELSE w.status END,
                 waiting_for = CASE WHEN w.status IN ('created', 'waiting') THEN NULL
                                    ELSE w.waiting_for END,
                 started_at = COALESCE(w.started_at, now()),
                 updated_at = now()
             FROM f
             WHERE w.id = f.id AND w.job_id = f.job_id
               AND w.status IN ('created', 'running', 'waiting', 'compensating')
             RETURNING w.id, w.name, w.args, w.status, w.error, w.owner
         )
         SELECT w.*, clock_timestamp() AS now,
                (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                            'run_seq', run_seq, 'name', name, 'kind', kind, 'status', status,
                            'output', output, 'error', error, 'attempts', attempts,
                            'compensation_attempts', compensation_attempts,
                            'has_compensation', has_compensation, 'wake_at', wake_at)
                            ORDER BY run_seq), '[]')
                 FROM forge.workflow_steps s
                 WHERE s.workflow_id = w.id AND s.run_seq IS NOT NULL) AS history
         FROM w",
    )
    .bind(&ids)
    .bind(&jobs)
    .bind(&attempts)
    .fetch_all(exec)
    .await?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            let history: sqlx::types::Json<Vec<HistoryEntry>> = row.try_get("history")?;
            let loaded = LoadedWorkflow {
                name: row.try_get("name")?,
                args: row.try_get("args")?,
                status: status_of(&status)?,
                error: row.try_get("error")?,
                owner: row.try_get("owner")?,
                now: row.try_get("now")?,
                history: history.0,
            };
            Ok((row.try_get("id")?, loaded))
        })
        .collect()
}

/// Locks the workflow row for the rest of the transaction, if `fence` still holds; returns
/// its status. Event delivery locks the same row, so after this no event can slip in between
/// looking for one and suspending to wait for it.
pub async fn lock_workflow(
    conn: &mut PgConnection,
    fence: Fence,
) -> Result<Option<WorkflowStatus>, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM forge.workflows
         WHERE id = $1 AND job_id = $2 AND attempt = $3
         FOR UPDATE",
    )
    .bind(fence.workflow_id)
    .bind(fence.job_id)
    .bind(fence.attempt)
    .fetch_optional(conn)
    .await?;
    status.as_deref().map(status_of).transpose()
}

/// Takes the oldest event `name` not taken yet for the wait at `run_seq`, or the one that wait
/// took already (so that taking is idempotent when the write after it was lost).
pub async fn take_event(
    conn: &mut PgConnection,
    workflow_id: Uuid,
    name: &str,
    run_seq: i32,
) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE forge.workflow_events SET consumed_by = $3
         WHERE id = (
             SELECT id FROM forge.workflow_events
             WHERE workflow_id = $1 AND name = $2 AND (consumed_by IS NULL OR consumed_by = $3)
             ORDER BY consumed_by NULLS LAST, id
             LIMIT 1)
         RETURNING payload",
    )
    .bind(workflow_id)
    .bind(name)
    .bind(run_seq)
    .fetch_optional(conn)
    .await
}

/// Applies writes of the engine, of different workflows, in one statement; see
/// [`WorkflowWrite`]. Returns each write's outcome, in order.
///
/// The statement locks the workflows in id order, so that two batches never wait for each
/// other in a cycle. It publishes every workflow it writes through the trigger on
/// `forge.workflows` alone (it touches each fenced row), not through the steps' triggers as
/// well: the state is then built once per workflow, not once per table it changed.
pub async fn write_workflows<'e, E: PgExecutor<'e>>(
    exec: E,
    writes: &[WorkflowWrite],
) -> Result<Vec<WriteOutcome>, sqlx::Error> {
    let mut c = Columns::default();
    for w in writes {
        c.push(w);
    }
    let parks = writes.iter().any(|w| w.park.is_some());
    let rows = sqlx::query(&format!(
        "WITH flag AS (
             SELECT set_config('forge.workflow_steps_published', 'on', true)
         ), w AS (
             SELECT u.* FROM flag,
                 unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::text[],
                        $7::text[], $8::jsonb[], $9::text[], $10::uuid[], $11::timestamptz[],
                        $12::bool[], $13::int[], $14::text[], $15::text[], $16::text[],
                        $17::jsonb[], $18::text[], $19::int[], $20::bool[], $21::timestamptz[])
                 AS u(id, job_id, attempt, expect, status, step, waiting_for, output, error,
                      park_job, park_at, finish, s_seq, s_name, s_kind, s_status, s_output,
                      s_error, s_attempts, s_has_comp, s_wake)
         ), wf AS (
             -- Joined on the id alone, the fence checked in a column: joined on all three
             -- keys, the planner expects one row, and nested loops over CTEs of hundreds of
             -- rows made the statement quadratic in the batch's size.
             SELECT w.*, f.status AS wf_status, f.name AS wf_name, f.queue, f.trace_context,
                    f.job_id = w.job_id AND f.attempt = w.attempt AS fenced,
                    f.job_id = w.job_id AND f.attempt = w.attempt
                        AND f.status = w.expect AS ok
             FROM forge.workflows f JOIN w ON f.id = w.id
             ORDER BY f.id
             FOR UPDATE OF f
         ), updated AS (
             UPDATE forge.workflow_steps s SET
                 status = u.status,
                 output = COALESCE(u.output, s.output),
                 error = u.error,
                 compensation_attempts = COALESCE(u.comp_attempts, s.compensation_attempts),
                 wake_at = u.wake_at,
                 finished_at = CASE WHEN u.status IN ('completed', 'failed')
                                     AND s.status IS DISTINCT FROM u.status
                                    THEN now() ELSE s.finished_at END,
                 compensated_at = CASE WHEN u.status = 'compensated' THEN now()
                                       ELSE s.compensated_at END
             FROM wf, unnest($22::uuid[], $23::int[], $24::text[], $25::jsonb[], $26::text[],
                             $27::int[], $28::timestamptz[])
                      AS u(workflow_id, run_seq, status, output, error, comp_attempts, wake_at)
             WHERE wf.fenced AND wf.id = u.workflow_id AND s.workflow_id = u.workflow_id
               AND s.run_seq = u.run_seq
         ), started AS (
             -- The row it takes: its own (a step started again), the first declared one of
             -- its name not reached yet, or a new one at the end.
             INSERT INTO forge.workflow_steps AS s
                 (workflow_id, idx, run_seq, name, kind, status, output, error, attempts,
                  has_compensation, wake_at, started_at, finished_at)
             SELECT wf.id,
                    COALESCE(
                        (SELECT idx FROM forge.workflow_steps s
                         WHERE s.workflow_id = wf.id AND s.run_seq = wf.s_seq),
                        (SELECT min(idx) FROM forge.workflow_steps s
                         WHERE s.workflow_id = wf.id AND s.run_seq IS NULL
                           AND s.status = 'pending' AND s.name = wf.s_name),
                        (SELECT COALESCE(max(idx), 0) + 1 FROM forge.workflow_steps s
                         WHERE s.workflow_id = wf.id)),
                    wf.s_seq, wf.s_name, wf.s_kind, wf.s_status, wf.s_output, wf.s_error,
                    wf.s_attempts, wf.s_has_comp, wf.s_wake, now(),
                    CASE WHEN wf.s_status IN ('completed', 'failed') THEN now() END
             FROM wf WHERE wf.ok AND wf.s_seq IS NOT NULL
             ON CONFLICT (workflow_id, idx) DO UPDATE SET
                 run_seq = EXCLUDED.run_seq, kind = EXCLUDED.kind, status = EXCLUDED.status,
                 output = EXCLUDED.output, error = COALESCE(EXCLUDED.error, s.error),
                 attempts = EXCLUDED.attempts, has_compensation = EXCLUDED.has_compensation,
                 wake_at = EXCLUDED.wake_at, started_at = COALESCE(s.started_at, now()),
                 finished_at = EXCLUDED.finished_at
         ), skipped AS (
             UPDATE forge.workflow_steps s SET status = 'skipped'
             FROM wf WHERE wf.ok AND wf.finish AND s.workflow_id = wf.id
                       AND s.status = 'pending'
         ), changed AS (
             -- Every fenced workflow, applied or not: touching its row publishes it, and its
             -- steps may have changed.
             UPDATE forge.workflows f SET
                 status = CASE WHEN wf.ok THEN wf.status ELSE f.status END,
                 step = CASE WHEN wf.ok THEN COALESCE(wf.step, f.step) ELSE f.step END,
                 waiting_for = CASE WHEN wf.ok THEN wf.waiting_for ELSE f.waiting_for END,
                 output = CASE WHEN wf.ok THEN COALESCE(wf.output, f.output) ELSE f.output END,
                 error = CASE WHEN wf.ok THEN COALESCE(wf.error, f.error) ELSE f.error END,
                 job_id = CASE WHEN wf.ok THEN COALESCE(wf.park_job, f.job_id)
                               ELSE f.job_id END,
                 resume_at = CASE WHEN wf.ok THEN wf.park_at ELSE f.resume_at END,
                 updated_at = now(),
                 finished_at = CASE WHEN NOT wf.ok THEN f.finished_at
                                    WHEN wf.finish THEN now() END
             FROM wf
             WHERE f.id = wf.id AND wf.fenced
         ){park}
         SELECT w.id, CASE WHEN wf.fenced THEN wf.wf_status END AS status,
                COALESCE(wf.ok, false) AS applied
         FROM w LEFT JOIN wf ON wf.id = w.id",
        // Only a batch that parks has the INSERT: any INSERT statement on `forge.jobs`, even
        // of no rows, wakes every worker.
        park = if parks {
            ", parked AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, max_attempts, run_at,
                                     trace_context)
             SELECT wf.park_job, 'workflow:' || wf.wf_name,
                    jsonb_build_object('workflowId', wf.id), wf.queue, $29, wf.park_at,
                    wf.trace_context
             FROM wf WHERE wf.ok AND wf.park_job IS NOT NULL
         )"
        } else {
            ""
        }
    ))
    .bind(&c.ids)
    .bind(&c.jobs)
    .bind(&c.attempts)
    .bind(&c.expects)
    .bind(&c.statuses)
    .bind(&c.steps)
    .bind(&c.waiting_for)
    .bind(&c.outputs)
    .bind(&c.errors)
    .bind(&c.park_jobs)
    .bind(&c.park_ats)
    .bind(&c.finishes)
    .bind(&c.s_seqs)
    .bind(&c.s_names)
    .bind(&c.s_kinds)
    .bind(&c.s_statuses)
    .bind(&c.s_outputs)
    .bind(&c.s_errors)
    .bind(&c.s_attempts)
    .bind(&c.s_has_comps)
    .bind(&c.s_wakes)
    .bind(&c.u_ids)
    .bind(&c.u_seqs)
    .bind(&c.u_statuses)
    .bind(&c.u_outputs)
    .bind(&c.u_errors)
    .bind(&c.u_comp_attempts)
    .bind(&c.u_wakes)
    .bind(WORKFLOW_JOB_ATTEMPTS)
    .fetch_all(exec)
    .await?;
    let mut outcomes = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let status: Option<String> = row.try_get("status")?;
        let outcome = match status {
            None => WriteOutcome::Lost,
            Some(_) if row.try_get("applied")? => WriteOutcome::Applied,
            Some(s) => WriteOutcome::StatusWas(status_of(&s)?),
        };
        outcomes.insert(id, outcome);
    }
    Ok(writes
        .iter()
        .map(|w| {
            outcomes
                .get(&w.fence.workflow_id)
                .copied()
                .unwrap_or(WriteOutcome::Lost)
        })
        .collect())
}

/// [`write_workflows`] as arrays, one element per write (and per step update).
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<Uuid>,
    jobs: Vec<Uuid>,
    attempts: Vec<i32>,
    expects: Vec<&'static str>,
    statuses: Vec<&'static str>,
    steps: Vec<Option<&'a str>>,
    waiting_for: Vec<Option<&'a str>>,
    outputs: Vec<Option<&'a Value>>,
    errors: Vec<Option<String>>,
    park_jobs: Vec<Option<Uuid>>,
    park_ats: Vec<Option<DateTime<Utc>>>,
    finishes: Vec<bool>,
    s_seqs: Vec<Option<i32>>,
    s_names: Vec<Option<&'a str>>,
    s_kinds: Vec<Option<&'static str>>,
    s_statuses: Vec<Option<&'static str>>,
    s_outputs: Vec<Option<&'a Value>>,
    s_errors: Vec<Option<String>>,
    s_attempts: Vec<Option<i32>>,
    s_has_comps: Vec<Option<bool>>,
    s_wakes: Vec<Option<DateTime<Utc>>>,
    u_ids: Vec<Uuid>,
    u_seqs: Vec<i32>,
    u_statuses: Vec<&'static str>,
    u_outputs: Vec<Option<&'a Value>>,
    u_errors: Vec<Option<String>>,
    u_comp_attempts: Vec<Option<i32>>,
    u_wakes: Vec<Option<DateTime<Utc>>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, w: &'a WorkflowWrite) {
        self.ids.push(w.fence.workflow_id);
        self.jobs.push(w.fence.job_id);
        self.attempts.push(w.fence.attempt);
        self.expects.push(w.expect.as_str());
        self.statuses.push(w.status.as_str());
        self.steps.push(w.step.as_deref());
        self.waiting_for.push(w.waiting_for.as_deref());
        self.outputs.push(w.output.as_ref());
        self.errors.push(w.error.clone().map(value::error_text));
        self.park_jobs.push(w.park.map(|p| p.job_id));
        self.park_ats.push(w.park.map(|p| p.run_at));
        self.finishes.push(w.finish);
        let s = w.start.as_ref();
        self.s_seqs.push(s.map(|s| s.run_seq));
        self.s_names.push(s.map(|s| s.name.as_str()));
        self.s_kinds.push(s.map(|s| s.kind.as_str()));
        self.s_statuses.push(s.map(|s| s.status.as_str()));
        self.s_outputs.push(s.and_then(|s| s.output.as_ref()));
        self.s_errors
            .push(s.and_then(|s| s.error.clone()).map(value::error_text));
        self.s_attempts.push(s.map(|s| s.attempts));
        self.s_has_comps.push(s.map(|s| s.has_compensation));
        self.s_wakes.push(s.and_then(|s| s.wake_at));
        for u in &w.updates {
            self.u_ids.push(w.fence.workflow_id);
            self.u_seqs.push(u.run_seq);
            self.u_statuses.push(u.status.as_str());
            self.u_outputs.push(u.output.as_ref());
            self.u_errors.push(u.error.clone().map(value::error_text));
            self.u_comp_attempts.push(u.compensation_attempts);
            self.u_wakes.push(u.wake_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use forge_test_support::TestDb;
    use serde_json::json;
    use sqlx::postgres::{PgListener, PgPoolOptions};

    use super::super::{insert_workflows, NewWorkflow};
    use super::*;
    use crate::publish::{WorkflowUpdate, WorkflowUpdates};
    use crate::store::Store;

    fn new_workflow(key: Option<&str>) -> NewWorkflow {
        NewWorkflow {
            id: Uuid::now_v7(),
            name: "batch".into(),
            args: json!({}),
            owner: None,
            queue: "default".into(),
            declared_steps: vec!["one".into(), "two".into()],
            idempotency_key: key.map(str::to_string),
            job_id: Uuid::now_v7(),
            trace_context: None,
        }
    }

    fn starts_one(fence: Fence, expect: WorkflowStatus) -> WorkflowWrite {
        WorkflowWrite {
            fence,
            updates: vec![],
            expect,
            start: Some(StepStart {
                run_seq: 1,
                name: "one".into(),
                kind: StepKind::Step,
                status: StepStatus::Running,
                output: None,
                error: None,
                attempts: 1,
                has_compensation: false,
                wake_at: None,
            }),
            status: WorkflowStatus::Running,
            step: Some("one".into()),
            waiting_for: None,
            output: None,
            error: None,
            park: None,
            finish: false,
        }
    }

    /// Reads the updates published until `until` holds for one of them; returns them all.
    async fn updates_until(
        listener: &mut PgListener,
        until: impl Fn(&WorkflowUpdate) -> bool,
    ) -> Vec<WorkflowUpdate> {
        let mut seen = Vec::new();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
                .await
                .expect("the update is published")
                .unwrap();
            let batch = WorkflowUpdates::new(n.payload()).decode().unwrap();
            let done = batch.iter().any(&until);
            seen.extend(batch);
            if done {
                return seen;
            }
        }
    }

    /// One statement writes several workflows, each by its own fence: a write whose job lost
    /// the workflow changes nothing, one that expected another status applies only its step
    /// updates. Each workflow written is published once, with its steps, and a lost one not
    /// at all. Repeated idempotency keys in one start are one workflow.
    #[tokio::test]
    async fn one_statement_writes_many_workflows_each_by_its_fence_published_once_each() {
        let db = TestDb::new().await;
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&db.url)
            .await
            .unwrap();
        Store::new(pool.clone()).migrate().await.unwrap();
        let mut listener = PgListener::connect(&db.url).await.unwrap();
        listener.listen("forge_workflow_updates").await.unwrap();

        let wfs = [
            new_workflow(None),
            new_workflow(None),
            new_workflow(Some("k")),
            new_workflow(Some("k")),
        ];
        let ids = insert_workflows(&pool, &wfs).await.unwrap();
        assert_eq!(ids[..3], [wfs[0].id, wfs[1].id, wfs[2].id]);
        assert_eq!(ids[3], wfs[2].id, "a repeated key is the same workflow");
        let again = insert_workflows(&pool, &[new_workflow(Some("k"))])
            .await
            .unwrap();
        assert_eq!(
            again,
            [wfs[2].id],
            "a key taken before is the workflow holding it"
        );

        let fence = |wf: &NewWorkflow, attempt| Fence {
            workflow_id: wf.id,
            job_id: wf.job_id,
            attempt,
        };
        let (a, b, c) = (fence(&wfs[0], 1), fence(&wfs[1], 1), fence(&wfs[2], 1));
        let loaded = load_workflows(&pool, &[a, b, c]).await.unwrap();
        assert_eq!(loaded.len(), 3);
        assert!(loaded
            .iter()
            .all(|(_, l)| l.status == WorkflowStatus::Running && l.history.is_empty()));
        updates_until(&mut listener, |u| {
            u.workflow_id == c.workflow_id && u.status == WorkflowStatus::Running
        })
        .await;

        let lost = Fence { attempt: 2, ..b };
        let outcomes = write_workflows(
            &pool,
            &[
                starts_one(a, WorkflowStatus::Running),
                starts_one(lost, WorkflowStatus::Running),
                starts_one(c, WorkflowStatus::Waiting),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            outcomes,
            [
                WriteOutcome::Applied,
                WriteOutcome::Lost,
                WriteOutcome::StatusWas(WorkflowStatus::Running)
            ]
        );
        // A statement after it marks where its updates end.
        let mut finish_a = starts_one(a, WorkflowStatus::Running);
        finish_a.start = None;
        finish_a.status = WorkflowStatus::Completed;
        finish_a.finish = true;
        assert_eq!(
            write_workflows(&pool, &[finish_a]).await.unwrap(),
            [WriteOutcome::Applied]
        );
        let mut published = updates_until(&mut listener, |u| {
            u.workflow_id == a.workflow_id && u.status == WorkflowStatus::Completed
        })
        .await;
        published.pop();
        let mut times: HashMap<Uuid, usize> = HashMap::new();
        for u in &published {
            *times.entry(u.workflow_id).or_default() += 1;
        }
        assert_eq!(times.get(&a.workflow_id), Some(&1), "{published:?}");
        assert_eq!(times.get(&c.workflow_id), Some(&1), "{published:?}");
        assert_eq!(times.get(&b.workflow_id), None, "{published:?}");
        let state_a = published
            .iter()
            .find(|u| u.workflow_id == a.workflow_id)
            .and_then(|u| u.state.clone())
            .expect("published with its state");
        assert_eq!(state_a.step.as_deref(), Some("one"));
        let steps: Vec<_> = state_a
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.status))
            .collect();
        assert_eq!(
            steps,
            [("one", StepStatus::Running), ("two", StepStatus::Pending)]
        );
    }
}
