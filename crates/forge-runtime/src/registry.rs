//! The function registry. `#[forge::job]` (and the other function macros) submit one
//! definition each through `inventory`; the runtime, the gateway and the TypeScript generator
//! all read this one list, so there is no hand-written registration anywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use futures::future::BoxFuture;
use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

pub use crate::backoff::Backoff;
use crate::definition::function_registry;
pub use crate::definition::{Access, ArgDef};
use crate::error::{ArgsError, Error};
use crate::function::{MutationContext, QueryContext};
use crate::worker::{Handler, JobContext};

/// Options of `#[forge::job(...)]`.
#[derive(Debug, Clone, Copy)]
pub struct JobOptions {
    pub max_attempts: u32,
    pub timeout: Option<Duration>,
    pub priority: i32,
    pub queue: &'static str,
    pub backoff: Backoff,
    pub access: Access,
}

impl JobOptions {
    pub const DEFAULT: JobOptions = JobOptions {
        max_attempts: 3,
        timeout: None,
        priority: 0,
        queue: "default",
        backoff: Backoff::DEFAULT,
        access: Access::Authenticated,
    };
}

/// What the runtime calls to run a job: takes the context and the stored arguments.
pub type JobRunFn = fn(JobContext, Value) -> BoxFuture<'static, Result<Value, Error>>;

/// A registered `#[forge::job]`.
pub struct JobDef {
    pub name: &'static str,
    pub args: &'static [ArgDef],
    /// The function's doc comment (its `///` lines), carried into the generated client and the
    /// OpenAPI document; empty without one.
    pub doc: &'static str,
    /// The output type, as written in the source.
    pub output_type: &'static str,
    pub options: JobOptions,
    /// Checks JSON arguments and returns them in stored form.
    pub parse_args: fn(Value) -> Result<Value, ArgsError>,
    pub run: JobRunFn,
    /// JSON Schema of the arguments object and of the output, for codegen and OpenAPI.
    pub args_schema: fn(&mut SchemaGenerator) -> Schema,
    pub output_schema: fn(&mut SchemaGenerator) -> Schema,
}

impl std::fmt::Debug for JobDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobDef")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("output_type", &self.output_type)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

inventory::collect!(JobDef);

fn jobs_by_name() -> &'static BTreeMap<&'static str, &'static JobDef> {
    static JOBS: OnceLock<BTreeMap<&'static str, &'static JobDef>> = OnceLock::new();
    JOBS.get_or_init(|| {
        let mut map = BTreeMap::new();
        for def in inventory::iter::<JobDef> {
            if map.insert(def.name, def).is_some() {
                panic!("two #[forge::job] functions are named `{}`", def.name);
            }
        }
        map
    })
}

/// The job registered under `name`.
pub fn job(name: &str) -> Option<&'static JobDef> {
    jobs_by_name().get(name).copied()
}

/// Every registered job, ordered by name (so generated output is deterministic).
pub fn jobs() -> impl Iterator<Item = &'static JobDef> {
    jobs_by_name().values().copied()
}

/// Options of `#[forge::query(...)]` and `#[forge::mutation(...)]`.
#[derive(Debug, Clone, Copy)]
pub struct FunctionOptions {
    /// How long a call may run; `None`: the gateway's default.
    pub timeout: Option<Duration>,
    pub access: Access,
}

/// What the gateway calls to run a query: checks the JSON arguments (before anything runs),
/// then gives the future that runs the query in its context.
pub type QueryRunFn = for<'a, 'c> fn(
    &'a QueryContext<'c>,
    Value,
) -> Result<BoxFuture<'a, Result<Value, Error>>, ArgsError>;

/// What the gateway calls to run a mutation; see [`QueryRunFn`].
pub type MutationRunFn = for<'a> fn(
    &'a MutationContext,
    Value,
) -> Result<BoxFuture<'a, Result<Value, Error>>, ArgsError>;

/// A registered `#[forge::query]`.
pub struct QueryDef {
    pub name: &'static str,
    pub args: &'static [ArgDef],
    /// The function's doc comment (its `///` lines), carried into the generated client and the
    /// OpenAPI document; empty without one.
    pub doc: &'static str,
    /// The output type, as written in the source.
    pub output_type: &'static str,
    pub options: FunctionOptions,
    /// Checks JSON arguments without running anything.
    pub parse_args: fn(Value) -> Result<Value, ArgsError>,
    pub run: QueryRunFn,
    /// JSON Schema of the arguments object and of the output, for codegen and OpenAPI.
    pub args_schema: fn(&mut SchemaGenerator) -> Schema,
    pub output_schema: fn(&mut SchemaGenerator) -> Schema,
}

/// A registered `#[forge::mutation]`.
pub struct MutationDef {
    pub name: &'static str,
    pub args: &'static [ArgDef],
    /// The function's doc comment (its `///` lines), carried into the generated client and the
    /// OpenAPI document; empty without one.
    pub doc: &'static str,
    /// The output type, as written in the source.
    pub output_type: &'static str,
    pub options: FunctionOptions,
    /// Checks JSON arguments without running anything.
    pub parse_args: fn(Value) -> Result<Value, ArgsError>,
    pub run: MutationRunFn,
    /// JSON Schema of the arguments object and of the output, for codegen and OpenAPI.
    pub args_schema: fn(&mut SchemaGenerator) -> Schema,
    pub output_schema: fn(&mut SchemaGenerator) -> Schema,
}

pub use crate::workflow::def::{workflow, workflows, WorkflowDef, WorkflowOptions, WorkflowRunFn};

function_registry!(QueryDef, "#[forge::query]", queries_by_name, query, queries);
function_registry!(
    MutationDef,
    "#[forge::mutation]",
    mutations_by_name,
    mutation,
    mutations
);

/// Deserializes `args` into `T`, naming the offending field on failure. Used by the code the
/// macros generate.
pub fn parse_args<T: serde::de::DeserializeOwned + serde::Serialize>(
    args: Value,
) -> Result<Value, ArgsError> {
    let parsed: T = decode_args(args)?;
    serde_json::to_value(parsed).map_err(|e| ArgsError {
        field: ".".into(),
        message: e.to_string(),
    })
}

/// Deserializes `args` into `T`, naming the offending field on failure.
pub fn decode_args<T: serde::de::DeserializeOwned>(args: Value) -> Result<T, ArgsError> {
    // `null` stands for "no arguments" so that zero-argument functions can be called with an
    // empty body.
    let args = if args.is_null() {
        Value::Object(Default::default())
    } else {
        args
    };
    if !args.is_object() {
        return Err(ArgsError {
            field: ".".into(),
            message: format!("arguments must be a JSON object, got {}", json_kind(&args)),
        });
    }
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names a missing or unknown field in its message but not in the path.
        let field = if path == "." {
            backticked(&inner).unwrap_or(path)
        } else {
            path
        };
        ArgsError {
            field,
            message: inner,
        }
    })
}

fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The worker handlers of every registered `#[forge::job]`.
pub fn job_handlers() -> HashMap<String, Handler> {
    jobs()
        .map(|def| {
            let handler = Handler {
                run: def.run,
                timeout: def.options.timeout,
                backoff: def.options.backoff,
            };
            (def.name.to_string(), handler)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Args {
        user_id: u32,
        tags: Vec<String>,
    }

    #[test]
    fn names_the_field_of_a_wrong_type() {
        let err = decode_args::<Args>(serde_json::json!({"userId": "x", "tags": []}))
            .err()
            .unwrap();
        assert_eq!(err.field, "userId");
        assert!(err.message.contains("expected u32"), "{}", err.message);
    }

    #[test]
    fn names_a_missing_or_unknown_field() {
        let err = decode_args::<Args>(serde_json::json!({"tags": []}))
            .err()
            .unwrap();
        assert_eq!(err.field, "userId");
        let err = decode_args::<Args>(serde_json::json!({"userId": 1, "tags": [], "x": 1}))
            .err()
            .unwrap();
        assert_eq!(err.field, "x");
        let err = decode_args::<Args>(serde_json::json!({"userId": 1, "tags": [1]}))
            .err()
            .unwrap();
        assert_eq!(err.field, "tags[0]");
    }

    #[test]
    fn rejects_non_objects() {
        let err = decode_args::<Args>(serde_json::json!([1])).err().unwrap();
        assert_eq!(err.field, ".");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let d1 = b.delay(1);
        assert!(d1 >= Duration::from_millis(75) && d1 <= Duration::from_millis(125));
        let d3 = b.delay(3);
        assert!(d3 >= Duration::from_millis(300) && d3 <= Duration::from_millis(500));
        let d20 = b.delay(20);
        assert!(d20 <= Duration::from_millis(1250));
    }
}
