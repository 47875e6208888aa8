//! Start-up: the database, the demo's tables, a worker, and one HTTP server for the gateway
//! (`/_api/...`), the downloads (and their cookie) and the built page.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use forge::prelude::*;
use forge_gateway::auth::Auth;
use forge_gateway::error::ApiError;
use forge_gateway::{Gateway, GatewayConfig};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::export::{self, Downloads};
use crate::settings::Settings;

/// The demo's database, on whatever server `forge-devdb` finds or starts.
const DB_NAME: &str = "forge_demo";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) async fn run() -> Result<(), BoxError> {
    let settings = Settings::from_env()?.install();
    let db = forge_devdb::ensure(DB_NAME, &settings.data_dir).await?;
    let forge = Forge::connect(&db.url).await?;
    set_up_tables(&forge).await?;
    crate::digest::ensure_digests(&forge).await?;

    let worker = forge
        .start_worker(WorkerConfig {
            // Short leases: after a crash (or `kill -9` in the browser tests) another start
            // of the demo takes the interrupted jobs over within seconds.
            lease: Duration::from_secs(6),
            heartbeat_interval: Duration::from_secs(2),
            reap_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            ..WorkerConfig::default()
        })
        .await?;
    let mut config = GatewayConfig::new(settings.jwt_secret.as_bytes());
    // The operator account's role; it opens the dashboard at `/_forge/`.
    config.admin_role = Some(crate::accounts::ADMIN_ROLE.to_owned());
    config.dashboard = true;
    let gateway = Gateway::new(&forge, config).await?;
    let downloads = Downloads {
        forge: forge.clone(),
        auth: Auth::hs256(settings.jwt_secret.as_bytes(), Duration::from_secs(30))?,
    };
    let page = page(&settings.web_dir);
    let app = gateway
        .router()
        .route(
            "/downloads/session",
            post(export::set_cookie)
                .delete(export::clear_cookie)
                .with_state(downloads.clone()),
        )
        .route(
            "/downloads/{file}",
            get(export::download).with_state(downloads),
        )
        .fallback(move |req: Request| page_or_unknown_route(page.clone(), req));

    let addr: SocketAddr = tokio::net::lookup_host((settings.host.as_str(), settings.port))
        .await?
        .next()
        .ok_or("HOST does not resolve to an address")?;
    if settings.exposes_dev_secret(addr.ip()) {
        tracing::warn!(
            %addr,
            "the demo is listening on a non-loopback address with its built-in JWT secret, \
             which is public: anyone who can reach it can sign in as any user. \
             Set FORGE_JWT_SECRET to a secret of at least 32 bytes"
        );
    }
    let listener =
        forge_gateway::bind(addr, 1024).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("Forge demo running at {url}");
    println!("  database: {}", db.source);

    serve(listener, app).await?;
    worker.shutdown().await;
    drop(gateway);
    drop(db);
    Ok(())
}

/// Creates the demo's tables and seeds them, once however many instances start at once.
async fn set_up_tables(forge: &Forge) -> Result<(), sqlx::Error> {
    let mut tx = forge.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('forge-demo-setup'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(include_str!("schema.sql"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The built Svelte page, or a page saying how to build it.
#[derive(Clone)]
enum Page {
    Built(ServeDir<ServeFile>),
    NotBuilt,
}

fn page(dir: &Path) -> Page {
    let index = dir.join("index.html");
    if !index.is_file() {
        eprintln!(
            "demo: the page is not built ({} is missing): run `npm install && npm run build -w \
             @forge/demo-web`",
            index.display()
        );
        return Page::NotBuilt;
    }
    // Any path that is not a file gets `index.html`: the page does its own routing.
    Page::Built(ServeDir::new(dir).fallback(ServeFile::new(index)))
}

/// Everything no route took: unknown `/_api` paths keep the gateway's error envelope, the
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

const NOT_BUILT: &str = "<!doctype html><title>Forge demo</title><body style=\"font-family:\
    system-ui;margin:4rem\"><h1>The page is not built</h1><p>Run <code>npm install &amp;&amp; \
    npm run build -w @forge/demo-web</code> and reload (or start with <code>./dev demo</code>, \
    which does it).</p>";

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
            tokio::time::sleep(Duration::from_secs(2)).await;
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
