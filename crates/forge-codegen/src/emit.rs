//! Writing `api.ts`: the named types, then per function its typed entry points.
//!
//! (Over 500 lines with its unit tests, a sixth of it: what each generated export looks like
//! is kept in one place.)

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::collect::{Api, Function, Kind};
use crate::doc::{self, doc_block, schema_doc};
use crate::error::CodegenError;
use crate::ts::{is_identifier, Renderer};
use crate::Adapter;

/// What the generated code may import from the framework-free core, `@forge/client`.
const CORE_IMPORTS: &[&str] = &[
    "callFunction",
    "followJob",
    "followWorkflow",
    "liveQuery",
    "startJob",
    "startWorkflow",
    "ForgeClient",
    "TrackOptions",
];

/// What the React hooks may import from `@forge/react`.
const REACT_IMPORTS: &[&str] = &[
    "useFollowJob",
    "useFollowWorkflow",
    "useLiveQuery",
    "useTrackJob",
    "useTrackWorkflow",
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

/// The names a function is exported under: its core functions, then its React hooks.
fn exports(f: &Function, adapter: Adapter) -> Vec<String> {
    let pascal = pascal_case(f.name);
    let mut names = match f.kind {
        Kind::Job | Kind::Workflow => vec![format!("track{pascal}"), format!("follow{pascal}")],
        Kind::Query => vec![camel_case(f.name), format!("live{pascal}")],
        Kind::Mutation => vec![camel_case(f.name)],
    };
    if adapter == Adapter::React {
        match f.kind {
            Kind::Job | Kind::Workflow => {
                names.extend([format!("useTrack{pascal}"), format!("useFollow{pascal}")])
            }
            Kind::Query => names.push(format!("useLive{pascal}")),
            Kind::Mutation => {}
        }
    }
    names
}

fn check_exports(api: &Api, adapter: Adapter) -> Result<(), CodegenError> {
    let mut taken: BTreeMap<String, String> = CORE_IMPORTS
        .iter()
        .map(|i| (i.to_string(), "@forge/client".to_string()))
        .collect();
    if adapter == Adapter::React {
        taken.extend(
            REACT_IMPORTS
                .iter()
                .map(|i| (i.to_string(), "@forge/react".to_string())),
        );
    }
    for f in &api.functions {
        let user = format!("{} {}", f.kind.label(), f.name);
        for name in exports(f, adapter) {
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
// Every function takes an explicit client last (default: the one `configureForge` set).
// 64-bit integers are JSON numbers, typed `number`: the client throws a `precision_loss`
// ForgeError rather than round one beyond 2^53 silently.
";

const SVELTE_NOTE: &str = "\
//
// Svelte: the stores these functions return are Svelte stores (`$job`, `fromStore(job)`); a
// client from a component's context is `getForgeClientContext()` of `@forge/svelte`.
";

/// `import { a, b } from "module";`, on one line when it fits.
fn import(names: &[&str], module: &str) -> String {
    let one_line = format!("import {{ {} }} from \"{module}\";", names.join(", "));
    if one_line.len() <= 100 {
        format!("{one_line}\n")
    } else {
        format!(
            "import {{\n  {},\n}} from \"{module}\";\n",
            names.join(",\n  ")
        )
    }
}

/// The contents of `api.ts`.
pub(crate) fn api_ts(api: &Api, command: &str, adapter: Adapter) -> Result<String, CodegenError> {
    check_exports(api, adapter)?;
    for name in api.types.keys() {
        check_type_name(name)?;
    }
    let mut out = format!(
        "// Generated by forge-codegen from the app's registered functions: `{command}`.\n"
    );
    out.push_str(HEADER_NOTE);

    if adapter == Adapter::Svelte {
        out.push_str(SVELTE_NOTE);
    }

    let core: BTreeSet<&str> = api
        .functions
        .iter()
        .flat_map(|f| -> &[&str] {
            match f.kind {
                Kind::Job => &["startJob", "followJob"],
                Kind::Workflow => &["startWorkflow", "followWorkflow"],
                Kind::Query => &["callFunction", "liveQuery"],
                Kind::Mutation => &["callFunction"],
            }
        })
        .copied()
        .collect();
    if !core.is_empty() {
        let starts = api
            .functions
            .iter()
            .any(|f| matches!(f.kind, Kind::Job | Kind::Workflow));
        let mut list: Vec<&str> = core.into_iter().collect();
        list.push("type ForgeClient");
        if starts {
            list.push("type TrackOptions");
        }
        out.push('\n');
        out.push_str(&import(&list, "@forge/client"));
    }
    if adapter == Adapter::React {
        let hooks: BTreeSet<&str> = api
            .functions
            .iter()
            .flat_map(|f| -> &[&str] {
                match f.kind {
                    Kind::Job => &["useTrackJob", "useFollowJob"],
                    Kind::Workflow => &["useTrackWorkflow", "useFollowWorkflow"],
                    Kind::Query => &["useLiveQuery"],
                    Kind::Mutation => &[],
                }
            })
            .copied()
            .collect();
        if !hooks.is_empty() {
            out.push_str(&import(
                &hooks.into_iter().collect::<Vec<_>>(),
                "@forge/react",
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
        out.push_str(&function(f, adapter));
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

/// `export const name = (params) => body;`, on one line when it fits, else the body on the next
/// line, else one parameter a line too.
fn export_const(doc: &str, name: &str, params: &[String], body: &str) -> String {
    let head = format!("export const {name} = ({}) =>", params.join(", "));
    if head.len() + body.len() + 2 <= 100 {
        format!("{doc}{head} {body};\n")
    } else if head.len() <= 100 {
        format!("{doc}{head}\n  {body};\n")
    } else {
        let params: String = params.iter().map(|p| format!("  {p},\n")).collect();
        format!("{doc}export const {name} = (\n{params}) =>\n  {body};\n")
    }
}

fn function(f: &Function, adapter: Adapter) -> String {
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
    let client = "client?: ForgeClient".to_string();
    let (hook_params, args) = if has_args {
        (vec![format!("args: {args_ty}")], "args")
    } else {
        (vec![], "{}")
    };
    let params = [hook_params.clone(), vec![client.clone()]].concat();

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
            for note in doc::notes(schema) {
                notes.push(format!("`{name}`: {note}"));
            }
        }
    }
    for note in doc::notes(&f.output_schema) {
        notes.push(format!("Output: {note}"));
    }
    // The function's own doc comment first, then what the generated function does.
    let with_notes = |first: String| {
        let mut lines = if f.doc.is_empty() {
            vec![first]
        } else {
            vec![f.doc.to_string(), String::new(), first]
        };
        if !notes.is_empty() {
            lines.push(String::new());
            lines.extend(notes.iter().cloned());
        }
        doc_block(&lines, "")
    };
    let short = |line: String| doc_block(&[line], "");

    let exports = exports(f, adapter);
    let fname = f.name;
    match f.kind {
        Kind::Job | Kind::Workflow => {
            let (what, noun) = match f.kind {
                Kind::Job => ("job", "Job"),
                _ => ("workflow", "Workflow"),
            };
            let id = format!("{what}Id");
            let track_params = [
                hook_params.clone(),
                vec!["options?: ForgeClient | TrackOptions".to_string()],
            ]
            .concat();
            out.push_str(&export_const(
                &with_notes(format!(
                    "Starts the `{fname}` {what} and returns a store that follows it; with \
                     `{{ key }}`, follows the run started under that key in this tab session \
                     instead of starting another."
                )),
                &exports[0],
                &track_params,
                &format!("start{noun}<{args_ty}, {output}>(\"{fname}\", {args}, options)"),
            ));
            out.push_str(&export_const(
                &short(format!(
                    "Follows the `{fname}` {what} with this id, started earlier (before a page reload, say)."
                )),
                &exports[1],
                &[format!("{id}: string"), client.clone()],
                &format!("follow{noun}<{output}>({id}, client)"),
            ));
            if adapter == Adapter::React {
                out.push_str(&export_const(
                    &short(format!(
                        "React: `start(args)` starts the `{fname}` {what} on the provider's client; `state` follows it."
                    )),
                    &exports[2],
                    &[],
                    &format!("useTrack{noun}<{args_ty}, {output}>(\"{fname}\")"),
                ));
                out.push_str(&export_const(
                    &short(format!(
                        "React: the state of the `{fname}` {what} with this id (null while the id is)."
                    )),
                    &exports[3],
                    &[format!("{id}: string | null")],
                    &format!("useFollow{noun}<{output}>({id})"),
                ));
            }
        }
        Kind::Query => {
            out.push_str(&export_const(
                &with_notes(format!("Runs the `{fname}` query once.")),
                &exports[0],
                &params,
                &format!("callFunction<{args_ty}, {output}>(\"{fname}\", {args}, client)"),
            ));
            out.push_str(&export_const(
                &with_notes(format!(
                    "The `{fname}` query as a live store: its data follows the changes on the server."
                )),
                &exports[1],
                &params,
                &format!("liveQuery<{args_ty}, {output}>(\"{fname}\", {args}, client)"),
            ));
            if adapter == Adapter::React {
                out.push_str(&export_const(
                    &short(format!(
                        "React: the live result of the `{fname}` query, on the provider's client."
                    )),
                    &exports[2],
                    &hook_params,
                    &format!("useLiveQuery<{args_ty}, {output}>(\"{fname}\", {args})"),
                ));
            }
        }
        Kind::Mutation => {
            out.push_str(&export_const(
                &with_notes(format!("Runs the `{fname}` mutation.")),
                &exports[0],
                &params,
                &format!("callFunction<{args_ty}, {output}>(\"{fname}\", {args}, client)"),
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
                doc: "",
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
            Adapter::None,
        )
        .unwrap_err();
        assert!(
            matches!(&err, CodegenError::NameClash { ts_name, first, second }
                if ts_name == "trackExportUsers" && first == "job export_users"
                    && second == "query track_export_users"),
            "{err}"
        );
        let err = api_ts(
            &api(&[(Kind::Mutation, "call_function")]),
            "app",
            Adapter::None,
        )
        .unwrap_err();
        assert!(matches!(err, CodegenError::NameClash { .. }), "{err}");
        let err = api_ts(&api(&[(Kind::Mutation, "delete")]), "app", Adapter::None).unwrap_err();
        assert!(matches!(err, CodegenError::InvalidName { .. }), "{err}");
        assert!(api_ts(&api(&[(Kind::Query, "delete_all")]), "app", Adapter::None).is_ok());
    }

    #[test]
    fn react_hooks_clash_only_with_the_react_adapter() {
        let functions = api(&[
            (Kind::Job, "export_users"),
            (Kind::Mutation, "use_track_job"),
        ]);
        assert!(api_ts(&functions, "app", Adapter::None).is_ok());
        let err = api_ts(&functions, "app", Adapter::React).unwrap_err();
        assert!(
            matches!(&err, CodegenError::NameClash { ts_name, .. } if ts_name == "useTrackJob"),
            "{err}"
        );
    }

    #[test]
    fn refuses_reserved_and_non_identifier_type_names() {
        assert!(check_type_name("Record").is_err());
        assert!(check_type_name("Page<User>").is_err());
        assert!(check_type_name("ExportResult").is_ok());
    }
}
