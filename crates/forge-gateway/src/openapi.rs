//! The OpenAPI 3 document of the gateway (`GET /_api/openapi.json`), generated from the
//! function registry: one `POST /_api/rpc/{fn}` operation per function, with the JSON Schema
//! of its arguments and output, its access, and the error envelope of every failure. Generic
//! tools (schemathesis, Postman, client generators) can drive the API from it.

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::functions::{Function, Functions};
use forge_runtime::registry::Access;
use forge_runtime::{JobState, JobStatus, WorkflowState, WorkflowStatus};

/// Error statuses and the component response describing each.
const ERRORS: &[(&str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "Malformed JSON or call (`bad_request`), or arguments that do not fit (`invalid_args`, `details.field` names the field)",
    ),
    ("401", "Unauthenticated", "No token where one is needed, or a bad or expired token"),
    ("403", "Forbidden", "Signed in, but without the role the function needs"),
    ("404", "NotFound", "Unknown function, or what the call refers to does not exist"),
    ("409", "Conflict", "The current state does not allow the call"),
    ("413", "PayloadTooLarge", "The body (or the batch) is over the limit"),
    ("415", "UnsupportedMediaType", "The body is not `application/json`"),
    ("422", "Unprocessable", "The function refused its well-typed input"),
    ("500", "Internal", "Internal error; `correlationId` finds it in the server log"),
    ("504", "Timeout", "The function ran past its timeout"),
];

/// The document, for the functions of `functions`.
pub(crate) fn document(
    functions: &Functions,
    batch_limit: usize,
    admin_role: Option<&str>,
) -> Value {
    let mut gen = SchemaGenerator::new(SchemaSettings::openapi3());
    let mut paths = Map::new();
    for f in functions.iter() {
        paths.insert(format!("/_api/rpc/{}", f.name()), operation(&mut gen, f));
    }
    crate::schedules::annotate_openapi(&mut paths);
    paths.insert("/_api/rpc".into(), generic_call());
    paths.insert("/_api/rpc/batch".into(), batch(batch_limit));
    let job_status = gen.subschema_for::<JobStatus>();
    let job_status = finish(&mut gen, job_status);
    paths.insert("/_api/cancel-job".into(), cancel("job", job_status));
    let workflow_status = gen.subschema_for::<WorkflowStatus>();
    let workflow_status = finish(&mut gen, workflow_status);
    paths.insert(
        "/_api/cancel-workflow".into(),
        cancel("workflow", workflow_status),
    );
    for (path, op) in crate::runs::openapi_paths(&mut gen, admin_role, &finish, &error_refs) {
        paths.insert(path, op);
    }
    paths.insert(
        "/_api/health".into(),
        probe("health", "The node answers HTTP"),
    );
    paths.insert(
        "/_api/ready".into(),
        probe(
            "ready",
            "The database is reachable and every migration applied (503 `unavailable` otherwise)",
        ),
    );

    let mut schemas = gen.take_definitions(true);
    schemas.insert("Error".into(), error_object());
    schemas.insert(
        "ErrorEnvelope".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "$ref": "#/components/schemas/Error" } },
        }),
    );
    let mut responses = Map::new();
    for (_, name, description) in ERRORS {
        responses.insert(
            (*name).into(),
            json!({
                "description": description,
                "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/ErrorEnvelope" }
                } }
            }),
        );
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Forge gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every function registered with #[forge::query], #[forge::mutation] or #[forge::job], callable with its JSON arguments. See docs/protocol.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
            },
        },
    })
}

/// A schema of the generator, made OpenAPI 3.0 (the generator applies its transforms only to
/// the definitions it keeps).
fn finish(gen: &mut SchemaGenerator, mut schema: Schema) -> Value {
    for t in gen.transforms_mut() {
        t.transform(&mut schema);
    }
    schema.to_value()
}

fn operation(gen: &mut SchemaGenerator, f: Function) -> Value {
    let (args, output, summary) = match f {
        Function::Query(d) => {
            let args = (d.args_schema)(gen);
            let output = (d.output_schema)(gen);
            (args, finish_output(gen, output), "Query: reads")
        }
        Function::Mutation(d) => {
            let args = (d.args_schema)(gen);
            let output = (d.output_schema)(gen);
            (
                args,
                finish_output(gen, output),
                "Mutation: writes in one transaction",
            )
        }
        Function::Job(d) => {
            let args = (d.args_schema)(gen);
            let state = gen.subschema_for::<JobState>();
            let state = finish(gen, state);
            let output = json!({
                "type": "object",
                "required": ["jobId", "state"],
                "properties": {
                    "jobId": { "type": "string", "format": "uuid" },
                    "state": state,
                },
            });
            (args, output, "Job: starts it, owned by the caller")
        }
        Function::Workflow(d) => {
            let args = (d.args_schema)(gen);
            let state = gen.subschema_for::<WorkflowState>();
            let state = finish(gen, state);
            let output = json!({
                "type": "object",
                "required": ["workflowId", "state"],
                "properties": {
                    "workflowId": { "type": "string", "format": "uuid" },
                    "state": state,
                },
            });
            (args, output, "Workflow: starts it, owned by the caller")
        }
    };
    let args = finish(gen, args);
    let required_args = args
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty());
    let access = f.access();
    let (security, access_text) = match access {
        Access::Public => (json!([]), "public".to_string()),
        Access::Authenticated => (json!([{ "bearerAuth": [] }]), "signed-in users".into()),
        Access::Role(r) => (
            json!([{ "bearerAuth": [] }]),
            format!("signed-in users with the role `{r}`"),
        ),
    };
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": "The function's result",
            "content": { "application/json": { "schema": {
                "type": "object",
                "required": ["data"],
                "properties": { "data": output },
            } } },
        }),
    );
    for (status, name, _) in ERRORS {
        let applies = match *status {
            "401" => !matches!(access, Access::Public),
            "403" => matches!(access, Access::Role(_)),
            "409" | "422" => matches!(f, Function::Query(_) | Function::Mutation(_)),
            _ => true,
        };
        if applies {
            responses.insert(
                (*status).into(),
                json!({ "$ref": format!("#/components/responses/{name}") }),
            );
        }
    }
    let mut op = json!({
        "operationId": f.name(),
        "summary": format!("{summary}. Callable by {access_text}."),
        "tags": [f.kind()],
        "security": security,
        "requestBody": {
            "required": required_args,
            "content": { "application/json": { "schema": args } },
        },
        "responses": responses,
    });
    if !f.doc().is_empty() {
        op["description"] = f.doc().into();
    }
    json!({ "post": op })
}

/// OpenAPI 3.0 has no `null` type: `()` (a function that returns nothing) is described as
/// a nullable value instead.
fn finish_output(gen: &mut SchemaGenerator, schema: Schema) -> Value {
    let v = finish(gen, schema);
    if v.get("type").and_then(Value::as_str) == Some("null") {
        json!({ "nullable": true, "enum": [null] })
    } else {
        v
    }
}

fn error_refs(statuses: &[&str]) -> Map<String, Value> {
    ERRORS
        .iter()
        .filter(|(s, _, _)| statuses.contains(s))
        .map(|(s, name, _)| {
            (
                (*s).to_string(),
                json!({ "$ref": format!("#/components/responses/{name}") }),
            )
        })
        .collect()
}

fn generic_call() -> Value {
    let mut responses = error_refs(&[
        "400", "401", "403", "404", "409", "413", "415", "422", "500", "504",
    ]);
    responses.insert(
        "200".into(),
        json!({ "description": "The function's result", "content": { "application/json": {
            "schema": { "type": "object", "required": ["data"], "properties": { "data": {} } }
        } } }),
    );
    json!({ "post": {
        "operationId": "_call",
        "summary": "Calls any function by name (what the generated client uses); the per-function operations describe each one.",
        "tags": ["rpc"],
        "requestBody": { "required": true, "content": { "application/json": { "schema": call_schema() } } },
        "responses": responses,
    } })
}

fn call_schema() -> Value {
    json!({
        "type": "object",
        "required": ["fn"],
        "additionalProperties": false,
        "properties": {
            "fn": { "type": "string" },
            "args": { "type": "object" },
            "follow": {
                "type": "object",
                "required": ["sessionId", "sessionSecret", "subscriptionId"],
                "additionalProperties": false,
                "properties": {
                    "sessionId": { "type": "string", "format": "uuid" },
                    "sessionSecret": { "type": "string" },
                    "subscriptionId": { "type": "string", "minLength": 1, "maxLength": 200 },
                },
            },
        },
    })
}

fn batch(limit: usize) -> Value {
    let mut responses = error_refs(&["400", "401", "413", "415", "500"]);
    responses.insert(
        "200".into(),
        json!({ "description": "One result per call, in order: `data` or `error`", "content": { "application/json": { "schema": {
            "type": "object",
            "required": ["results"],
            "properties": { "results": { "type": "array", "items": {
                "type": "object",
                "properties": {
                    "data": {},
                    "error": { "$ref": "#/components/schemas/Error" },
                },
            } } },
        } } } }),
    );
    json!({ "post": {
        "operationId": "_batch",
        "summary": "Several calls in one request: queries run side by side, other calls one after another in the order given.",
        "tags": ["rpc"],
        "requestBody": { "required": true, "content": { "application/json": { "schema": {
            "type": "array", "maxItems": limit, "items": call_schema(),
        } } } },
        "responses": responses,
    } })
}

/// `POST /_api/cancel-job` or `/_api/cancel-workflow`.
fn cancel(what: &str, status: Value) -> Value {
    let id = format!("{what}Id");
    let mut id_schema = Map::new();
    id_schema.insert(id.clone(), json!({ "type": "string", "format": "uuid" }));
    let mut responses = error_refs(&["400", "401", "404", "409", "413", "415", "500"]);
    responses.insert(
        "200".into(),
        json!({ "description": "The job's status after the request", "content": { "application/json": { "schema": {
            "type": "object",
            "required": ["data"],
            "properties": { "data": {
                "type": "object", "required": ["status"],
                "properties": { "status": status },
            } },
        } } } }),
    );
    json!({ "post": {
        "operationId": format!("_cancel_{what}"),
        "summary": format!("Cancels a {what} the caller owns (or any, with the admin role)."),
        "tags": [what],
        "security": [{ "bearerAuth": [] }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": {
            "type": "object", "required": [id], "additionalProperties": false,
            "properties": id_schema,
        } } } },
        "responses": responses,
    } })
}

fn probe(name: &str, summary: &str) -> Value {
    json!({ "get": {
        "operationId": format!("_{name}"),
        "summary": summary,
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": { "description": summary, "content": { "application/json": { "schema": {
                "type": "object", "required": ["data"],
                "properties": { "data": { "type": "object", "properties": { "status": { "type": "string" } } } },
            } } } },
            "503": { "description": "Not ready", "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/ErrorEnvelope" }
            } } },
        },
    } })
}

fn error_object() -> Value {
    json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": { "type": "string", "enum": [
                "invalid_args", "bad_request", "unauthenticated", "forbidden", "not_found",
                "method_not_allowed", "conflict", "payload_too_large", "unsupported_media_type",
                "unprocessable", "timeout", "unavailable", "internal",
            ] },
            "message": { "type": "string" },
            "details": {},
            "correlationId": { "type": "string" },
        },
    })
}
