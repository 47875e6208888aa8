//! Doc comments of the generated TypeScript: the notes a value's JSON Schema calls for, and
//! JSDoc blocks wrapped to width.

use serde_json::Value;

/// Notes added to the doc comment of a field (or a type) whose values need care in JavaScript.
pub(crate) const INT64_NOTE: &str = "64-bit integer: exact in JavaScript up to 2^53 only; \
    beyond, the client throws `precision_loss` (use a string for such ids).";
pub(crate) const DATE_TIME_NOTE: &str = "RFC 3339 timestamp (`2024-05-01T12:00:00Z`).";
pub(crate) const LOCAL_DATE_TIME_NOTE: &str = "ISO 8601 date and time without offset \
    (`2024-05-01T12:00:00`).";
pub(crate) const DATE_NOTE: &str = "ISO 8601 date, `YYYY-MM-DD`.";
pub(crate) const TIME_NOTE: &str = "ISO 8601 time of day, `HH:MM:SS[.fff]`.";

const INT64_FORMATS: &[&str] = &["int64", "uint64", "int", "uint", "int128", "uint128"];

/// The notes that apply to values of `schema`. Nested object literals carry their own notes on
/// their fields, so the search does not enter them.
pub(crate) fn notes(schema: &Value) -> Vec<&'static str> {
    fn walk(schema: &Value, top: bool, out: &mut Vec<&'static str>) {
        let Value::Object(map) = schema else { return };
        if !top && map.contains_key("properties") {
            return;
        }
        if let Some(Value::String(format)) = map.get("format") {
            let note = match format.as_str() {
                f if INT64_FORMATS.contains(&f) => Some(INT64_NOTE),
                "date-time" => Some(DATE_TIME_NOTE),
                "partial-date-time" => Some(LOCAL_DATE_TIME_NOTE),
                "date" => Some(DATE_NOTE),
                "time" | "partial-time" => Some(TIME_NOTE),
                _ => None,
            };
            if let Some(note) = note {
                if !out.contains(&note) {
                    out.push(note);
                }
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = map.get(key) {
                walk(sub, false, out);
            }
        }
        for key in ["prefixItems", "anyOf", "oneOf", "allOf"] {
            if let Some(Value::Array(subs)) = map.get(key) {
                subs.iter().for_each(|s| walk(s, false, out));
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, true, &mut out);
    out
}

/// A `/** ... */` block at `indent`, or nothing when there is nothing to say.
pub(crate) fn doc_block(lines: &[String], indent: &str) -> String {
    let lines: Vec<String> = lines
        .iter()
        .flat_map(|l| {
            // `"".lines()` is empty, but a blank line separates paragraphs.
            let split: Vec<String> = l.lines().map(|s| s.trim_end().to_string()).collect();
            if split.is_empty() {
                vec![String::new()]
            } else {
                split
            }
        })
        .collect();
    // Leading and trailing blank lines say nothing.
    let start = lines.iter().position(|l| !l.trim().is_empty());
    let end = lines.iter().rposition(|l| !l.trim().is_empty());
    let (Some(start), Some(end)) = (start, end) else {
        return String::new();
    };
    let width = 100usize.saturating_sub(indent.len() + 3).max(40);
    let lines: Vec<String> = lines[start..=end]
        .iter()
        .flat_map(|l| wrap_words(&l.replace("*/", "*\\/"), width))
        .collect();
    if lines.len() == 1 {
        return format!("{indent}/** {} */\n", lines[0]);
    }
    let mut out = format!("{indent}/**\n");
    for l in lines {
        if l.is_empty() {
            out.push_str(&format!("{indent} *\n"));
        } else {
            out.push_str(&format!("{indent} * {l}\n"));
        }
    }
    out.push_str(&format!("{indent} */\n"));
    out
}

/// `line` broken at spaces into lines of at most `width` characters (longer words stay whole).
fn wrap_words(line: &str, width: usize) -> Vec<String> {
    if line.chars().count() <= width {
        return vec![line.to_string()];
    }
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in line.split(' ') {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    out.push(current);
    out
}

/// The `title` and `description` of a schema, and its notes, as doc lines.
pub(crate) fn schema_doc(schema: &Value, with_notes: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if let Value::Object(map) = schema {
        for key in ["title", "description"] {
            if let Some(Value::String(s)) = map.get(key) {
                if !lines.is_empty() {
                    lines.push(String::new());
                }
                lines.push(s.clone());
            }
        }
    }
    if with_notes {
        let notes = notes(schema);
        if !notes.is_empty() && !lines.is_empty() {
            lines.push(String::new());
        }
        lines.extend(notes.into_iter().map(String::from));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn notes_do_not_enter_nested_objects() {
        let nested = json!({"type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer", "format": "int64"}}}});
        assert!(notes(&nested).is_empty());
        let list =
            json!({"type": "array", "items": {"type": ["integer", "null"], "format": "uint64"}});
        assert_eq!(notes(&list), vec![INT64_NOTE]);
    }

    #[test]
    fn docs_escape_the_comment_end() {
        assert_eq!(doc_block(&["a */ b".into()], ""), "/** a *\\/ b */\n");
        assert_eq!(doc_block(&["".into()], ""), "");
        assert_eq!(
            doc_block(&["a".into(), "".into(), "b".into()], ""),
            "/**\n * a\n *\n * b\n */\n"
        );
        let long = "word ".repeat(40);
        let block = doc_block(&[long], "  ");
        assert!(block.lines().all(|l| l.len() <= 100), "{block}");
        assert_eq!(block.lines().count(), 5, "{block}");
    }
}
