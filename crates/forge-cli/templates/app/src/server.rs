//! Start-up: the database, the app's tables, a worker, and one HTTP server for the API
//! (`/_api/...`) and the built page.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{Html, IntoResponse, Response};
use forge::prelude::*;
use forge_gateway::error::ApiError;
use forge_gateway::{Gateway, GatewayConfig};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::settings::Settings;

/// The app's database, on whatever server `forge-devdb` finds or starts.
const DB_NAME: &str = "{{db_name}}";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) async fn run() -> Result<(), BoxError> {
    let settings = Settings::from_env()?.install();
    let db = forge_devdb::ensure(DB_NAME, &settings.data_dir).await?;
    let forge = Forge::connect(&db.url).await?;
    create_tables(&forge).await?;

    let worker = forge
        .start_worker(WorkerConfig {
            // A restart (a deploy, or `npm run dev` after an edit) waits this long for running
            // jobs; one still running after it is taken over by the next start.
            shutdown_grace: Duration::from_secs(5),
            ..WorkerConfig::default()
        })
        .await?;
    let gateway = Gateway::new(&forge, GatewayConfig::new(settings.jwt_secret.as_bytes())).await?;
    let page = page(&settings.web_dir);
    let app = gateway
        .router()
        .fallback(move |req: Request| page_or_unknown_route(page.clone(), req));

    let addr: SocketAddr = tokio::net::lookup_host((settings.host.as_str(), settings.port))
        .await?
        .next()
        .ok_or("HOST does not resolve to an address")?;
    if settings.exposes_dev_secret(addr.ip()) {
        tracing::warn!(
            %addr,
            "listening on a non-loopback address with the built-in JWT secret, which is \
             public: anyone who can reach this server can sign in as any user. \
             Set FORGE_JWT_SECRET to a secret of at least 32 bytes"
        );
    }
    let listener =
        forge_gateway::bind(addr, 1024).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // `npm run dev` and the tests read this line to find the server.
    println!("{{name}} running at http://{}", listener.local_addr()?);
    println!("  database: {}", db.source);

    serve(listener, app).await?;
    worker.shutdown().await;
    drop(gateway);
    drop(db);
    Ok(())
}

/// Creates the app's tables, once however many instances start at once (two `CREATE TABLE IF
/// NOT EXISTS` at the same moment can still collide).
async fn create_tables(forge: &Forge) -> Result<(), sqlx::Error> {
    let mut tx = forge.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('{{name}}: schema.sql'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(include_str!("schema.sql"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The built page, or a note saying how to build it.
#[derive(Clone)]
enum Page {
    Built(ServeDir<ServeFile>),
    NotBuilt,
}

fn page(dir: &Path) -> Page {
    let index = dir.join("index.html");
    if !index.is_file() {
        // Normal under `npm run dev`: Vite serves the page there, this server only the API.
        tracing::info!("no page at {}: serving the API only", dir.display());
        return Page::NotBuilt;
    }
    // Any path that is not a file gets `index.html`, so the page can do its own routing.
    Page::Built(ServeDir::new(dir).fallback(ServeFile::new(index)))
}

/// Everything no API route took: unknown `/_api` paths keep the gateway's JSON errors, the
/// rest is the page.
async fn page_or_unknown_route(page: Page, req: Request) -> Response {
    if req.uri().path().starts_with("/_api") {
        return ApiError::not_found("unknown route").into_response();
    }
    match page {
        Page::Built(files) => match files.oneshot(req).await {
            Ok(res) => res.into_response(),
            Err(never) => match never {},
        },
        Page::NotBuilt => Html(NOT_BUILT).into_response(),
    }
}

const NOT_BUILT: &str = "<!doctype html><title>{{name}}</title><body style=\"font-family:\
    system-ui;margin:4rem\"><h1>No page here yet</h1><p>This server has the API \
    (<code>/_api/...</code>) and serves the built page in <code>WEB_DIR</code> \
    (<code>web/dist</code>) when there is one. With the page <code>forge new</code> made: run \
    <code>npm run dev</code> and open the address it prints, or <code>npm run build</code> and \
    reload.</p>";

/// Serves until Ctrl-C or SIGTERM. Event streams stay open as long as their pages do, so after
/// the signal they get a short grace and are then cut (the pages reconnect to the next start).
async fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    let grace = async {
        if stop_rx.await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = std::future::IntoFuture::into_future(server) => r,
        () = grace => Ok(()),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
