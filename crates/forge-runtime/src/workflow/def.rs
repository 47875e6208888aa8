//! The workflow registry: `#[forge::workflow]` submits one [`WorkflowDef`] per function through
//! `inventory`, like the other function macros.

use futures::future::BoxFuture;
use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

use super::WorkflowContext;
use crate::definition::{function_registry, Access, ArgDef};
use crate::error::{ArgsError, Error};

/// Options of `#[forge::workflow(...)]`.
#[derive(Debug, Clone, Copy)]
pub struct WorkflowOptions {
    /// Step names shown as `pending` from the start, in order: `steps = [..]`, else the literal
    /// step names the macro read from the body.
    pub steps: &'static [&'static str],
    /// The queue of the jobs that run the workflow.
    pub queue: &'static str,
    pub access: Access,
}

impl WorkflowOptions {
    pub const DEFAULT: WorkflowOptions = WorkflowOptions {
        steps: &[],
        queue: "default",
        access: Access::Authenticated,
    };
}

/// Runs the workflow body: takes the context and the stored arguments.
pub type WorkflowRunFn = fn(WorkflowContext, Value) -> BoxFuture<'static, Result<Value, Error>>;

/// A registered `#[forge::workflow]`.
pub struct WorkflowDef {
    pub name: &'static str,
    pub args: &'static [ArgDef],
    /// The function's doc comment (its `///` lines), carried into the generated client and the
    /// OpenAPI document; empty without one.
    pub doc: &'static str,
    /// The output type, as written in the source.
    pub output_type: &'static str,
    pub options: WorkflowOptions,
    /// Checks JSON arguments and returns them in stored form.
    pub parse_args: fn(Value) -> Result<Value, ArgsError>,
    pub run: WorkflowRunFn,
    /// JSON Schema of the arguments object and of the output, for codegen and OpenAPI.
    pub args_schema: fn(&mut SchemaGenerator) -> Schema,
    pub output_schema: fn(&mut SchemaGenerator) -> Schema,
}

function_registry!(
    WorkflowDef,
    "#[forge::workflow]",
    workflows_by_name,
    workflow,
    workflows
);
