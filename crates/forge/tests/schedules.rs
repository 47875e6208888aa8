//! Recurring jobs against the real PostgreSQL: exactly once per tick across nodes, the
//! missed-tick and overlap policies, run-time schedules and their owners, and daylight-saving
//! transitions under an injected clock.
//!
//! Every `#[forge::cron]` here is declared in this binary, so every test's database gets all
//! of them; each test looks only at its own.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use forge::prelude::*;
use forge::schedule::{
    ManualClock, Missed, Overlap, ScheduleError, ScheduleRequest, SchedulerConfig,
};
use forge_test_support::{wait_for, TestDb};
use sqlx::PgPool;
use support::*;
use uuid::Uuid;

async fn record_tick(ctx: &JobContext) -> Result<()> {
    let tick = ctx
        .scheduled_for()
        .await?
        .expect("a scheduled job knows its tick");
    effect(ctx.db(), ctx.job_id(), &tick.to_rfc3339()).await
}

#[forge::cron("* * * * * *")]
#[forge::job]
async fn every_second(ctx: &JobContext) -> Result<()> {
    record_tick(ctx).await
}

#[forge::cron("* * * * * *", missed = "skip")]
#[forge::job]
async fn missed_skip(ctx: &JobContext) -> Result<()> {
    record_tick(ctx).await
}

#[forge::cron("* * * * * *", missed = "latest")]
#[forge::job]
async fn missed_latest(ctx: &JobContext) -> Result<()> {
    record_tick(ctx).await
}

// The other order of the two attributes works too.
#[forge::job]
#[forge::cron("* * * * * *", missed = "backfill", backfill = 3)]
async fn missed_backfill(ctx: &JobContext) -> Result<()> {
    record_tick(ctx).await
}

#[forge::cron("* * * * * *", overlap = "skip")]
#[forge::job]
async fn slow_overlap(ctx: &JobContext) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), "start").await?;
    wait_gate(ctx.db(), ctx.job_id(), "go").await
}

#[forge::cron("30 2 * * *", timezone = "Europe/Berlin")]
#[forge::job]
async fn nightly_in_berlin(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job]
async fn report(_ctx: &JobContext, to: String) -> Result<String> {
    Ok(to)
}

fn not_found<T>(r: Result<T, ScheduleError>) -> bool {
    matches!(r, Err(ScheduleError::NotFound))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn schedule_id(pool: &PgPool, name: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM forge.schedules WHERE declared AND name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The handled ticks of the declared schedule `name`, oldest first, with their jobs.
async fn ticks(pool: &PgPool, name: &str) -> Vec<(DateTime<Utc>, Option<Uuid>)> {
    sqlx::query_as(
        "SELECT t.tick, t.job_id FROM forge.schedule_ticks t
         JOIN forge.schedules s ON s.id = t.schedule_id
         WHERE s.declared AND s.name = $1 ORDER BY t.tick",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_ticks(pool: &PgPool, name: &str, n: usize) -> Vec<(DateTime<Utc>, Option<Uuid>)> {
    wait_for(
        &format!("{n} ticks of {name}"),
        Duration::from_secs(30),
        || async {
            let t = ticks(pool, name).await;
            (t.len() >= n).then_some(t)
        },
    )
    .await
}

async fn jobs_of(pool: &PgPool, function: &str) -> Vec<(Uuid, String)> {
    sqlx::query_as("SELECT id, status FROM forge.jobs WHERE function_name = $1 ORDER BY id")
        .bind(function)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_nodes_run_each_tick_of_a_one_second_schedule_exactly_once() {
    let db = TestDb::new().await;
    let a = connect(&db).await;
    let b = connect(&db).await;
    let wa = a.start_worker(worker_config()).await.unwrap();
    let wb = b.start_worker(worker_config()).await.unwrap();
    let started = ticks(a.pool(), "every_second").await.len();
    // Ten seconds of ticks.
    wait_ticks(a.pool(), "every_second", started + 10).await;
    wa.shutdown().await;
    wb.shutdown().await;

    let t = ticks(a.pool(), "every_second").await;
    assert!(t.len() >= 10, "{} ticks", t.len());
    // No tick was skipped between the first and the last...
    for pair in t.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, chrono::Duration::seconds(1), "{t:?}");
    }
    // ...and each enqueued exactly one job, which ran once and saw its own tick.
    let jobs = jobs_of(a.pool(), "every_second").await;
    assert_eq!(jobs.len(), t.len(), "one job per tick");
    for (tick, job) in &t {
        let job = job.expect("a tick without overlap policy always has a job");
        let status: String = jobs.iter().find(|(id, _)| *id == job).unwrap().1.clone();
        if status == "completed" {
            assert_eq!(effects(a.pool(), job).await, vec![tick.to_rfc3339()]);
        } else {
            // Shut down before it ran: released, not lost.
            assert_eq!(status, "pending", "job {job}");
        }
    }
}

#[tokio::test]
async fn each_missed_tick_policy_does_what_it_says_after_every_node_was_stopped() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let names = ["missed_skip", "missed_latest", "missed_backfill"];
    for name in names {
        wait_ticks(forge.pool(), name, 2).await;
    }
    worker.shutdown().await;
    let last: Vec<DateTime<Utc>> = {
        let mut v = Vec::new();
        for name in names {
            v.push(ticks(forge.pool(), name).await.last().unwrap().0);
        }
        v
    };
    // No node runs for a while: at least five ticks pass unhandled. (Waiting for time to
    // pass, not for an event.)
    tokio::time::sleep(Duration::from_secs(6)).await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let mut gaps = Vec::new();
    for (name, &last) in names.iter().zip(&last) {
        // The restart handles each schedule's due ticks in one transaction: they share its
        // timestamp. The newest of them is the on-time tick; the others are missed ones the
        // policy ran.
        let batch: Vec<DateTime<Utc>> = wait_for(&format!("{name} to run again"), WAIT, || async {
            let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
                "SELECT t.tick, t.created_at FROM forge.schedule_ticks t
                 JOIN forge.schedules s ON s.id = t.schedule_id
                 WHERE s.declared AND s.name = $1 AND t.tick > $2 ORDER BY t.tick",
            )
            .bind(name)
            .bind(last)
            .fetch_all(forge.pool())
            .await
            .unwrap();
            let first = rows.iter().map(|r| r.1).min()?;
            Some(
                rows.into_iter()
                    .filter(|r| r.1 == first)
                    .map(|r| r.0)
                    .collect(),
            )
        })
        .await;
        let resumed = *batch.last().unwrap();
        assert!(
            resumed >= last + chrono::Duration::seconds(6),
            "{name}: {batch:?}"
        );
        // Nothing between the stop and the restart batch ran.
        let between: Vec<_> = ticks(forge.pool(), name)
            .await
            .into_iter()
            .filter(|(t, _)| *t > last && *t < batch[0])
            .collect();
        assert!(between.is_empty(), "{name}: {between:?}");
        gaps.push((resumed, batch[..batch.len() - 1].to_vec()));
    }
    worker.shutdown().await;
    let second = chrono::Duration::seconds(1);
    let (_, skip) = &gaps[0];
    assert!(skip.is_empty(), "skip ran missed ticks {skip:?}");
    let (resumed, latest) = &gaps[1];
    assert_eq!(
        latest,
        &vec![*resumed - second],
        "latest runs the newest missed tick once"
    );
    let (resumed, backfill) = &gaps[2];
    assert_eq!(
        backfill,
        &vec![
            *resumed - second * 3,
            *resumed - second * 2,
            *resumed - second
        ],
        "backfill 3 runs the newest three missed ticks, oldest first"
    );
    // Every handled tick has its job.
    for name in names {
        let t = ticks(forge.pool(), name).await;
        assert_eq!(jobs_of(forge.pool(), name).await.len(), t.len());
    }
}

/// Retention removes the record of a tick once its job is gone, keeps the ticks whose jobs
/// remain, and a pruned tick is not run again.
#[tokio::test]
async fn retention_prunes_the_ticks_whose_jobs_are_gone_and_they_do_not_run_again() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    wait_ticks(forge.pool(), "every_second", 3).await;
    worker.shutdown().await;
    let before = ticks(forge.pool(), "every_second").await;
    let jobs_before = jobs_of(forge.pool(), "every_second").await;
    let completed = jobs_before.iter().filter(|(_, s)| s == "completed").count();
    assert!(completed >= 1, "{jobs_before:?}");

    let config = forge::RetentionConfig {
        job_completed: Some(Duration::ZERO),
        ..forge::RetentionConfig::default()
    };
    let d = forge_runtime::maintenance::retain(forge.store(), &config)
        .await
        .unwrap();
    // Every declared schedule of this binary ran here: this one's completed jobs are among
    // those deleted, and so are their ticks.
    assert!(d.jobs as usize >= completed, "{d:?}");
    assert!(d.schedule_ticks as usize >= completed, "{d:?}");
    let after = ticks(forge.pool(), "every_second").await;
    assert_eq!(
        after.len(),
        before.len() - completed,
        "{before:?} {after:?}"
    );
    let jobs_after = jobs_of(forge.pool(), "every_second").await;
    for (_, job) in &after {
        let job = job.expect("a tick with a job");
        assert!(
            jobs_after.iter().any(|(id, _)| *id == job),
            "tick of a deleted job kept"
        );
    }

    // The schedule's cursor is past the pruned ticks: a new worker runs later ticks only.
    let worker = forge.start_worker(worker_config()).await.unwrap();
    wait_ticks(forge.pool(), "every_second", after.len() + 2).await;
    worker.shutdown().await;
    let last_pruned = before
        .iter()
        .filter(|t| !after.contains(t))
        .map(|t| t.0)
        .max()
        .unwrap();
    let newer = ticks(forge.pool(), "every_second").await;
    for (tick, _) in newer.iter().filter(|t| !after.contains(t)) {
        assert!(
            *tick > last_pruned,
            "tick {tick} ran again after it was pruned"
        );
    }
}

#[tokio::test]
async fn overlap_skip_holds_while_a_slow_run_is_going() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let pool = forge.pool().clone();
    let first = wait_for("the first slow run to start", WAIT, || async {
        let jobs = jobs_of(&pool, "slow_overlap").await;
        let job = jobs.first()?.0;
        effects(&pool, job)
            .await
            .contains(&"start".to_string())
            .then_some(job)
    })
    .await;
    // Three more ticks come while it runs: each is handled, without a job.
    let t = wait_for("three skipped ticks", WAIT, || async {
        let t = ticks(&pool, "slow_overlap").await;
        (t.iter().filter(|(_, job)| job.is_none()).count() >= 3).then_some(t)
    })
    .await;
    assert_eq!(t[0].1, Some(first));
    assert_eq!(
        jobs_of(&pool, "slow_overlap").await.len(),
        1,
        "no second run while the first goes"
    );
    open_gate(&pool, first, "go").await;
    wait_status(&forge, first, JobStatus::Completed).await;
    // The next tick after it finished runs again.
    let second = wait_for("a second run", WAIT, || async {
        let jobs = jobs_of(&pool, "slow_overlap").await;
        jobs.iter().map(|j| j.0).find(|&id| id != first)
    })
    .await;
    open_gate(&pool, second, "go").await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_run_time_schedule_of_one_user_is_invisible_to_another() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let req = ScheduleRequest::new(report::request("alice@example.com".into()), "0 9 * * MON")
        .timezone("Europe/Berlin")
        .name("weekly report")
        .missed(Missed::Latest)
        .overlap(Overlap::Skip)
        .owner("alice");
    let s = forge.create_schedule(req).await.unwrap();
    assert_eq!(s.owner.as_deref(), Some("alice"));
    assert_eq!(s.function, "report");
    assert_eq!(s.next_ticks.len(), forge::schedule::NEXT_TICKS_LISTED);
    assert!(s.next_ticks[0] > Utc::now());

    assert_eq!(
        forge.schedules(Some("alice")).await.unwrap(),
        vec![s.clone()]
    );
    assert!(forge.schedules(Some("bob")).await.unwrap().is_empty());
    assert!(not_found(forge.schedule(s.id, Some("bob")).await));
    assert!(not_found(forge.pause_schedule(s.id, Some("bob")).await));
    assert!(not_found(forge.resume_schedule(s.id, Some("bob")).await));
    assert!(not_found(forge.delete_schedule(s.id, Some("bob")).await));
    assert!(!forge.schedule(s.id, Some("alice")).await.unwrap().paused);

    let paused = forge.pause_schedule(s.id, Some("alice")).await.unwrap();
    assert!(paused.paused && paused.next_ticks.is_empty());
    let resumed = forge.resume_schedule(s.id, Some("alice")).await.unwrap();
    assert!(!resumed.paused && resumed.next_ticks == s.next_ticks);
    // An operator (no owner) sees every schedule, the declared ones too.
    forge::schedule::sync_declared(forge.store(), Utc::now())
        .await
        .unwrap();
    let all = forge.schedules(None).await.unwrap();
    assert!(all.iter().any(|x| x.id == s.id) && all.iter().any(|x| x.declared));
    forge.delete_schedule(s.id, Some("alice")).await.unwrap();
    assert!(forge.schedules(Some("alice")).await.unwrap().is_empty());

    // Bad input names the field.
    let bad = |r: Result<_, ScheduleError>| match r {
        Err(ScheduleError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let req = || ScheduleRequest::new(report::request("x".into()), "0 9 * * *");
    assert_eq!(
        bad(forge
            .create_schedule(ScheduleRequest::new(report::request("x".into()), "nope"))
            .await),
        "cron"
    );
    assert_eq!(
        bad(forge.create_schedule(req().timezone("Nowhere/City")).await),
        "timezone"
    );
    assert_eq!(
        bad(forge
            .create_schedule(req().missed(Missed::Backfill(0)))
            .await),
        "backfill"
    );
    let wrong_args = forge
        .create_schedule(ScheduleRequest::new(
            forge::JobRequest::<serde_json::Value>::new("report", serde_json::json!({"to": 1})),
            "* * * * *",
        ))
        .await;
    assert!(
        matches!(wrong_args, Err(ScheduleError::Job(_))),
        "{wrong_args:?}"
    );
}

/// Sets the injected clock to each time from `from` to `to`, `step` apart, and waits until
/// the scheduler has handled what was due at each.
async fn step_clock(pool: &PgPool, clock: &ManualClock, id: Uuid, from: &str, to: &str, step: i64) {
    let (mut now, end) = (utc(from), utc(to));
    while now <= end {
        clock.set(now);
        wait_for(
            &format!("the scheduler to catch up with {now}"),
            WAIT,
            || async {
                let next: DateTime<Utc> =
                    sqlx::query_scalar("SELECT next_tick FROM forge.schedules WHERE id = $1")
                        .bind(id)
                        .fetch_one(pool)
                        .await
                        .unwrap();
                (next > now).then_some(())
            },
        )
        .await;
        now += chrono::Duration::minutes(step);
    }
}

#[tokio::test]
async fn daylight_saving_transitions_in_berlin_under_an_injected_clock() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let clock = Arc::new(ManualClock::new(utc("2026-03-28T12:00:00Z")));
    let scheduler = forge
        .start_scheduler(SchedulerConfig {
            poll_interval: Duration::from_millis(10),
            clock: clock.clone(),
            ..SchedulerConfig::default()
        })
        .await
        .unwrap();
    let pool = forge.pool().clone();
    let id = schedule_id(&pool, "nightly_in_berlin").await;

    // Spring forward, 2026-03-29: 02:30 does not exist; it runs once, at 03:00 CEST.
    step_clock(
        &pool,
        &clock,
        id,
        "2026-03-28T12:00:00Z",
        "2026-03-30T12:00:00Z",
        30,
    )
    .await;
    // Fall back, 2026-10-25: 02:30 happens twice; it runs once, at the first (CEST).
    step_clock(
        &pool,
        &clock,
        id,
        "2026-10-24T12:00:00Z",
        "2026-10-26T12:00:00Z",
        30,
    )
    .await;
    scheduler.shutdown().await;

    let got: Vec<DateTime<Utc>> = ticks(&pool, "nightly_in_berlin")
        .await
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(
        got,
        vec![
            utc("2026-03-29T01:00:00Z"),
            utc("2026-03-30T00:30:00Z"),
            utc("2026-10-25T00:30:00Z"),
            utc("2026-10-26T01:30:00Z"),
        ]
    );
}
