//! Cron expressions in a time zone, and which ticks a scheduler runs.
//!
//! Parsing and the daylight-saving rules are `croner`'s: a fixed-time tick (`30 2 * * *`) that
//! falls in a skipped hour runs once, at the first instant after the gap; one in a repeated
//! hour runs once, at its first occurrence; an interval pattern (`*/15 * * * *`) runs on
//! both passes of a repeated hour, because that much real time has passed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use super::{Missed, ScheduleError};

/// A parsed cron expression and the time zone its wall-clock times are read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    /// Parses a five-field (`min hour dom month dow`) or six-field (seconds first) expression
    /// and an IANA time zone name (`Europe/Berlin`, `UTC`).
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::Invalid {
                field: "cron",
                message: format!("`{expr}` is not a cron expression: {e}"),
            })?;
        let tz: Tz = timezone.parse().map_err(|_| ScheduleError::Invalid {
            field: "timezone",
            message: format!(
                "`{timezone}` is not an IANA time zone name (such as `Europe/Berlin`)"
            ),
        })?;
        let parsed = Self { cron, tz };
        if parsed.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::Invalid {
                field: "cron",
                message: format!("`{expr}` never matches a future time"),
            });
        }
        Ok(parsed)
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest tick at or before `t`.
    fn latest_at_or_before(&self, t: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), inclusive)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The next `n` ticks from `from` on (`from` itself included when it is a tick).
    pub fn upcoming(&self, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = from - chrono::Duration::seconds(1);
        while out.len() < n {
            match self.next_after(at) {
                Some(t) => {
                    out.push(t);
                    at = t;
                }
                None => break,
            }
        }
        out
    }
}

/// What a scheduler does with a schedule whose ticks from `cursor` to `now` are due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The ticks to run, oldest first.
    pub(crate) run: Vec<DateTime<Utc>>,
    /// The new cursor: the first tick after `now`.
    pub(crate) next: Option<DateTime<Utc>>,
}

/// Picks the due ticks to run. The latest due tick is on time when it is at most `grace` old;
/// every other due tick was missed, and `missed` says how many of the newest missed ones run.
/// Ticks are found walking back from `now`, so an outage of any length costs only as many
/// steps as ticks that run.
pub(crate) fn plan(
    cron: &CronSchedule,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
    missed: Missed,
) -> Plan {
    let keep_missed = match missed {
        Missed::Skip => 0,
        Missed::Latest => 1,
        Missed::Backfill(n) => n as usize,
    };
    let mut due = Vec::new();
    let mut at = now;
    let mut inclusive = true;
    while due.len() < keep_missed + 1 {
        match cron.latest_at_or_before(at, inclusive) {
            Some(t) if t >= cursor => {
                due.push(t);
                at = t;
                inclusive = false;
            }
            _ => break,
        }
    }
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let on_time = due.first().is_some_and(|&t| now - t <= grace);
    let mut run: Vec<_> = if on_time {
        due
    } else {
        due.into_iter().take(keep_missed).collect()
    };
    run.reverse();
    Plan {
        run,
        next: cron.next_after(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn seconds_are_optional() {
        let five = CronSchedule::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            five.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:05:00Z"))
        );
        let six = CronSchedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            six.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:10Z"))
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = CronSchedule::parse("not cron", "UTC").unwrap_err();
        assert!(
            matches!(e, ScheduleError::Invalid { field: "cron", .. }),
            "{e}"
        );
        let e = CronSchedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(
            matches!(
                e,
                ScheduleError::Invalid {
                    field: "timezone",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn weekdays_in_berlin() {
        let s = CronSchedule::parse("0 9 * * MON-FRI", "Europe/Berlin").unwrap();
        // Friday 2026-01-02 10:00 Berlin: the next is Monday 09:00 CET = 08:00 UTC.
        let t = chrono_tz::Europe::Berlin
            .with_ymd_and_hms(2026, 1, 2, 10, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(s.next_after(t), Some(utc("2026-01-05T08:00:00Z")));
    }

    #[test]
    fn plan_applies_the_missed_policy() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let cursor = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-01T00:00:10.500Z");
        let g = Duration::from_secs(2);
        let p = plan(&s, cursor, now, g, Missed::Skip);
        assert_eq!(p.run, vec![utc("2026-01-01T00:00:10Z")]);
        assert_eq!(p.next, Some(utc("2026-01-01T00:00:11Z")));
        let p = plan(&s, cursor, now, g, Missed::Latest);
        assert_eq!(
            p.run,
            vec![utc("2026-01-01T00:00:09Z"), utc("2026-01-01T00:00:10Z")]
        );
        let p = plan(&s, cursor, now, g, Missed::Backfill(3));
        assert_eq!(p.run.len(), 4);
        assert_eq!(p.run[0], utc("2026-01-01T00:00:07Z"));
        // Backfill never reaches before the cursor.
        let p = plan(
            &s,
            utc("2026-01-01T00:00:09Z"),
            now,
            g,
            Missed::Backfill(100),
        );
        assert_eq!(
            p.run,
            vec![utc("2026-01-01T00:00:09Z"), utc("2026-01-01T00:00:10Z")]
        );
        // Nothing on time: only the missed policy's ticks run.
        let late = utc("2026-01-01T00:01:00.500Z");
        let p = plan(
            &s,
            late - chrono::Duration::seconds(30),
            late,
            Duration::ZERO,
            Missed::Latest,
        );
        assert_eq!(p.run, vec![utc("2026-01-01T00:01:00Z")]);
        let p = plan(
            &s,
            late - chrono::Duration::seconds(30),
            late,
            Duration::ZERO,
            Missed::Skip,
        );
        assert!(p.run.is_empty());
    }

    /// Steps a simulated scheduler through `from..to` every `step` and returns the ticks it
    /// ran, as the scheduler loop would (each run starting from the cursor the last one left).
    fn simulate(s: &CronSchedule, from: &str, to: &str, step: i64) -> Vec<DateTime<Utc>> {
        let (mut now, end) = (utc(from), utc(to));
        let mut cursor = s.next_after(now).unwrap();
        let mut ran = Vec::new();
        while now <= end {
            if cursor <= now {
                let p = plan(s, cursor, now, Duration::from_secs(3600), Missed::Skip);
                ran.extend(p.run);
                cursor = p.next.unwrap();
            }
            now += chrono::Duration::seconds(step);
        }
        ran
    }

    #[test]
    fn a_tick_in_the_skipped_hour_runs_once() {
        // 2026-03-29, Berlin: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day and
        // runs at the first instant after the gap, 03:00 CEST.
        let s = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let ran = simulate(&s, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z", 60);
        assert_eq!(
            ran,
            vec![utc("2026-03-29T01:00:00Z"), utc("2026-03-30T00:30:00Z")]
        );
    }

    #[test]
    fn a_tick_in_the_repeated_hour_runs_once() {
        // 2026-10-25, Berlin: 03:00 CEST becomes 02:00 CET; 02:30 happens twice and runs at
        // the first, 02:30 CEST.
        let s = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let ran = simulate(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z", 60);
        assert_eq!(
            ran,
            vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
    }

    #[test]
    fn an_interval_keeps_real_time_across_the_repeated_hour() {
        let s = CronSchedule::parse("*/30 * * * *", "Europe/Berlin").unwrap();
        let ran = simulate(&s, "2026-10-24T23:50:00Z", "2026-10-25T02:10:00Z", 60);
        let want: Vec<_> = (0..5)
            .map(|i| utc("2026-10-25T00:00:00Z") + chrono::Duration::minutes(30 * i))
            .collect();
        assert_eq!(ran, want);
    }
}
