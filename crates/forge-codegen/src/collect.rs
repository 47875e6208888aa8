//! Reading the registry: every function with the JSON Schemas of its arguments and output, and
//! one table of the named types they use.
//!
//! Arguments are described as they are *deserialized* (an `Option` field may be left out) and
//! outputs as they are *serialized* (a field with `skip_serializing_if` may be missing). A type
//! used on both sides whose two descriptions differ gets a second TypeScript type for the
//! argument side, named `<Name>Input`.
//!
//! Each function gets its own schema generators, so that two different Rust types with the
//! same name show up as two different schemas under one name and can be refused (one shared
//! generator would silently number the second one `Name2`, depending on the order).

use std::collections::{BTreeMap, BTreeSet};

use forge_runtime::registry::{self, ArgDef};
use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

use crate::error::CodegenError;

/// What kind of function a registry entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Job,
    Workflow,
    Query,
    Mutation,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::Workflow => "workflow",
            Kind::Query => "query",
            Kind::Mutation => "mutation",
        }
    }
}

/// One registered function, its schemas with references to the final TypeScript type names.
pub(crate) struct Function {
    pub(crate) kind: Kind,
    pub(crate) name: &'static str,
    /// Its doc comment, put above its TypeScript functions.
    pub(crate) doc: &'static str,
    pub(crate) args: &'static [ArgDef],
    pub(crate) output_type: &'static str,
    pub(crate) args_schema: Value,
    pub(crate) output_schema: Value,
}

/// Everything the emitter needs: functions (by kind, then name) and named types (by name).
pub(crate) struct Api {
    pub(crate) functions: Vec<Function>,
    pub(crate) types: BTreeMap<String, Value>,
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

struct Raw {
    kind: Kind,
    name: &'static str,
    doc: &'static str,
    args: &'static [ArgDef],
    output_type: &'static str,
    args_schema: SchemaFn,
    output_schema: SchemaFn,
}

fn registered() -> Vec<Raw> {
    let mut all = Vec::new();
    // The four registries have the same fields, but not one type.
    macro_rules! take {
        ($iter:expr, $kind:expr) => {
            all.extend($iter.map(|d| Raw {
                kind: $kind,
                name: d.name,
                doc: d.doc,
                args: d.args,
                output_type: d.output_type,
                args_schema: d.args_schema,
                output_schema: d.output_schema,
            }))
        };
    }
    take!(registry::jobs(), Kind::Job);
    take!(registry::workflows(), Kind::Workflow);
    take!(registry::queries(), Kind::Query);
    take!(registry::mutations(), Kind::Mutation);
    all.sort_by(|a, b| (a.kind, a.name).cmp(&(b.kind, b.name)));
    all
}

/// Named schemas of one side (arguments or outputs), each with the first function using it.
type Defs = BTreeMap<String, (Value, String)>;

fn merge(
    defs: &mut Defs,
    from: serde_json::Map<String, Value>,
    user: &str,
) -> Result<(), CodegenError> {
    for (name, schema) in from {
        match defs.get(&name) {
            Some((known, first)) if *known != schema => {
                return Err(CodegenError::TypeNameCollision {
                    name,
                    first: first.clone(),
                    second: user.to_string(),
                })
            }
            Some(_) => {}
            None => {
                defs.insert(name, (schema, user.to_string()));
            }
        }
    }
    Ok(())
}

const DEFS_PREFIX: &str = "#/$defs/";

/// The type name a `$ref` points at.
pub(crate) fn ref_name(reference: &str) -> Option<String> {
    let encoded = reference.strip_prefix(DEFS_PREFIX)?;
    Some(
        percent_decode(encoded)
            .replace("~1", "/")
            .replace("~0", "~"),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every type name `schema` refers to.
fn refs(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = ref_name(r) {
                            out.insert(name);
                        }
                    }
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// `schema` with every reference renamed by `rename`.
fn rewrite_refs(schema: &mut Value, rename: &dyn Fn(&str) -> String) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = ref_name(r) {
                            *r = format!("{DEFS_PREFIX}{}", rename(&name));
                        }
                    }
                    (_, v) => rewrite_refs(v, rename),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, rename)),
        _ => {}
    }
}

/// Reads the registry.
pub(crate) fn collect() -> Result<Api, CodegenError> {
    let raw = registered();
    let mut arg_defs = Defs::new();
    let mut out_defs = Defs::new();
    let mut functions = Vec::with_capacity(raw.len());
    for f in &raw {
        let user = format!("{} {}", f.kind.label(), f.name);
        let mut de = SchemaSettings::draft2020_12()
            .for_deserialize()
            .into_generator();
        let args_schema = (f.args_schema)(&mut de).to_value();
        merge(&mut arg_defs, de.take_definitions(false), &user)?;
        let mut ser = SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator();
        let output_schema = (f.output_schema)(&mut ser).to_value();
        merge(&mut out_defs, ser.take_definitions(false), &user)?;
        functions.push(Function {
            kind: f.kind,
            name: f.name,
            doc: f.doc,
            args: f.args,
            output_type: f.output_type,
            args_schema,
            output_schema,
        });
    }

    // A type needs an input twin when its two descriptions differ, or when it refers to a
    // type that needs one (its argument side must point at the twin).
    let mut twins: BTreeSet<String> = arg_defs
        .iter()
        .filter(|(name, (schema, _))| out_defs.get(*name).is_some_and(|(o, _)| o != schema))
        .map(|(name, _)| name.clone())
        .collect();
    loop {
        let more: Vec<String> = arg_defs
            .iter()
            .filter(|(name, _)| out_defs.contains_key(*name) && !twins.contains(*name))
            .filter(|(_, (schema, _))| {
                let mut used = BTreeSet::new();
                refs(schema, &mut used);
                used.iter().any(|u| twins.contains(u))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        twins.extend(more);
    }
    let input_name = |name: &str| {
        if twins.contains(name) {
            format!("{name}Input")
        } else {
            name.to_string()
        }
    };
    for name in &twins {
        let twin = input_name(name);
        if let Some((_, user)) = arg_defs.get(&twin).or_else(|| out_defs.get(&twin)) {
            return Err(CodegenError::TypeNameCollision {
                name: twin,
                first: user.clone(),
                second: arg_defs[name].1.clone(),
            });
        }
    }

    let mut types: BTreeMap<String, Value> = out_defs
        .into_iter()
        .map(|(name, (schema, _))| (name, schema))
        .collect();
    for (name, (mut schema, _)) in arg_defs {
        if types.contains_key(&name) && !twins.contains(&name) {
            continue;
        }
        rewrite_refs(&mut schema, &input_name);
        types.insert(input_name(&name), schema);
    }
    for f in &mut functions {
        rewrite_refs(&mut f.args_schema, &input_name);
    }

    // Every reference must land on a definition.
    let mut known_refs = BTreeSet::new();
    for schema in types.values() {
        refs(schema, &mut known_refs);
    }
    for f in &functions {
        let mut used = known_refs.clone();
        refs(&f.args_schema, &mut used);
        refs(&f.output_schema, &mut used);
        if let Some(missing) = used.into_iter().find(|u| !types.contains_key(u)) {
            return Err(CodegenError::DanglingRef {
                function: f.name.to_string(),
                reference: missing,
            });
        }
    }
    Ok(Api { functions, types })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ref_names() {
        assert_eq!(ref_name("#/$defs/Page").as_deref(), Some("Page"));
        assert_eq!(ref_name("#/$defs/a~1b~0c").as_deref(), Some("a/b~c"));
        assert_eq!(ref_name("#/$defs/A%3CB%3E").as_deref(), Some("A<B>"));
        assert_eq!(ref_name("#/$defs/50%").as_deref(), Some("50%"));
        assert_eq!(ref_name("#"), None);
    }
}
