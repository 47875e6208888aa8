//! What PostgreSQL can store, checked before a user's value enters a write.
//!
//! A value PostgreSQL refuses fails the whole statement it is in, and a worker's writes are
//! batched: one bad value would otherwise stall every job written beside it. So every user
//! value is checked here first (see `docs/operations.md`, "What PostgreSQL cannot store"):
//! values the user owns (arguments, outputs, progress messages, event payloads) are refused
//! with the JSON path of the problem, since changing them would alter the user's data
//! silently; error messages, which are diagnostics, are made storable instead
//! ([`error_text`]).

use std::fmt;

use serde_json::Value;

use crate::error::ArgsError;

/// Largest JSON value stored as a job's or workflow's arguments, a job's or workflow's
/// output, a step's output or an event's payload: its serialized size in bytes.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting of arrays and objects in a stored JSON value. Reading a value back goes
/// through `serde_json`, which stops at 128 levels, and PostgreSQL parses JSON recursively.
pub const MAX_VALUE_DEPTH: usize = 100;

/// Longest error message stored for a job, a step or a workflow, in characters; longer ones
/// are cut and end with [`TRUNCATED`].
pub const MAX_ERROR_CHARS: usize = 4_000;

/// What ends an error message that was cut.
pub const TRUNCATED: &str = "… (truncated)";

/// Longest progress message as it is published (JSON-escaped, in bytes): together with the
/// character limit it keeps any notification, which carries several updates, below
/// PostgreSQL's 8,000-byte limit.
pub const MAX_MESSAGE_JSON_BYTES: usize = 2_000;

/// Why a value cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    /// PostgreSQL refuses `\u0000` in `text` and in `jsonb` strings and keys.
    #[error("contains a NUL character at {0}, which PostgreSQL cannot store")]
    Nul(Path),
    #[error("is {size} bytes as JSON, more than the limit of {MAX_VALUE_BYTES}")]
    TooLarge { size: usize },
    #[error("is nested deeper than {MAX_VALUE_DEPTH} levels at {0}")]
    TooDeep(Path),
}

/// A JSON path (`$.rows[3].name`) into a checked value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(String);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Path {
    /// The first member of the path below `$` (the argument it is in), if any.
    pub fn top_field(&self) -> Option<&str> {
        let rest = self.0.strip_prefix("$.")?;
        Some(rest.split(['.', '[']).next().unwrap_or(rest))
    }
}

/// Longest key shown in a [`Path`], in characters.
const MAX_PATH_KEY_CHARS: usize = 40;

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn path(steps: &[Step<'_>]) -> Path {
    let mut p = String::from("$");
    for s in steps {
        match s {
            Step::Key(k) => {
                p.push('.');
                // The path names a key that cannot be stored: show it escaped, and a long
                // one cut, so that the message stays short.
                p.extend(
                    k.chars()
                        .take(MAX_PATH_KEY_CHARS)
                        .flat_map(char::escape_debug),
                );
                if k.chars().nth(MAX_PATH_KEY_CHARS).is_some() {
                    p.push('…');
                }
            }
            Step::Index(i) => {
                p.push('[');
                p.push_str(&i.to_string());
                p.push(']');
            }
        }
    }
    Path(p)
}

/// Checks that PostgreSQL stores `v` as `jsonb` unchanged and that it stays within
/// [`MAX_VALUE_BYTES`] and [`MAX_VALUE_DEPTH`]. Iterative, so that no value can exhaust the
/// stack here.
pub fn check_json(v: &Value) -> Result<(), Unstorable> {
    // Each frame: the steps down to it, and its value.
    let mut stack: Vec<(usize, Option<Step<'_>>, &Value)> = vec![(0, None, v)];
    let mut steps: Vec<Step<'_>> = Vec::new();
    let mut size = 0usize;
    while let Some((depth, step, value)) = stack.pop() {
        steps.truncate(depth.saturating_sub(1));
        if let Some(s) = step {
            steps.push(s);
        }
        match value {
            Value::Null => size += 4,
            Value::Bool(_) => size += 5,
            Value::Number(n) => size += n.to_string().len(),
            Value::String(s) => {
                if s.contains('\0') {
                    return Err(Unstorable::Nul(path(&steps)));
                }
                size += json_string_len(s);
            }
            Value::Array(items) => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(Unstorable::TooDeep(path(&steps)));
                }
                size += 2 + items.len();
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push((depth + 1, Some(Step::Index(i)), item));
                }
            }
            Value::Object(map) => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(Unstorable::TooDeep(path(&steps)));
                }
                size += 2 + map.len();
                let entries: Vec<_> = map.iter().collect();
                for (k, item) in entries.into_iter().rev() {
                    if k.contains('\0') {
                        steps.push(Step::Key(k));
                        return Err(Unstorable::Nul(path(&steps)));
                    }
                    size += json_string_len(k) + 1;
                    stack.push((depth + 1, Some(Step::Key(k)), item));
                }
            }
        }
        if size > MAX_VALUE_BYTES {
            return Err(Unstorable::TooLarge { size });
        }
    }
    Ok(())
}

/// The length of `s` as a JSON string, quotes and escapes included.
fn json_string_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// Checks the arguments of a job or workflow about to be stored: refused with the argument
/// named (400 `invalid_args` over RPC) and the JSON path in the message.
pub fn check_args(args: &Value) -> Result<(), ArgsError> {
    check_json(args).map_err(|e| {
        let field = match &e {
            Unstorable::Nul(p) | Unstorable::TooDeep(p) => p.top_field().unwrap_or("."),
            Unstorable::TooLarge { .. } => ".",
        };
        ArgsError {
            field: field.to_string(),
            message: e.to_string(),
        }
    })
}

/// Checks a text a user owns (a progress message): PostgreSQL refuses NUL in `text`.
pub fn check_text(s: &str) -> Result<(), Unstorable> {
    match s.find('\0') {
        Some(at) => Err(Unstorable::Nul(Path(format!(
            "character {}",
            s[..at].chars().count()
        )))),
        None => Ok(()),
    }
}

/// Cuts a progress message (already limited in characters) so that its JSON form stays
/// within [`MAX_MESSAGE_JSON_BYTES`], at a character boundary.
pub fn cut_message(message: &mut String) {
    let mut len = 2;
    for (at, c) in message.char_indices() {
        len += json_string_len(c.encode_utf8(&mut [0; 4])) - 2;
        if len > MAX_MESSAGE_JSON_BYTES {
            message.truncate(at);
            return;
        }
    }
}

/// An error message as it is stored: NUL (which PostgreSQL cannot store) becomes U+FFFD, and
/// past [`MAX_ERROR_CHARS`] characters it is cut, ending with [`TRUNCATED`].
pub fn error_text(message: String) -> String {
    let long = message
        .char_indices()
        .nth(MAX_ERROR_CHARS)
        .map(|(at, _)| at);
    if long.is_none() && !message.contains('\0') {
        return message;
    }
    let mut out: String = match long {
        Some(at) => message[..at].replace('\0', "\u{FFFD}"),
        None => message.replace('\0', "\u{FFFD}"),
    };
    if long.is_some() {
        out.push_str(TRUNCATED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_found_with_its_path() {
        let v = json!({"rows": [{}, {}, {}, {"name": "a\u{0}b"}]});
        assert_eq!(
            check_json(&v).unwrap_err().to_string(),
            "contains a NUL character at $.rows[3].name, which PostgreSQL cannot store"
        );
        let k = json!({"ok": 1, "a": {"k\u{0}": 1}});
        let Unstorable::Nul(p) = check_json(&k).unwrap_err() else {
            panic!()
        };
        assert_eq!(p.to_string(), "$.a.k\\0");
        assert_eq!(p.top_field(), Some("a"));
        assert!(check_json(&json!({"a": "\u{1}\u{1f}\u{fffd}"})).is_ok());
    }

    #[test]
    fn limits() {
        let mut deep = json!(1);
        for _ in 0..MAX_VALUE_DEPTH {
            deep = json!([deep]);
        }
        assert!(check_json(&deep).is_ok());
        assert!(matches!(
            check_json(&json!([deep])),
            Err(Unstorable::TooDeep(_))
        ));
        let big = json!({ "s": "x".repeat(MAX_VALUE_BYTES) });
        assert!(matches!(check_json(&big), Err(Unstorable::TooLarge { .. })));
        let v = json!({"a": [1, "b\"\u{1}", null, true, {"c": 2.5}]});
        assert_eq!(
            json_string_len("b\"\u{1}"),
            serde_json::to_string("b\"\u{1}").unwrap().len()
        );
        assert!(check_json(&v).is_ok());
    }

    #[test]
    fn errors_are_made_storable() {
        assert_eq!(error_text("a\0b".into()), "a\u{FFFD}b");
        let long = error_text("é".repeat(MAX_ERROR_CHARS + 5));
        assert!(long.ends_with(TRUNCATED));
        assert_eq!(
            long.chars().count(),
            MAX_ERROR_CHARS + TRUNCATED.chars().count()
        );
        let mut m = "\u{1}".repeat(500);
        cut_message(&mut m);
        assert!(serde_json::to_string(&m).unwrap().len() <= MAX_MESSAGE_JSON_BYTES);
    }
}
