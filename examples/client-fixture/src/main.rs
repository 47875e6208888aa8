//! A Forge app for the TypeScript client's integration tests: gateway + worker on one port,
//! with the functions of `functions.rs` and one route of its own, `POST /_test/cut-streams`,
//! which ends every open event stream from the server side (as a node going away would).
//!
//! ```sh
//! cargo build -p client-fixture
//! FIXTURE_DB=forge_client_it PORT=0 target/debug/client-fixture      # prints its URL
//! FIXTURE_DB=forge_client_it target/debug/client-fixture drop-db     # removes the database
//! target/debug/client-fixture generate --out packages/svelte/test/integration/generated [--check]
//! ```
//!
//! Settings (environment): `DATABASE_URL` (default the local server's `postgres` database);
//! `DATABASE_SESSION_URL`: a direct connection when `DATABASE_URL` is a transaction-mode
//! PgBouncer (the node's LISTEN, migrations and workflow engine use it, and so does creating
//! and dropping the database); `FIXTURE_DB`: a database of that name is created on the same
//! server and used instead;
//! `HOST` (127.0.0.1), `PORT` (0: any free port); `FORGE_JWT_SECRET` (HS256, a fixed test
//! secret by default). The admin role (`auth.admin_role`) is `admin`.

mod functions;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use forge::prelude::*;
use forge::DatabaseConfig;
use forge_gateway::{Gateway, GatewayConfig};
use futures::StreamExt;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

/// The secret of the tokens the tests sign, unless `FORGE_JWT_SECRET` says otherwise.
const DEFAULT_SECRET: &str = "client-fixture-secret-for-tests-only-0123456789";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    // The typed client the integration tests import (`trackCountSteps`, ...).
    match forge_codegen::run_from_args() {
        Ok(true) => return ExitCode::SUCCESS,
        Ok(false) => {}
        Err(e) => {
            eprintln!("client-fixture generate: {e}");
            return ExitCode::FAILURE;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let drop_db = std::env::args().nth(1).as_deref() == Some("drop-db");
    let result = if drop_db {
        drop_database().await
    } else {
        run().await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client-fixture: {e}");
            ExitCode::FAILURE
        }
    }
}

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn session_url() -> Option<String> {
    std::env::var("DATABASE_SESSION_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Where databases are created and dropped: a session, not a pooler's transaction.
fn admin_url() -> String {
    session_url().unwrap_or_else(server_url)
}

/// `url` naming the database `db` instead of its own.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("//").map_or(0, |i| i + 2);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn fixture_db() -> Result<Option<String>, BoxError> {
    match std::env::var("FIXTURE_DB") {
        Ok(name)
            if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() =>
        {
            Ok(Some(name))
        }
        Ok(name) => Err(format!("FIXTURE_DB `{name}`: use letters, digits and _ only").into()),
        Err(_) => Ok(None),
    }
}

/// The URLs to use (main, session): on the database `FIXTURE_DB` (created if missing), or
/// `DATABASE_URL` and `DATABASE_SESSION_URL` themselves.
async fn database_urls() -> Result<(String, Option<String>), BoxError> {
    let (server, session) = (server_url(), session_url());
    let Some(name) = fixture_db()? else {
        return Ok((server, session));
    };
    let mut admin = PgConnection::connect(&admin_url()).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await?;
    if exists.is_none() {
        // Two starts at once: the loser's "already exists" is fine.
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
        {
            let duplicate = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04");
            if !duplicate {
                return Err(e.into());
            }
        }
    }
    Ok((
        with_database(&server, &name),
        session.map(|s| with_database(&s, &name)),
    ))
}

async fn drop_database() -> Result<(), BoxError> {
    let name = fixture_db()?.ok_or("drop-db needs FIXTURE_DB")?;
    let mut admin = PgConnection::connect(&admin_url()).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

async fn run() -> Result<(), BoxError> {
    let (url, session_url) = database_urls().await?;
    let forge = Forge::connect_with_config(
        &url,
        DatabaseConfig {
            session_url,
            ..DatabaseConfig::default()
        },
    )
    .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS fixture_gates (name text PRIMARY KEY);
         CREATE TABLE IF NOT EXISTS fixture_notes (
             id bigserial PRIMARY KEY, topic text NOT NULL, text text NOT NULL);",
    )
    .execute(forge.pool())
    .await?;
    let worker = forge
        .start_worker(WorkerConfig {
            // A killed fixture's jobs are taken over soon by the next start.
            lease: Duration::from_secs(4),
            heartbeat_interval: Duration::from_secs(1),
            reap_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(2),
            ..WorkerConfig::default()
        })
        .await?;
    let secret = std::env::var("FORGE_JWT_SECRET").unwrap_or_else(|_| DEFAULT_SECRET.into());
    let mut config = GatewayConfig::new(secret.as_bytes());
    // Tokens with the role `admin` may act on every user's runs (`/_api/admin/...`).
    config.admin_role = Some("admin".into());
    let gateway = Gateway::new(&forge, config).await?;

    let (cut_tx, _) = watch::channel(0u64);
    let cut = Arc::new(cut_tx);
    let app = gateway
        .router()
        .layer(axum::middleware::from_fn_with_state(
            cut.clone(),
            cuttable_streams,
        ))
        .route("/_test/cut-streams", post(cut_streams).with_state(cut));

    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = std::env::var("PORT")
        .ok()
        .map(|p| p.parse())
        .transpose()
        .map_err(|e| format!("PORT: {e}"))?
        .unwrap_or(0);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or("HOST does not resolve")?;
    let listener = forge_gateway::bind(addr, 1024)?;
    // The test harness reads this line to learn the port.
    println!(
        "client-fixture listening on http://{}",
        listener.local_addr()?
    );

    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    worker.shutdown().await;
    served.map_err(Into::into)
}

/// Ends the body of every `/_api/events` response when the cut counter changes.
async fn cuttable_streams(
    State(cut): State<Arc<watch::Sender<u64>>>,
    req: Request,
    next: Next,
) -> Response {
    let is_events = req.uri().path() == "/_api/events";
    let res = next.run(req).await;
    if !is_events || !res.status().is_success() {
        return res;
    }
    let mut rx = cut.subscribe();
    let (parts, body) = res.into_parts();
    let body = body.into_data_stream().take_until(async move {
        let _ = rx.changed().await;
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// `POST /_test/cut-streams`: ends every open event stream; answers how many were open.
async fn cut_streams(State(cut): State<Arc<watch::Sender<u64>>>) -> impl IntoResponse {
    let open = cut.receiver_count();
    cut.send_modify(|n| *n += 1);
    axum::Json(serde_json::json!({ "data": open }))
}
