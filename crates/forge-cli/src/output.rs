//! What the commands print: aligned tables and key/value blocks for people, the runtime's own
//! serde shapes for `--json`.

use std::fmt::Display;
use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::error::CliError;

/// Writes `text` and a newline to stdout. A closed pipe (`forge jobs ls | head -1`) ends the
/// command quietly instead of panicking as `println!` would.
pub(crate) fn print(text: impl Display) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(CliError::from_stdout)
}

/// A note for the person at the terminal (no jobs, the next page) on stderr, so stdout holds
/// only the table. A closed stderr loses the note, nothing else.
pub(crate) fn note(text: impl Display) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// `value` as pretty JSON: one document, for `ls` and `show`.
pub(crate) fn print_json(value: &impl Serialize) -> Result<(), CliError> {
    print(to_json(value, true)?)
}

/// `value` as one line of JSON: for the NDJSON of `watch`.
pub(crate) fn print_json_line(value: &impl Serialize) -> Result<(), CliError> {
    print(to_json(value, false)?)
}

fn to_json(value: &impl Serialize, pretty: bool) -> Result<String, CliError> {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    text.map_err(|e| CliError::fail(format!("cannot write JSON: {e}")))
}

/// Columns separated by two spaces, each as wide as its widest cell; the last is not padded.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<String>) {
        self.rows.push(row.iter().map(|c| cell(c)).collect());
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                cells.join("  ").trim_end().to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A value on one line: a message or error with newlines or tabs would break the columns.
fn cell(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `key  value` lines, the values aligned.
pub(crate) fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A titled section: the title, then `body` indented by two spaces.
pub(crate) fn section(title: &str, body: &str) -> String {
    let indented: Vec<String> = body.lines().map(|l| format!("  {l}")).collect();
    format!("{title}\n{}", indented.join("\n"))
}

/// Milliseconds, because a workflow's steps often start and end within the same second.
pub(crate) fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

pub(crate) fn or_dash(text: Option<&str>) -> String {
    text.unwrap_or("-").to_string()
}

/// `42%`, `42.5%`, or `-` before any report.
pub(crate) fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{p}%"))
}

pub(crate) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns_and_keeps_each_row_on_one_line() {
        let mut t = Table::new(&["ID", "STATUS", "MESSAGE"]);
        t.push(vec!["1".into(), "running".into(), "two\nlines".into()]);
        t.push(vec!["22".into(), "ok".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "ID  STATUS   MESSAGE\n1   running  two lines\n22  ok       -"
        );
    }

    #[test]
    fn percents_and_times_read_as_people_write_them() {
        assert_eq!(percent(Some(42.0)), "42%");
        assert_eq!(percent(Some(42.5)), "42.5%");
        assert_eq!(percent(None), "-");
        let t = DateTime::parse_from_rfc3339("2025-01-31T09:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(time(Some(t)), "2025-01-31T09:00:00.500Z");
        assert_eq!(time(None), "-");
    }
}
