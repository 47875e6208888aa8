//! The invariants of issue 14, checked after a scenario: from the database (statuses, leases),
//! the nodes' effects file (attempts actually run, and when), and what the SSE clients saw.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use sqlx::PgPool;

use super::follower::{Follower, JOB_TERMINAL, WORKFLOW_TERMINAL};
use super::HarnessError;

/// What one scenario measured. [`Report::violations`] says which invariants it broke.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    /// Jobs and workflows started before and during the fault (recovery probes excluded).
    pub started: usize,
    /// Of those, how many reached a final status.
    pub terminal: usize,
    /// Not final at the end; with their statuses.
    pub stuck: usize,
    pub stuck_statuses: BTreeMap<String, usize>,
    /// Jobs whose handler started more than once (per the effects file).
    pub rerun: usize,
    /// Jobs two of whose attempts ran at the same time: an attempt still did a step (or ended)
    /// after a later one had started.
    pub overlapping: usize,
    /// (job, attempt) pairs whose handler started twice.
    pub duplicate_attempts: usize,
    /// SSE clients that missed the final status of something they followed, and how many
    /// such misses there were in all.
    pub clients_missed: usize,
    pub missed: usize,
    /// Times a client saw progress go down within one attempt.
    pub progress_backwards: usize,
    /// From the end of the fault to the first job started after it, through the node the
    /// fault hit, reaching `completed`; `None` if none did.
    pub recovery: Option<Duration>,
    /// Calls sending the workflows their event that failed and were retried, by error text.
    pub failed_calls: BTreeMap<String, usize>,
    /// Job starts made through the faulted node while the fault lasted, one after another:
    /// how many, how they were answered (`HTTP 200`, `HTTP 503`, `network error`), and the
    /// longest any took to be answered.
    pub calls_during_fault: usize,
    pub answers_during_fault: BTreeMap<String, usize>,
    pub slowest_answer_during_fault: Duration,
}

impl Report {
    /// The invariants that do not hold, in words; empty when all hold. Re-runs are not a
    /// violation here: their bound depends on the fault (see each scenario).
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.stuck > 0 {
            v.push(format!(
                "{} of {} not final: {:?}",
                self.stuck, self.started, self.stuck_statuses
            ));
        }
        if self.overlapping > 0 {
            v.push(format!(
                "{} jobs ran two attempts at the same time",
                self.overlapping
            ));
        }
        if self.duplicate_attempts > 0 {
            v.push(format!(
                "{} attempts started twice",
                self.duplicate_attempts
            ));
        }
        if self.missed > 0 {
            v.push(format!(
                "{} clients missed {} final statuses",
                self.clients_missed, self.missed
            ));
        }
        if self.progress_backwards > 0 {
            v.push(format!(
                "progress went backwards {} times",
                self.progress_backwards
            ));
        }
        if self.recovery.is_none() {
            v.push("no job completed after the fault".into());
        }
        v
    }

    /// The table's header, matching [`Report`]'s `Display`.
    pub fn header() -> String {
        format!(
            "{:<28} {:>7} {:>8} {:>6} {:>6} {:>7} {:>7} {:>9} {:>12}",
            "scenario",
            "started",
            "terminal",
            "stuck",
            "re-run",
            "overlap",
            "missed",
            "recovery",
            "slowest call"
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recovery = self
            .recovery
            .map_or("none".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        write!(
            f,
            "{:<28} {:>7} {:>8} {:>6} {:>6} {:>7} {:>7} {:>9} {:>12}",
            self.scenario,
            self.started,
            self.terminal,
            self.stuck,
            self.rerun,
            self.overlapping,
            self.clients_missed,
            recovery,
            format!("{:.1} s", self.slowest_answer_during_fault.as_secs_f64())
        )
    }
}

/// One line of the effects file: `start|step|end job attempt node unix_ms`.
struct Effect {
    start: bool,
    job: String,
    attempt: u32,
    ms: u64,
}

fn read_effects(text: &str) -> Vec<Effect> {
    text.lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            let kind = p.next()?;
            let job = p.next()?.to_string();
            let attempt = p.next()?.parse().ok()?;
            let _node = p.next()?;
            let ms = p.next()?.parse().ok()?;
            Some(Effect {
                start: kind == "start",
                job,
                attempt,
                ms,
            })
        })
        .collect()
}

/// Counts, from the effects file's `text`, the jobs of `jobs` that ran again, that ran two
/// attempts at once, and the attempts that started twice.
fn count_effects(report: &mut Report, text: &str, jobs: &[String]) {
    let ours: std::collections::HashSet<&String> = jobs.iter().collect();
    let mut per_job: BTreeMap<String, Vec<Effect>> = BTreeMap::new();
    for e in read_effects(text)
        .into_iter()
        .filter(|e| ours.contains(&e.job))
    {
        per_job.entry(e.job.clone()).or_default().push(e);
    }
    for effects in per_job.values() {
        let starts: Vec<&Effect> = effects.iter().filter(|e| e.start).collect();
        let mut attempts: Vec<u32> = starts.iter().map(|e| e.attempt).collect();
        attempts.sort_unstable();
        let all = attempts.len();
        attempts.dedup();
        report.duplicate_attempts += all - attempts.len();
        if starts.len() > 1 {
            report.rerun += 1;
        }
        // An attempt that worked after a later one started: both ran at once.
        let overlaps = effects.iter().filter(|e| !e.start).any(|work| {
            starts
                .iter()
                .any(|s| s.attempt > work.attempt && s.ms < work.ms)
        });
        if overlaps {
            report.overlapping += 1;
        }
    }
}

/// Fills in the invariants of `report` for `jobs` and `workflows` (ids as text).
pub async fn check(
    report: &mut Report,
    db: &PgPool,
    effects_file: &std::path::Path,
    jobs: &[String],
    workflows: &[String],
    followers: &[Follower],
) -> Result<(), HarnessError> {
    report.started = jobs.len() + workflows.len();
    let job_rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, status FROM forge.jobs WHERE id::text = ANY($1)")
            .bind(jobs)
            .fetch_all(db)
            .await?;
    let wf_rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, status FROM forge.workflows WHERE id::text = ANY($1)")
            .bind(workflows)
            .fetch_all(db)
            .await?;
    let mut terminal_in_db = std::collections::HashSet::new();
    for (id, status) in &job_rows {
        if JOB_TERMINAL.contains(&status.as_str()) {
            terminal_in_db.insert(id.clone());
        } else {
            *report
                .stuck_statuses
                .entry(format!("job {status}"))
                .or_default() += 1;
        }
    }
    for (id, status) in &wf_rows {
        if WORKFLOW_TERMINAL.contains(&status.as_str()) {
            terminal_in_db.insert(id.clone());
        } else {
            *report
                .stuck_statuses
                .entry(format!("workflow {status}"))
                .or_default() += 1;
        }
    }
    let missing = report.started - job_rows.len() - wf_rows.len();
    if missing > 0 {
        report
            .stuck_statuses
            .insert("not in the database".into(), missing);
    }
    report.terminal = terminal_in_db.len();
    report.stuck = report.started - report.terminal;

    let text = std::fs::read_to_string(effects_file).unwrap_or_default();
    count_effects(report, &text, jobs);

    for f in followers {
        let mut missed = 0;
        for (id, followed) in f.followed() {
            if terminal_in_db.contains(&id) && !followed.saw_terminal() {
                missed += 1;
            }
            report.progress_backwards += followed.progress_backwards();
        }
        if missed > 0 {
            report.clients_missed += 1;
            report.missed += missed;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_tell_reruns_overlaps_and_twice_started_attempts() {
        let text = "\
start a 1 node1 1000 quiet
step a 1 node1 1250 quiet
start a 2 node0 3000 quiet
step a 1 node1 3100 quiet
end a 2 node0 5000 quiet
start b 1 node1 1000 progress
start b 2 node0 4000 progress
end b 2 node0 6000 progress
start c 1 node0 1000 progress
start c 1 node2 1500 progress
end c 1 node2 2000 progress
start d 1 node0 1000 progress
end d 1 node0 2000 progress
start e 1 node0 1000 progress
start e 2 node0 1000 progress
";
        let mut r = Report::default();
        let jobs: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        count_effects(&mut r, text, &jobs);
        // a: attempt 1 still worked after attempt 2 started; b: ran again after attempt 1
        // stopped; c: attempt 1 started on two nodes; e is not one of the jobs.
        assert_eq!((r.rerun, r.overlapping, r.duplicate_attempts), (3, 1, 1));
    }
}
