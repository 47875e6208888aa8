//! JSON Schema (as schemars writes it) to TypeScript types.

use serde_json::{Map, Value};

use crate::collect::ref_name;
use crate::doc::{doc_block, schema_doc};

/// How tightly a rendered type binds, to know when it needs parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Prec {
    Union,
    Intersection,
    Atom,
}

struct Ty {
    text: String,
    prec: Prec,
}

impl Ty {
    fn atom(text: impl Into<String>) -> Ty {
        Ty {
            text: text.into(),
            prec: Prec::Atom,
        }
    }

    fn multiline(&self) -> bool {
        self.text.contains('\n')
    }
}

/// Whether `name` can stand bare as a TypeScript identifier or property key.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// A property key as TypeScript needs it: bare when it is an identifier, quoted otherwise.
pub(crate) fn property_key(name: &str) -> String {
    if is_identifier(name) {
        name.to_string()
    } else {
        Value::String(name.to_string()).to_string()
    }
}

/// Renders schemas. `compact` puts object literals on one line without doc comments (for the
/// argument objects inside function signatures).
pub(crate) struct Renderer {
    pub(crate) compact: bool,
}

const INDENT: &str = "  ";

impl Renderer {
    /// The TypeScript type of `schema`, for a position indented `level` steps.
    pub(crate) fn render(&self, schema: &Value, level: usize) -> String {
        self.ty(schema, level).text
    }

    /// The members of an object type as interface lines, each indented `level` steps; `None`
    /// when `schema` is not a plain object with properties.
    pub(crate) fn interface_body(&self, schema: &Value, level: usize) -> Option<String> {
        let map = schema.as_object()?;
        let plain = map.get("type").and_then(Value::as_str) == Some("object")
            && map.contains_key("properties")
            && !["$ref", "allOf", "anyOf", "oneOf", "const", "enum"]
                .iter()
                .any(|k| map.contains_key(*k))
            && !matches!(map.get("additionalProperties"), Some(Value::Object(_)));
        if !plain {
            return None;
        }
        Some(self.object_members(map, level))
    }

    fn ty(&self, schema: &Value, level: usize) -> Ty {
        let map = match schema {
            Value::Bool(true) => return Ty::atom("unknown"),
            Value::Bool(false) => return Ty::atom("never"),
            Value::Object(map) => map,
            _ => return Ty::atom("unknown"),
        };
        let mut parts: Vec<Ty> = Vec::new();
        if let Some(Value::String(r)) = map.get("$ref") {
            parts.push(Ty::atom(ref_name(r).unwrap_or_else(|| "unknown".into())));
        }
        let combined = ["$ref", "allOf", "anyOf", "oneOf"]
            .iter()
            .any(|k| map.contains_key(*k));
        if let Some(t) = self.own_type(map, combined, level) {
            parts.push(t);
        }
        if let Some(Value::Array(all)) = map.get("allOf") {
            parts.extend(all.iter().map(|s| self.ty(s, level)));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(any)) = map.get(key) {
                let members: Vec<(Ty, Vec<String>)> = any
                    .iter()
                    .map(|s| (self.ty(s, level + 1), schema_doc(s, false)))
                    .collect();
                parts.push(self.union(members, level));
            }
        }
        match parts.len() {
            0 => Ty::atom("unknown"),
            1 => parts.pop().expect("one part"),
            _ => self.intersection(parts, level),
        }
    }

    /// The type given by the keywords of the schema itself (`type`, `const`, `enum`, ...), as
    /// opposed to its references and combinators. A bare `"type": "object"` next to a
    /// reference or a combinator adds nothing and is left out.
    fn own_type(&self, map: &Map<String, Value>, combined: bool, level: usize) -> Option<Ty> {
        if let Some(c) = map.get("const") {
            return Some(Ty::atom(literal(c)));
        }
        if let Some(Value::Array(values)) = map.get("enum") {
            let members = values
                .iter()
                .map(|v| (Ty::atom(literal(v)), Vec::new()))
                .collect();
            return Some(self.union(members, level));
        }
        let types: Vec<&str> = match map.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return None,
        };
        let members: Vec<(Ty, Vec<String>)> = types
            .into_iter()
            .filter_map(|t| {
                let ty = match t {
                    "string" => Ty::atom("string"),
                    "number" | "integer" => Ty::atom("number"),
                    "boolean" => Ty::atom("boolean"),
                    "null" => Ty::atom("null"),
                    "array" => self.array(map, level),
                    "object" => {
                        let bare = !["properties", "additionalProperties", "patternProperties"]
                            .iter()
                            .any(|k| map.contains_key(*k));
                        if bare && combined {
                            return None;
                        }
                        self.object(map, level)
                    }
                    _ => Ty::atom("unknown"),
                };
                Some((ty, Vec::new()))
            })
            .collect();
        if members.is_empty() {
            return None;
        }
        Some(self.union(members, level))
    }

    fn array(&self, map: &Map<String, Value>, level: usize) -> Ty {
        if let Some(Value::Array(prefix)) = map.get("prefixItems") {
            let items: Vec<String> = prefix.iter().map(|s| self.render(s, level)).collect();
            let mut text = format!("[{}", items.join(", "));
            match map.get("items") {
                None | Some(Value::Bool(false)) => {}
                Some(rest) => {
                    let rest = self.ty(rest, level);
                    if !items.is_empty() {
                        text.push_str(", ");
                    }
                    text.push_str(&format!("...{}", array_of(rest, level)));
                }
            }
            text.push(']');
            return Ty::atom(text);
        }
        let item = match map.get("items") {
            Some(s) => self.ty(s, level),
            None => Ty::atom("unknown"),
        };
        Ty::atom(array_of(item, level))
    }

    fn object(&self, map: &Map<String, Value>, level: usize) -> Ty {
        let extra = match (
            map.get("additionalProperties"),
            map.get("patternProperties"),
        ) {
            (Some(Value::Object(_)) | Some(Value::Bool(true)), _) => {
                Some(self.render(&map["additionalProperties"], level))
            }
            (_, Some(Value::Object(patterns))) if !patterns.is_empty() => {
                let members = patterns
                    .values()
                    .map(|s| (self.ty(s, level), Vec::new()))
                    .collect();
                Some(self.union(members, level).text)
            }
            (Some(Value::Bool(false)), _) => None,
            // No word on other keys: serde would accept them.
            (None, _) => {
                if map.contains_key("properties") {
                    None
                } else {
                    Some("unknown".to_string())
                }
            }
            _ => Some("unknown".to_string()),
        };
        let has_props = map
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| !p.is_empty());
        let record = extra.map(|t| format!("Record<string, {t}>"));
        if !has_props {
            return Ty::atom(record.unwrap_or_else(|| "Record<string, never>".into()));
        }
        let one_line = format!("{{ {} }}", self.compact_members(map).join("; "));
        let documented = self
            .properties(map)
            .any(|(_, schema, _)| !schema_doc(schema, true).is_empty());
        let literal = if self.compact || (!documented && one_line.len() <= 60) {
            one_line
        } else {
            format!(
                "{{\n{}{}}}",
                self.object_members(map, level + 1),
                INDENT.repeat(level)
            )
        };
        match record {
            None => Ty::atom(literal),
            Some(record) => Ty {
                text: format!("{literal} & {record}"),
                prec: Prec::Intersection,
            },
        }
    }

    fn properties<'a>(
        &self,
        map: &'a Map<String, Value>,
    ) -> impl Iterator<Item = (&'a String, &'a Value, bool)> {
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut props: Vec<(&String, &Value, bool)> = map
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(name, schema)| (name, schema, required.contains(&name.as_str())))
            .collect();
        // Properties come sorted by name; `required` keeps the order of the Rust fields (tags
        // first), so those go first in that order, the optional ones after.
        props.sort_by_key(|(name, _, _)| {
            required
                .iter()
                .position(|r| r == name)
                .unwrap_or(required.len())
        });
        props.into_iter()
    }

    fn compact_members(&self, map: &Map<String, Value>) -> Vec<String> {
        self.properties(map)
            .map(|(name, schema, required)| {
                let optional = if required { "" } else { "?" };
                format!(
                    "{}{optional}: {}",
                    property_key(name),
                    self.render(schema, 0)
                )
            })
            .collect()
    }

    /// One line (with its doc comment) per property, indented `level` steps.
    fn object_members(&self, map: &Map<String, Value>, level: usize) -> String {
        let indent = INDENT.repeat(level);
        let mut out = String::new();
        for (name, schema, required) in self.properties(map) {
            out.push_str(&doc_block(&schema_doc(schema, true), &indent));
            let optional = if required { "" } else { "?" };
            let ty = self.render(schema, level);
            let sep = if ty.starts_with('\n') { "" } else { " " };
            out.push_str(&format!(
                "{indent}{}{optional}:{sep}{ty};\n",
                property_key(name)
            ));
        }
        out
    }

    fn union(&self, members: Vec<(Ty, Vec<String>)>, level: usize) -> Ty {
        let mut unique: Vec<(Ty, Vec<String>)> = Vec::new();
        for (ty, doc) in members {
            if !unique.iter().any(|(u, _)| u.text == ty.text) {
                unique.push((ty, doc));
            }
        }
        if unique.len() == 1 {
            return unique.pop().expect("one member").0;
        }
        let one_line: Vec<&str> = unique.iter().map(|(t, _)| t.text.as_str()).collect();
        let fits = !unique
            .iter()
            .any(|(t, doc)| t.multiline() || (!self.compact && !doc.is_empty()))
            && one_line.iter().map(|t| t.len() + 3).sum::<usize>() <= 80;
        if fits || self.compact {
            return Ty {
                text: one_line.join(" | "),
                prec: Prec::Union,
            };
        }
        let indent = INDENT.repeat(level + 1);
        let mut text = String::new();
        for (ty, doc) in unique {
            text.push('\n');
            let doc = doc_block(&doc, &indent);
            text.push_str(&doc);
            text.push_str(&format!("{indent}| {}", ty.text));
        }
        Ty {
            text,
            prec: Prec::Union,
        }
    }

    fn intersection(&self, parts: Vec<Ty>, level: usize) -> Ty {
        let texts: Vec<String> = parts
            .into_iter()
            .map(|p| wrap(p, Prec::Intersection, level))
            .collect();
        Ty {
            text: texts.join(" & "),
            prec: Prec::Intersection,
        }
    }
}

/// `ty` in parentheses if it binds less tightly than `need`.
fn wrap(ty: Ty, need: Prec, level: usize) -> String {
    if ty.prec >= need {
        ty.text
    } else if ty.text.starts_with('\n') {
        format!("({}\n{})", ty.text, INDENT.repeat(level))
    } else {
        format!("({})", ty.text)
    }
}

fn array_of(item: Ty, level: usize) -> String {
    if item.prec == Prec::Atom && !item.multiline() {
        format!("{}[]", item.text)
    } else if item.text.starts_with('\n') {
        format!("Array<{}\n{}>", item.text, INDENT.repeat(level))
    } else {
        format!("Array<{}>", item.text)
    }
}

fn literal(v: &Value) -> String {
    // A JSON literal is a TypeScript literal type (strings, numbers, booleans, null).
    match v {
        Value::Object(_) | Value::Array(_) => "unknown".into(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(schema: Value) -> String {
        Renderer { compact: false }.render(&schema, 0)
    }

    #[test]
    fn scalars_and_nullables() {
        assert_eq!(ts(json!({"type": "string", "format": "uuid"})), "string");
        assert_eq!(ts(json!({"type": ["integer", "null"]})), "number | null");
        assert_eq!(ts(json!(true)), "unknown");
        assert_eq!(
            ts(json!({"anyOf": [{"$ref": "#/$defs/Meta"}, {"type": "null"}]})),
            "Meta | null"
        );
    }

    #[test]
    fn arrays_tuples_and_maps() {
        assert_eq!(
            ts(json!({"type": "array", "items": {"type": ["string", "null"]}})),
            "Array<string | null>"
        );
        assert_eq!(
            ts(
                json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "minItems": 2, "maxItems": 2})
            ),
            "[string, number]"
        );
        assert_eq!(
            ts(json!({"type": "object", "additionalProperties": {"$ref": "#/$defs/Meta"}})),
            "Record<string, Meta>"
        );
    }

    #[test]
    fn a_reference_with_properties_is_an_intersection() {
        let schema = json!({
            "$ref": "#/$defs/Meta",
            "type": "object",
            "properties": {"kind": {"type": "string", "const": "withMeta"}},
            "required": ["kind"],
        });
        assert_eq!(ts(schema.clone()), "Meta & { kind: \"withMeta\" }");
        let mut documented = schema;
        documented["properties"]["kind"]["description"] = "The tag.".into();
        assert_eq!(
            ts(documented),
            "Meta & {\n  /** The tag. */\n  kind: \"withMeta\";\n}"
        );
    }
}
