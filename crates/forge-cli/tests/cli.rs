//! The `forge` binary against the real PostgreSQL, each test on a database of its own: jobs
//! listed by filter in tables and in the runs API's JSON, shown, watched to each ending,
//! retried, cancelled and deleted; a workflow shown, watched and resumed by an event sent from
//! the command line; `migrate` on a fresh database; bad input; `generate`'s hand-over to the
//! application's binary.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use forge::prelude::*;
use forge::runs::{JobFilter, Page, WorkflowFilter};
use forge::Worker;
use forge_test_support::{gates, wait_for, TestDb};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use uuid::Uuid;

/// Longest any one invocation or wait may take: generous, the machine is small and busy.
const WAIT: Duration = Duration::from_secs(30);

#[forge::job]
async fn cli_idle(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n)
}

#[forge::job(queue = "reports")]
async fn cli_report(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

/// On a queue no worker of these tests serves: it stays `pending` until cancelled.
#[forge::job(queue = "parked")]
async fn cli_parked(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

/// Reports 25, 50 and 75 percent, each once the test opens its gate, then completes.
#[forge::job(max_attempts = 1)]
async fn cli_stepper(ctx: &JobContext) -> Result<String> {
    for pct in [25u32, 50, 75] {
        gates::wait(ctx.db(), &format!("{}-{pct}", ctx.job_id())).await?;
        ctx.progress(pct, format!("step {pct}")).await?;
    }
    Ok("done".into())
}

/// Fails for good (one attempt) unless the gate `fixed` is open; with `hold`, only once the
/// test opens the job's gate `go`.
#[forge::job(max_attempts = 1)]
async fn cli_broken(ctx: &JobContext, hold: bool) -> Result<String> {
    if hold {
        gates::wait(ctx.db(), &format!("{}-go", ctx.job_id())).await?;
    }
    if gate_is_open(ctx.db(), "fixed").await? {
        return Ok("repaired".into());
    }
    Err(Error::msg("the disk is full"))
}

/// Waits for the `approve` event, then ends with twice its argument plus one.
#[forge::workflow(steps = ["prepare", "approve", "finish"])]
async fn cli_approval(ctx: &WorkflowContext, amount: u32) -> Result<u32> {
    let doubled: u32 = ctx
        .step("prepare", move || async move { Ok(amount * 2) })
        .await?;
    let _: Value = ctx
        .wait_for_event("approve", Duration::from_secs(3600))
        .await?;
    ctx.step("finish", move || async move { Ok(doubled + 1) })
        .await
}

async fn gate_is_open(pool: &PgPool, name: &str) -> std::result::Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM test_gates WHERE name = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
}

/// A database migrated by a node of the test, with the gates table.
async fn node(db: &TestDb) -> Forge {
    let forge = Forge::connect(&db.url).await.unwrap();
    gates::create(forge.pool()).await;
    forge
}

async fn worker(forge: &Forge) -> Worker {
    forge
        .start_worker(WorkerConfig {
            concurrency: 4,
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        })
        .await
        .unwrap()
}

/// What one run of the binary did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Checks the error contract: exit `code`, one line on stderr, `forge: ` first.
    fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:?}");
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(!line.contains('\n'), "one line: {self:?}");
        line.strip_prefix("forge: ")
            .unwrap_or_else(|| panic!("`forge: ` first: {self:?}"))
    }
}

fn command(url: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_forge"));
    c.args(args).kill_on_drop(true);
    match url {
        Some(url) => c.env("DATABASE_URL", url),
        None => c.env_remove("DATABASE_URL"),
    };
    c
}

async fn forge_cli(db: &TestDb, args: &[&str]) -> Ran {
    run(command(Some(&db.url), args), args).await
}

async fn run(mut c: Command, args: &[&str]) -> Ran {
    let out = tokio::time::timeout(WAIT, c.output())
        .await
        .unwrap_or_else(|_| panic!("forge {args:?} did not end within {WAIT:?}"))
        .expect("run the forge binary");
    Ran {
        code: out.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ok(ran: Ran) -> Ran {
    assert_eq!(ran.code, 0, "{ran:?}");
    ran
}

/// A `watch` running in the background, read line by line as it prints.
struct Watch {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Watch {
    fn start(db: &TestDb, args: &[&str]) -> Watch {
        let mut child = command(Some(&db.url), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start forge watch");
        let stdout = child.stdout.take().unwrap();
        Watch {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    async fn line(&mut self) -> String {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line within {WAIT:?}; so far {:?}", self.seen))
            .unwrap()
            .unwrap_or_else(|| panic!("watch ended; it printed {:?}", self.seen));
        self.seen.push(line.clone());
        line
    }

    /// Reads until the line `wanted`.
    async fn until(&mut self, wanted: &str) {
        while self.line().await != wanted {}
    }

    /// Waits for the end; answers the exit code and every line printed.
    async fn end(mut self) -> (i32, Vec<String>) {
        while let Some(line) = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("watch printed and ended in time")
            .unwrap()
        {
            self.seen.push(line);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("watch ended in time")
            .unwrap();
        (status.code().expect("an exit code"), self.seen)
    }
}

fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["jobId"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn jobs_ls_filters_and_pages_in_a_table_and_in_the_api_json() {
    let db = TestDb::new().await;
    let forge = node(&db).await;
    // No worker: the jobs stay `pending`, one `cancelled`.
    let mut alice = Vec::new();
    for n in 0..3 {
        alice.push(
            forge
                .enqueue(cli_idle::request(n).owner("alice"))
                .await
                .unwrap(),
        );
    }
    let report = forge
        .enqueue(cli_report::request().owner("bob"))
        .await
        .unwrap();
    forge.cancel_job(alice[0], None).await.unwrap();

    let table = ok(forge_cli(&db, &["jobs", "ls"]).await);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", table.stdout);
    for column in [
        "ID", "FUNCTION", "STATUS", "PROGRESS", "ATTEMPT", "QUEUE", "OWNER",
    ] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    // Newest first, each column where the header says.
    assert!(lines[1].starts_with(&report.to_string()), "{}", lines[1]);
    let status_at = lines[0].find("STATUS").unwrap();
    assert!(
        lines[1][status_at..].starts_with("pending "),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("cli_report") && lines[1].contains("reports"));
    assert!(lines[4].starts_with(&alice[0].to_string()));
    assert!(
        lines[4][status_at..].starts_with("cancelled "),
        "{}",
        lines[4]
    );

    let cancelled = ok(forge_cli(&db, &["jobs", "ls", "--status", "cancelled"]).await);
    let rows: Vec<&str> = cancelled.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].starts_with(&alice[0].to_string()));
    let by_function = ok(forge_cli(&db, &["jobs", "ls", "--function", "cli_report"]).await);
    assert_eq!(by_function.stdout.lines().count(), 2);
    assert!(by_function.stdout.contains(&report.to_string()));
    let none = ok(forge_cli(&db, &["jobs", "ls", "--owner", "carol"]).await);
    assert_eq!(
        (none.stdout.as_str(), none.stderr.as_str()),
        ("", "no jobs\n")
    );

    // JSON is the runs API's page, as the runtime serializes it.
    let json = ok(forge_cli(
        &db,
        &[
            "jobs",
            "ls",
            "--json",
            "--status",
            "pending,cancelled",
            "--owner",
            "alice",
        ],
    )
    .await)
    .json();
    let filter = JobFilter {
        owner: Some("alice".into()),
        status: vec![JobStatus::Pending, JobStatus::Cancelled],
        ..JobFilter::default()
    };
    let api = forge.list_jobs(&filter, &Page::default()).await.unwrap();
    assert_eq!(json, serde_json::to_value(&api).unwrap());
    let keys: HashSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, HashSet::from(["items", "nextCursor"]));
    assert_eq!(json["nextCursor"], Value::Null);
    let item = &json["items"][0];
    for field in [
        "jobId",
        "status",
        "progress",
        "function",
        "queue",
        "owner",
        "attempts",
        "maxAttempts",
        "runAt",
        "createdAt",
    ] {
        assert!(item.get(field).is_some(), "{field} in {item}");
    }
    let mut expected: Vec<String> = alice.iter().rev().map(Uuid::to_string).collect();
    assert_eq!(ids_of(&json), expected);

    // Pages: the cursor of the first, in JSON and as the table's hint, gives the rest.
    let first = ok(forge_cli(&db, &["jobs", "ls", "--limit", "3", "--json"]).await).json();
    let cursor = first["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let hinted = ok(forge_cli(&db, &["jobs", "ls", "--limit", "3"]).await);
    assert_eq!(hinted.stderr, format!("more jobs: add --after {cursor}\n"));
    let rest = ok(forge_cli(
        &db,
        &["jobs", "ls", "--limit", "3", "--after", &cursor, "--json"],
    )
    .await)
    .json();
    assert_eq!(rest["nextCursor"], Value::Null);
    let mut all = ids_of(&first);
    all.extend(ids_of(&rest));
    expected.insert(0, report.to_string());
    assert_eq!(all, expected);
}

#[tokio::test]
async fn jobs_show_prints_the_detail_and_an_unknown_id_exits_1() {
    let db = TestDb::new().await;
    let forge = node(&db).await;
    let worker = worker(&forge).await;
    let id = forge.enqueue(cli_broken::request(false)).await.unwrap();
    wait_for("the job to fail", WAIT, || async {
        let r = forge.job(id).await.unwrap()?;
        (r.status == JobStatus::Failed).then_some(())
    })
    .await;
    worker.shutdown().await;

    let shown = ok(forge_cli(&db, &["jobs", "show", &id.to_string()]).await);
    let text = &shown.stdout;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| panic!("no `{name}` in\n{text}"))
    };
    assert_eq!(field("id"), id.to_string());
    assert_eq!(field("function"), "cli_broken");
    assert_eq!(field("status"), "failed");
    assert_eq!(field("attempt"), "1 of 1");
    assert!(
        text.contains("args\n  {\n    \"hold\": false\n  }"),
        "{text}"
    );
    assert!(text.contains("error\n  the disk is full"), "{text}");
    let attempts = text.split("attempts\n").nth(1).expect("an attempts table");
    assert!(attempts.contains("OUTCOME"), "{text}");
    assert!(
        attempts.lines().any(|l| l.trim_start().starts_with("1 ")
            && l.contains("failed")
            && l.contains("the disk is full")),
        "{text}"
    );

    let json = ok(forge_cli(&db, &["--json", "jobs", "show", &id.to_string()]).await).json();
    let api = forge.job_detail(id, None).await.unwrap().unwrap();
    assert_eq!(json, serde_json::to_value(&api).unwrap());
    assert_eq!(json["attemptHistory"][0]["outcome"], "failed");

    let unknown = Uuid::now_v7();
    let ran = forge_cli(&db, &["jobs", "show", &unknown.to_string()]).await;
    assert_eq!(ran.failed(1), format!("no such job {unknown}"));
    assert_eq!(ran.stdout, "");
}

#[tokio::test]
async fn jobs_watch_prints_each_progress_report_and_exits_0_when_the_job_completes() {
    let db = TestDb::new().await;
    let forge = node(&db).await;
    let _worker = worker(&forge).await;
    let id = forge.enqueue(cli_stepper::request()).await.unwrap();

    let mut watch = Watch::start(&db, &["jobs", "watch", &id.to_string()]);
    // The first line is the state read after subscribing: from here on nothing is missed.
    let first = watch.line().await;
    assert!(
        ["pending", "claimed", "running"].contains(&first.as_str()),
        "{first}"
    );
    for pct in [25, 50, 75] {
        gates::open(forge.pool(), &[&format!("{id}-{pct}")]).await;
        watch.until(&format!("{pct}% step {pct}")).await;
    }
    let (code, lines) = watch.end().await;
    assert_eq!(code, 0, "{lines:?}");
    assert!(lines.contains(&"running".to_string()), "{lines:?}");
    assert_eq!(lines[lines.len() - 2..], ["completed", "output: \"done\""]);
}

#[tokio::test]
async fn jobs_watch_exits_3_on_failed_and_4_on_cancelled_and_prints_ndjson() {
    let db = TestDb::new().await;
    let forge = node(&db).await;
    let _worker = worker(&forge).await;

    let failing = forge.enqueue(cli_broken::request(true)).await.unwrap();
    let mut watch = Watch::start(&db, &["jobs", "watch", &failing.to_string()]);
    watch.line().await;
    gates::open(forge.pool(), &[&format!("{failing}-go")]).await;
    let (code, lines) = watch.end().await;
    assert_eq!(code, 3, "{lines:?}");
    assert_eq!(lines.last().unwrap(), "failed: the disk is full");

    // A job that already ended: one JSON line, its final state, and the same exit code.
    let ran = forge_cli(&db, &["jobs", "watch", "--json", &failing.to_string()]).await;
    assert_eq!(ran.code, 3, "{ran:?}");
    assert_eq!(ran.stdout.lines().count(), 1, "{ran:?}");
    let state = ran.json();
    assert_eq!(
        (&state["jobId"], &state["status"], &state["error"]),
        (
            &json!(failing),
            &json!("failed"),
            &json!("the disk is full")
        )
    );

    let parked = forge.enqueue(cli_parked::request()).await.unwrap();
    let mut watch = Watch::start(&db, &["jobs", "watch", "--json", &parked.to_string()]);
    let first: Value = serde_json::from_str(&watch.line().await).unwrap();
    assert_eq!(first["status"], "pending");
    let cancel = ok(forge_cli(&db, &["jobs", "cancel", &parked.to_string()]).await);
    assert_eq!(cancel.stdout, "cancelled 1 job\n");
    let (code, lines) = watch.end().await;
    assert_eq!(code, 4, "{lines:?}");
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["status"], "cancelled");
}

#[tokio::test]
async fn jobs_retry_cancel_and_delete_act_by_id_and_filter_and_say_why_not() {
    let db = TestDb::new().await;
    let forge = node(&db).await;
    let worker = worker(&forge).await;
    let broken = forge.enqueue(cli_broken::request(false)).await.unwrap();
    let id = broken.to_string();
    let failed = forge_cli(&db, &["jobs", "watch", &id]).await;
    assert_eq!(failed.code, 3, "{failed:?}");

    // Retried after the cause is fixed: it runs again and completes.
    gates::open(forge.pool(), &["fixed"]).await;
    let retried = ok(forge_cli(&db, &["jobs", "retry", &id]).await);
    assert_eq!(retried.stdout, "retried 1 job\n");
    let watched = ok(forge_cli(&db, &["jobs", "watch", &id]).await);
    assert!(
        watched
            .stdout
            .ends_with("completed\noutput: \"repaired\"\n"),
        "{watched:?}"
    );
    let detail = forge.job_detail(broken, None).await.unwrap().unwrap();
    assert_eq!(detail.attempt_history.len(), 2);

    // What cannot be done says why, in the runtime's words.
    let again = forge_cli(&db, &["jobs", "retry", &id]).await;
    let why = again.failed(1);
    assert!(
        why.contains("`completed`") && why.contains("only `failed` and `dead_letter`"),
        "{why}"
    );
    let unknown = Uuid::now_v7();
    let ran = forge_cli(&db, &["jobs", "cancel", &unknown.to_string()]).await;
    assert_eq!(ran.failed(1), format!("no such job {unknown}"));
    worker.shutdown().await;

    // By filter and by several ids, answering how many changed.
    let mut parked = Vec::new();
    for _ in 0..3 {
        parked.push(
            forge
                .enqueue(cli_parked::request().owner("dave"))
                .await
                .unwrap(),
        );
    }
    let other = forge.enqueue(cli_parked::request()).await.unwrap();
    let refused = forge_cli(&db, &["jobs", "delete", &other.to_string()]).await;
    assert!(refused.failed(1).contains("cancel it first"), "{refused:?}");
    let n = ok(forge_cli(&db, &["jobs", "cancel", "--owner", "dave", "--json"]).await).json();
    assert_eq!(n, json!({ "count": 3 }));
    let n = ok(forge_cli(
        &db,
        &[
            "jobs",
            "cancel",
            "--json",
            &other.to_string(),
            &parked[0].to_string(),
        ],
    )
    .await)
    .json();
    assert_eq!(n, json!({ "count": 1 }), "only `other` was still waiting");
    let deleted = ok(forge_cli(&db, &["jobs", "delete", "--status", "cancelled"]).await);
    assert_eq!(deleted.stdout, "deleted 4 jobs\n");
    let deleted = ok(forge_cli(&db, &["jobs", "delete", &id]).await);
    assert_eq!(deleted.stdout, "deleted 1 job\n");
    let gone = forge_cli(&db, &["jobs", "show", &id]).await;
    assert_eq!(gone.failed(1), format!("no such job {id}"));
    let left = forge
        .list_jobs(&JobFilter::default(), &Page::default())
        .await
        .unwrap();
    assert!(left.items.is_empty(), "{left:?}");

    // Every job only when asked for by name.
    let ran = forge_cli(&db, &["jobs", "cancel"]).await;
    assert!(ran.failed(2).contains("--all"), "{ran:?}");
    let n = ok(forge_cli(&db, &["jobs", "retry", "--all", "--json"]).await).json();
    assert_eq!(n, json!({ "count": 0 }));
}

#[tokio::test]
async fn a_workflow_is_shown_watched_and_resumed_by_an_event_sent_from_the_cli() {
    let db = TestDb::new().await;
    let forge = node(&db).await;
    let _worker = worker(&forge).await;
    let id = forge
        .start_workflow(cli_approval::request(5).owner("alice"))
        .await
        .unwrap();
    let wid = id.to_string();
    wait_for("the workflow to wait", WAIT, || async {
        let w = forge.workflow_state(id).await.unwrap()?;
        (w.status == WorkflowStatus::Waiting).then_some(())
    })
    .await;

    let listed = ok(forge_cli(&db, &["workflows", "ls", "--status", "waiting"]).await);
    assert!(
        listed.stdout.lines().nth(1).unwrap().starts_with(&wid),
        "{listed:?}"
    );
    let none = ok(forge_cli(&db, &["workflows", "ls", "--name", "other"]).await);
    assert_eq!(none.stderr, "no workflows\n");
    let listed =
        ok(forge_cli(&db, &["workflows", "ls", "--json", "--owner", "alice"]).await).json();
    let filter = WorkflowFilter {
        owner: Some("alice".into()),
        ..WorkflowFilter::default()
    };
    let api = forge
        .list_workflows(&filter, &Page::default())
        .await
        .unwrap();
    assert_eq!(listed, serde_json::to_value(&api).unwrap());

    // The step timeline: the completed step, the wait (an `event` step), the one not reached.
    let shown = ok(forge_cli(&db, &["workflows", "show", &wid]).await).stdout;
    let steps = shown.split("steps\n").nth(1).expect("a steps table");
    let rows: Vec<Vec<&str>> = steps
        .lines()
        .skip(1)
        .take(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.iter().map(|r| (r[0], r[1], r[2])).collect::<Vec<_>>(),
        [
            ("prepare", "step", "completed"),
            ("approve", "event", "running"),
            ("finish", "step", "pending")
        ],
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("status") && l.ends_with("waiting")),
        "{shown}"
    );
    let json = ok(forge_cli(&db, &["workflows", "show", "--json", &wid]).await).json();
    let api = forge.workflow_detail(id, None).await.unwrap().unwrap();
    assert_eq!(json, serde_json::to_value(&api).unwrap());

    let mut watch = Watch::start(&db, &["workflows", "watch", &wid]);
    let first = watch.line().await;
    assert!(first.starts_with("waiting"), "{first}");
    let sent = ok(forge_cli(
        &db,
        &[
            "workflows",
            "send-event",
            &wid,
            "approve",
            "--payload",
            r#"{"ok":true}"#,
        ],
    )
    .await);
    assert_eq!(sent.stdout, format!("sent `approve` to workflow {wid}\n"));
    let (code, lines) = watch.end().await;
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines.contains(&"step approve: completed".to_string()),
        "{lines:?}"
    );
    assert_eq!(lines[lines.len() - 2..], ["completed", "output: 11"]);

    let late = forge_cli(&db, &["workflows", "send-event", &wid, "approve"]).await;
    assert!(
        late.failed(1)
            .contains("already finished with status `completed`"),
        "{late:?}"
    );
    let events = ok(forge_cli(&db, &["workflows", "show", "--json", &wid]).await).json();
    assert_eq!(events["events"][0]["payload"], json!({ "ok": true }));
    let watched = ok(forge_cli(&db, &["workflows", "watch", "--json", &wid]).await).json();
    assert_eq!(
        (&watched["status"], &watched["output"]),
        (&json!("completed"), &json!(11))
    );
}

#[tokio::test]
async fn migrate_applies_the_schema_to_a_fresh_database_once() {
    let db = TestDb::new().await;
    // The other commands never migrate on their own.
    let ran = forge_cli(&db, &["jobs", "ls"]).await;
    assert!(
        ran.failed(1).contains("run `forge migrate` first"),
        "{ran:?}"
    );

    let migrated = ok(forge_cli(&db, &["migrate"]).await);
    assert!(
        migrated
            .stdout
            .starts_with("migrated the database to migration "),
        "{migrated:?}"
    );
    let again = ok(forge_cli(&db, &["migrate", "--json"]).await).json();
    assert_eq!(again["applied"], json!(false));
    assert!(again["version"].as_i64().unwrap() > 0);
    let listed = ok(forge_cli(&db, &["jobs", "ls", "--json"]).await).json();
    assert_eq!(listed, json!({ "items": [], "nextCursor": null }));
}

#[tokio::test]
async fn bad_input_exits_2_with_one_line_naming_the_value() {
    let db = TestDb::new().await;
    node(&db).await;
    let bad_id = forge_cli(&db, &["jobs", "show", "not-a-uuid"]).await;
    assert!(bad_id.failed(2).contains("'not-a-uuid'"), "{bad_id:?}");
    let bad_status = forge_cli(&db, &["jobs", "ls", "--status", "finished"]).await;
    let m = bad_status.failed(2);
    assert!(m.contains("'finished'") && m.contains("dead_letter"), "{m}");
    let bad_status = forge_cli(&db, &["workflows", "ls", "--status", "cancelled"]).await;
    assert!(
        bad_status.failed(2).contains("'cancelled'"),
        "{bad_status:?}"
    );
    let bad_time = forge_cli(&db, &["jobs", "ls", "--since", "yesterday"]).await;
    assert!(bad_time.failed(2).contains("'yesterday'"), "{bad_time:?}");
    let bad_payload = forge_cli(
        &db,
        &[
            "workflows",
            "send-event",
            &Uuid::now_v7().to_string(),
            "go",
            "--payload",
            "{oops",
        ],
    )
    .await;
    assert!(bad_payload.failed(2).contains("'{oops'"), "{bad_payload:?}");
    // The runtime's limits, in its words, under the flag's name.
    let limit = forge_cli(&db, &["jobs", "ls", "--limit", "0"]).await;
    assert_eq!(
        limit.failed(2),
        "invalid --limit: must be between 1 and 100, got 0"
    );
    let cursor = forge_cli(&db, &["jobs", "ls", "--after", "yesterday"]).await;
    assert!(
        cursor.failed(2).starts_with("invalid --after: "),
        "{cursor:?}"
    );
    let both = forge_cli(
        &db,
        &[
            "jobs",
            "delete",
            &Uuid::now_v7().to_string(),
            "--status",
            "failed",
        ],
    )
    .await;
    both.failed(2);

    let no_db = run(command(None, &["jobs", "ls"]), &["jobs", "ls"]).await;
    assert!(no_db.failed(2).contains("DATABASE_URL"), "{no_db:?}");
}

/// A stand-in for cargo (the binary runs `$CARGO` when it is set, as cargo's own tools do):
/// it prints its arguments and exits 7.
fn fake_cargo() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("forge-cli-fake-cargo-{}", Uuid::now_v7()));
    std::fs::write(&path, "#!/bin/sh\necho \"cargo $*\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn generate_runs_the_applications_generate_and_exits_as_it_did() {
    let cargo = fake_cargo();
    let args = [
        "generate",
        "--package",
        "demo",
        "--out",
        "web/src/lib/forge",
        "--check",
        "--adapter",
        "react",
    ];
    let mut c = command(None, &args);
    c.env("CARGO", &cargo);
    let ran = run(c, &args).await;
    std::fs::remove_file(&cargo).unwrap();
    assert_eq!(
        ran.stdout,
        "cargo run --quiet -p demo -- generate --out web/src/lib/forge --check --adapter react\n"
    );
    assert_eq!(ran.code, 7, "{ran:?}");

    let missing = run(command(None, &["generate", "--out", "x"]), &[]).await;
    assert!(missing.failed(2).contains("--package"), "{missing:?}");
}

/// The real thing: builds the demo (minutes on a cold cache, and it needs the demo's crates to
/// build at that moment), so it is left to `--run-ignored`.
#[tokio::test]
#[ignore = "builds the demo app: cargo nextest run -p forge-cli --run-ignored ignored-only"]
async fn generate_check_passes_on_the_demos_committed_client() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let args = [
        "generate",
        "--package",
        "demo",
        "--out",
        "examples/demo/web/src/lib/forge",
        "--check",
    ];
    let mut c = command(None, &args);
    c.current_dir(root);
    let out = tokio::time::timeout(Duration::from_secs(900), c.output())
        .await
        .expect("the demo built and checked within 15 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "the generated client is up to date\n");
}
