//! Writing `api.ts`: the named types, then per function its typed entry points.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::collect::{Api, Function, Kind};
use crate::error::CodegenError;
use crate::ts::{self, doc_block, schema_doc, Renderer};

/// What the generated code imports from `@forge/svelte`.
const IMPORTS: &[&str] = &[
    "callFunction",
    "createJobStore",
    "createQueryStore",
    "createWorkflowStore",
    "trackJob",
    "trackWorkflow",
];

/// Type names the generated code itself uses, or that TypeScript reserves.
const RESERVED_TYPES: &[&str] = &[
    "Array",
    "Record",
    "Promise",
    "Partial",
    "Required",
    "Readonly",
    "Pick",
    "Omit",
    "Date",
    "Error",
    "Map",
    "Set",
    "Object",
    "String",
    "Number",
    "Boolean",
    "Symbol",
    "Function",
    "any",
    "unknown",
    "never",
    "void",
    "null",
    "undefined",
    "object",
    "string",
    "number",
    "boolean",
    "symbol",
    "bigint",
];

/// Words that cannot name an exported `const`.
const RESERVED_WORDS: &[&str] = &[
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "debugger",
    "default",
    "delete",
    "do",
    "else",
    "enum",
    "export",
    "extends",
    "false",
    "finally",
    "for",
    "function",
    "if",
    "import",
    "in",
    "instanceof",
    "new",
    "null",
    "return",
    "super",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "var",
    "void",
    "while",
    "with",
    "yield",
    "let",
    "static",
    "implements",
    "interface",
    "package",
    "private",
    "protected",
    "public",
    "await",
    "arguments",
    "eval",
];

fn words(name: &str) -> impl Iterator<Item = &str> {
    name.split('_').filter(|w| !w.is_empty())
}

fn pascal_case(name: &str) -> String {
    words(name)
        .map(|w| {
            let mut chars = w.chars();
            let first = chars.next().expect("words are not empty");
            first.to_uppercase().chain(chars).collect::<String>()
        })
        .collect()
}

fn camel_case(name: &str) -> String {
    let pascal = pascal_case(name);
    let mut chars = pascal.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => pascal,
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn check_type_name(name: &str) -> Result<(), CodegenError> {
    if !is_identifier(name) {
        return Err(CodegenError::InvalidName {
            name: name.to_string(),
            reason:
                "a type name must be an identifier; rename it with #[schemars(rename = \"...\")]",
        });
    }
    if RESERVED_TYPES.contains(&name) {
        return Err(CodegenError::InvalidName {
            name: name.to_string(),
            reason: "TypeScript (or the generated code) already uses this type name; rename it with #[schemars(rename = \"...\")]",
        });
    }
    Ok(())
}

/// The names a function is exported under.
fn exports(f: &Function) -> Vec<String> {
    let pascal = pascal_case(f.name);
    match f.kind {
        Kind::Job | Kind::Workflow => vec![format!("track{pascal}"), format!("resume{pascal}")],
        Kind::Query => vec![camel_case(f.name), format!("live{pascal}")],
        Kind::Mutation => vec![camel_case(f.name)],
    }
}

fn check_exports(api: &Api) -> Result<(), CodegenError> {
    let mut taken: BTreeMap<String, String> = IMPORTS
        .iter()
        .map(|i| (i.to_string(), "@forge/svelte".to_string()))
        .collect();
    for f in &api.functions {
        let user = format!("{} {}", f.kind.label(), f.name);
        for name in exports(f) {
            if !is_identifier(&name) || RESERVED_WORDS.contains(&name.as_str()) {
                return Err(CodegenError::InvalidName {
                    name,
                    reason: "not a name a TypeScript `const` can have; rename the function",
                });
            }
            if let Some(first) = taken.insert(name.clone(), user.clone()) {
                return Err(CodegenError::NameClash {
                    ts_name: name,
                    first,
                    second: user,
                });
            }
        }
    }
    Ok(())
}

const HEADER_NOTE: &str = "\
// Do not edit: change the Rust functions and run the command again (`--check` fails when this
// file is stale).
//
// 64-bit integers are JSON numbers, typed `number`: the client throws a `precision_loss`
// ForgeError rather than round one beyond 2^53 silently.
";

/// The contents of `api.ts`.
pub(crate) fn api_ts(api: &Api, command: &str) -> Result<String, CodegenError> {
    check_exports(api)?;
    for name in api.types.keys() {
        check_type_name(name)?;
    }
    let mut out = format!(
        "// Generated by forge-codegen from the app's registered functions: `{command}`.\n"
    );
    out.push_str(HEADER_NOTE);

    let used: BTreeSet<&str> = api
        .functions
        .iter()
        .flat_map(|f| -> &[&str] {
            match f.kind {
                Kind::Job => &["createJobStore", "trackJob"],
                Kind::Workflow => &["createWorkflowStore", "trackWorkflow"],
                Kind::Query => &["callFunction", "createQueryStore"],
                Kind::Mutation => &["callFunction"],
            }
        })
        .copied()
        .collect();
    if !used.is_empty() {
        let list: Vec<&str> = used.into_iter().collect();
        let one_line = format!("import {{ {} }} from \"@forge/svelte\";", list.join(", "));
        if one_line.len() <= 100 {
            out.push_str(&format!("\n{one_line}\n"));
        } else {
            out.push_str(&format!(
                "\nimport {{\n  {},\n}} from \"@forge/svelte\";\n",
                list.join(",\n  ")
            ));
        }
    }

    let full = Renderer { compact: false };
    for (name, schema) in &api.types {
        out.push('\n');
        out.push_str(&type_decl(&full, name, schema));
    }
    for f in &api.functions {
        out.push('\n');
        out.push_str(&function(f));
    }
    Ok(out)
}

fn type_decl(r: &Renderer, name: &str, schema: &Value) -> String {
    if let Some(body) = r.interface_body(schema, 1) {
        let doc = doc_block(&schema_doc(schema, false), "");
        return format!("{doc}export interface {name} {{\n{body}}}\n");
    }
    let doc = doc_block(&schema_doc(schema, true), "");
    let ty = r.render(schema, 0);
    let sep = if ty.starts_with('\n') { "" } else { " " };
    format!("{doc}export type {name} ={sep}{ty};\n")
}

/// `export const name = (params) => body;`, on one line when it fits.
fn export_const(doc: &str, name: &str, params: &str, body: &str) -> String {
    let one_line = format!("export const {name} = ({params}) => {body};");
    if one_line.len() <= 100 {
        format!("{doc}{one_line}\n")
    } else {
        format!("{doc}export const {name} = ({params}) =>\n  {body};\n")
    }
}

fn function(f: &Function) -> String {
    let compact = Renderer { compact: true };
    let has_args = f
        .args_schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty());
    let args_ty = if has_args {
        compact.render(&f.args_schema, 0)
    } else {
        "Record<string, never>".to_string()
    };
    let output = if f.output_schema == serde_json::json!({"type": "null"}) {
        "void".to_string()
    } else {
        compact.render(&f.output_schema, 0)
    };
    let (params, args) = if has_args {
        (format!("args: {args_ty}"), "args")
    } else {
        (String::new(), "{}")
    };

    let rust_args: Vec<String> = f
        .args
        .iter()
        .map(|a| format!("{}: {}", a.rust_name, a.rust_type))
        .collect();
    let mut out = format!(
        "// {} {}({}) -> {}\n",
        f.kind.label(),
        f.name,
        rust_args.join(", "),
        f.output_type
    );

    // Notes on the values that need care: arguments by name, then the output.
    let mut notes: Vec<String> = Vec::new();
    if let Some(props) = f.args_schema.get("properties").and_then(Value::as_object) {
        for (name, schema) in props {
            for note in ts::notes(schema) {
                notes.push(format!("`{name}`: {note}"));
            }
        }
    }
    for note in ts::notes(&f.output_schema) {
        notes.push(format!("Output: {note}"));
    }
    let with_notes = |first: String| {
        let mut lines = vec![first];
        if !notes.is_empty() {
            lines.push(String::new());
            lines.extend(notes.iter().cloned());
        }
        doc_block(&lines, "")
    };

    let exports = exports(f);
    let fname = f.name;
    match f.kind {
        Kind::Job | Kind::Workflow => {
            let (what, create, track, id) = match f.kind {
                Kind::Job => ("job", "createJobStore", "trackJob", "jobId"),
                _ => (
                    "workflow",
                    "createWorkflowStore",
                    "trackWorkflow",
                    "workflowId",
                ),
            };
            out.push_str(&export_const(
                &with_notes(format!(
                    "Starts the `{fname}` {what} and returns a store that follows it."
                )),
                &exports[0],
                &params,
                &format!("{create}<{args_ty}, {output}>(\"{fname}\", {args})"),
            ));
            out.push_str(&export_const(
                &doc_block(
                    &[format!(
                        "Follows the `{fname}` {what} with this id, started earlier (before a page reload, say)."
                    )],
                    "",
                ),
                &exports[1],
                &format!("{id}: string"),
                &format!("{track}<{output}>(\"{fname}\", {id})"),
            ));
        }
        Kind::Query => {
            out.push_str(&export_const(
                &with_notes(format!("Runs the `{fname}` query once.")),
                &exports[0],
                &params,
                &format!("callFunction<{args_ty}, {output}>(\"{fname}\", {args})"),
            ));
            out.push_str(&export_const(
                &with_notes(format!(
                    "The `{fname}` query as a live store: its data follows the changes on the server."
                )),
                &exports[1],
                &params,
                &format!("createQueryStore<{args_ty}, {output}>(\"{fname}\", {args})"),
            ));
        }
        Kind::Mutation => {
            out.push_str(&export_const(
                &with_notes(format!("Runs the `{fname}` mutation.")),
                &exports[0],
                &params,
                &format!("callFunction<{args_ty}, {output}>(\"{fname}\", {args})"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases() {
        assert_eq!(pascal_case("export_users"), "ExportUsers");
        assert_eq!(camel_case("recent_jobs"), "recentJobs");
        assert_eq!(camel_case("ping"), "ping");
        assert_eq!(pascal_case("v2_sync"), "V2Sync");
    }

    fn api(functions: &[(Kind, &'static str)]) -> Api {
        let functions = functions
            .iter()
            .map(|&(kind, name)| Function {
                kind,
                name,
                args: &[],
                output_type: "()",
                args_schema: serde_json::json!({"type": "object"}),
                output_schema: serde_json::json!({"type": "null"}),
            })
            .collect();
        Api {
            functions,
            types: BTreeMap::new(),
        }
    }

    #[test]
    fn refuses_functions_that_clash_in_typescript() {
        let err = api_ts(
            &api(&[
                (Kind::Job, "export_users"),
                (Kind::Query, "track_export_users"),
            ]),
            "app generate",
        )
        .unwrap_err();
        assert!(
            matches!(&err, CodegenError::NameClash { ts_name, first, second }
                if ts_name == "trackExportUsers" && first == "job export_users"
                    && second == "query track_export_users"),
            "{err}"
        );
        let err = api_ts(&api(&[(Kind::Mutation, "call_function")]), "app").unwrap_err();
        assert!(matches!(err, CodegenError::NameClash { .. }), "{err}");
        let err = api_ts(&api(&[(Kind::Mutation, "delete")]), "app").unwrap_err();
        assert!(matches!(err, CodegenError::InvalidName { .. }), "{err}");
        assert!(api_ts(&api(&[(Kind::Query, "delete_all")]), "app").is_ok());
    }

    #[test]
    fn refuses_reserved_and_non_identifier_type_names() {
        assert!(check_type_name("Record").is_err());
        assert!(check_type_name("Page<User>").is_err());
        assert!(check_type_name("ExportResult").is_ok());
    }
}
