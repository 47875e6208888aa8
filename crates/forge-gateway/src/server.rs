//! The gateway as a server: its router (RPC, realtime, health, OpenAPI), the layers every
//! route shares (body limit, CORS, error envelope, panics), the listening socket, and
//! [`run`], which runs a node as its configuration says.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::map_response_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use forge_runtime::error::RuntimeError;
use forge_runtime::{DatabaseConfig, Forge};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::auth::{Auth, WeakSecret};
use crate::config::{Config, ConfigError, GatewayConfig, ListenConfig};
use crate::error::ApiError;
use crate::functions::{Caller, DuplicateName, Functions};
use crate::metrics::MetricsAccess;
use crate::rate::StartLimiter;
use crate::realtime::Realtime;
use crate::state::AppState;
use crate::{openapi, rpc};
use forge_runtime::text::panic_message;

/// Why a gateway or node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Two registered functions share a name.
    #[error(transparent)]
    DuplicateName(#[from] DuplicateName),
    /// A function is named `batch`: `/_api/rpc/batch` is the batch route.
    #[error(
        "a function is named `batch`, the name of the batch route (`/_api/rpc/batch`): rename it"
    )]
    ReservedName,
    #[error(transparent)]
    WeakSecret(#[from] WeakSecret),
    #[error(
        "invalid CORS origin `{0}`: expected `*` or an origin such as `http://localhost:5173`"
    )]
    CorsOrigin(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// The HTTP gateway of one node: RPC, realtime delivery, health, the OpenAPI document.
///
/// ```ignore
/// let gateway = Gateway::new(&forge, GatewayConfig::new(secret)).await?;
/// let listener = forge_gateway::bind("0.0.0.0:8080".parse()?, 4096)?;
/// gateway.serve(listener, shutdown_signal()).await?;
/// ```
pub struct Gateway {
    state: Arc<AppState>,
    realtime: Realtime,
    cors: Option<CorsLayer>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.state.config)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Reads the function registry and starts realtime delivery (the node's LISTEN
    /// connection).
    ///
    /// The admin role may follow every run live too, unless `realtime.see_all_role` names
    /// another role.
    pub async fn new(forge: &Forge, mut config: GatewayConfig) -> Result<Self, GatewayError> {
        if config.realtime.see_all_role.is_none() {
            config.realtime.see_all_role = config.admin_role.clone();
        }
        let auth = Auth::hs256(&config.jwt_secret, config.jwt_leeway)?
            .with_max_lifetime(config.jwt_max_lifetime);
        let functions = Arc::new(Functions::from_registry()?);
        if functions.get("batch").is_some() {
            return Err(GatewayError::ReservedName);
        }
        let cors = cors(&config.cors_origins)?;
        let realtime = Realtime::start(forge, config.realtime.clone(), auth.clone()).await?;
        let caller = Caller {
            forge: forge.clone(),
            functions: functions.clone(),
            realtime: realtime.clone(),
            default_timeout: config.function_timeout,
            max_result_bytes: config.max_result_bytes,
            starts: Arc::new(StartLimiter::new(config.max_starts_per_minute)),
        };
        let realtime = realtime.with_query_resolver(caller.clone());
        let doc = openapi::document(&functions, config.batch_limit, config.admin_role.as_deref());
        let openapi = Bytes::from(serde_json::to_vec(&doc).expect("a JSON value serializes"));
        let metrics = (config.metrics != MetricsAccess::Off).then(crate::metrics::install);
        Ok(Self {
            state: Arc::new(AppState {
                caller,
                auth,
                config: Arc::new(config),
                openapi,
                metrics,
            }),
            realtime,
            cors,
        })
    }

    pub fn realtime(&self) -> &Realtime {
        &self.realtime
    }

    /// Every route of the gateway with its layers. Merge routes of your own into it, or nest it.
    pub fn router(&self) -> Router {
        let mut ops = Router::new()
            .route("/_api/health", get(health))
            .route("/_api/ready", get(ready))
            .route("/_api/openapi.json", get(openapi_document));
        if self.state.metrics.is_some() {
            ops = ops.route(&self.state.config.metrics_path, get(crate::metrics::render));
        }
        let ops = ops.with_state(self.state.clone());
        let mut app = Router::new();
        if self.state.config.dashboard {
            app = app.merge(crate::dashboard::routes(&self.state.config.dashboard_path));
        }
        let app = app
            .merge(rpc::routes(self.state.clone()))
            .merge(crate::schedules::routes(self.state.clone()))
            .merge(crate::runs::routes(self.state.clone()))
            .merge(self.realtime.routes())
            .merge(ops)
            .fallback(unknown_route)
            .layer(axum::middleware::from_fn(trace_request))
            .layer(map_response_with_state(
                self.state.config.body_limit,
                envelope_errors,
            ))
            .layer(DefaultBodyLimit::max(self.state.config.body_limit))
            .layer(CatchPanicLayer::custom(panic_response));
        match &self.cors {
            // Outermost, so that error answers carry the CORS headers too (a browser would
            // hide them from the page otherwise).
            Some(cors) => app.layer(cors.clone()),
            None => app,
        }
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting and gives open
    /// requests (and event streams) a few seconds to end.
    ///
    /// Served with hyper's HTTP/1 connection builder rather than `axum::serve`, which sets no
    /// timer: a client that opens a connection and sends half a header (slowloris), or keeps
    /// an idle keep-alive connection, would hold it forever. hyper's header-read timeout
    /// starts as soon as a connection waits for a request, so it bounds both.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let app = self.router();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.state.config.header_read_timeout);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: the error passes, and
                        // retrying at once would spin.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY");
            }
            // The event stream caps streams per client address.
            let app = app.clone().map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
            let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
            });
        }
        drop(listener);
        // Event streams stay open as long as their clients do; after the grace period they
        // are cut, and their clients reconnect to another node.
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        Ok(())
    }
}

/// A listening socket with a large accept backlog: after a gateway restart every client
/// reconnects at once, and a short backlog would refuse most of them.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Runs a node as `config` says (gateway, workers, or both) until Ctrl-C or SIGTERM, then
/// shuts it down gracefully. This is what a Forge application's `main` calls:
///
/// ```ignore
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     forge_gateway::run(forge_gateway::Config::load()?).await?;
///     Ok(())
/// }
/// ```
pub async fn run(config: Config) -> Result<(), GatewayError> {
    let forge = Forge::connect_with_config(
        &config.database_url,
        DatabaseConfig {
            session_url: config.database_session_url.clone(),
            max_connections: config.max_connections,
            ..DatabaseConfig::default()
        },
    )
    .await?;
    // Before the worker starts: it registers its metric handles with the recorder it finds.
    if config
        .gateway
        .as_ref()
        .is_some_and(|g| g.metrics != MetricsAccess::Off)
    {
        crate::metrics::install();
    }
    let worker = if config.roles.worker {
        Some(forge.start_worker(config.worker.clone()).await?)
    } else {
        None
    };
    let served = match config.gateway {
        Some(gateway) => serve_gateway(&forge, gateway, &config.listen).await,
        None => {
            shutdown_signal().await;
            Ok(())
        }
    };
    if let Some(worker) = worker {
        worker.shutdown().await;
    }
    served
}

async fn serve_gateway(
    forge: &Forge,
    config: GatewayConfig,
    listen: &ListenConfig,
) -> Result<(), GatewayError> {
    let gateway = Gateway::new(forge, config).await?;
    let where_ = format!("{}:{}", listen.host, listen.port);
    let listen_error = |source| GatewayError::Listen {
        addr: where_.clone(),
        source,
    };
    let addr = tokio::net::lookup_host((listen.host.as_str(), listen.port))
        .await
        .map_err(listen_error)?
        .next()
        .ok_or_else(|| listen_error(std::io::ErrorKind::AddrNotAvailable.into()))?;
    let listener = bind(addr, listen.backlog).map_err(listen_error)?;
    tracing::info!(%addr, "gateway listening");
    gateway.serve(listener, shutdown_signal()).await
}

/// Ctrl-C, or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

fn cors(origins: &[String]) -> Result<Option<CorsLayer>, GatewayError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .ok()
                    .filter(|_| o.starts_with("http://") || o.starts_with("https://"))
                    .ok_or_else(|| GatewayError::CorsOrigin(o.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    ))
}

/// `GET /_api/health`: the node answers.
async fn health() -> Response {
    rpc::json_response(&json!({ "data": { "status": "ok" } }))
}

/// `GET /_api/ready`: the database answers and every migration is applied.
async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let store = s.caller.forge.store();
    let ready = tokio::time::timeout(Duration::from_secs(5), store.is_ready()).await;
    if ready == Ok(true) {
        rpc::json_response(&json!({ "data": { "status": "ready" } }))
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "not ready: the database is unreachable or its migrations are not applied",
        )
        .into_response()
    }
}

async fn openapi_document(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.clone(),
    )
        .into_response()
}

/// Each request in a `forge.http` span that continues the client's W3C `traceparent` header,
/// so that a browser's (or a calling service's) trace goes on into the call and the jobs it
/// starts. Event streams are left out: their span would last as long as the stream.
async fn trace_request(req: Request, next: axum::middleware::Next) -> Response {
    if req.uri().path() == "/_api/events" {
        return next.run(req).await;
    }
    let span = tracing::info_span!(
        "forge.http",
        otel.name = %format_args!("{} {}", req.method(), req.uri().path()),
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
    );
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        forge_runtime::trace::continue_trace(&span, tp);
    }
    next.run(req).instrument(span).await
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("unknown route")
}

/// Failures answered below the routes (axum's own rejections: a body over the limit, a
/// method the route does not take, a bad query string) in the envelope too.
async fn envelope_errors(State(body_limit): State<usize>, res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    let err = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(format!(
            "the request body is over the limit of {body_limit} bytes"
        )),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media_type(),
        StatusCode::NOT_FOUND => ApiError::not_found("unknown route"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "this route does not take this method",
        ),
        s if s.is_client_error() => {
            // axum's rejection texts describe the request, never the server.
            let text = axum::body::to_bytes(res.into_body(), 4096)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            ApiError::new(s, "bad_request", text)
        }
        s => ApiError::internal(format_args!("an internal {s} answer without a body")),
    };
    err.into_response()
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let what = panic_message(&*panic);
    ApiError::internal(format_args!("a request handler panicked: {what}")).into_response()
}
