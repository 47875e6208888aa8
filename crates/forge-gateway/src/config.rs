//! (Over 500 lines with its unit tests, which are a fifth of it; the configuration is one table.)
//!
//! Configuration of a node: `forge.toml`, with environment variables overriding it.
//!
//! ```toml
//! [database]
//! url = "postgres://app@db/app"    # DATABASE_URL (required)
//! session_url = "postgres://app@db-direct/app"  # DATABASE_SESSION_URL: set when `url` is a
//!                                  # transaction-mode pooler (PgBouncer); see docs/operations.md
//! max_connections = 20             # FORGE_DATABASE_MAX_CONNECTIONS
//!
//! [node]
//! roles = ["gateway", "worker"]    # FORGE_ROLES=gateway,worker
//!
//! [gateway]
//! host = "0.0.0.0"                 # FORGE_HOST
//! port = 8080                      # PORT
//! cors_origins = ["http://localhost:5173"]  # FORGE_CORS_ORIGINS (comma-separated, "*": any)
//! body_limit = 1048576             # FORGE_BODY_LIMIT, bytes
//! function_timeout = "30s"         # FORGE_FUNCTION_TIMEOUT
//! batch_limit = 100                # FORGE_BATCH_LIMIT
//! listen_backlog = 4096            # FORGE_LISTEN_BACKLOG
//! header_read_timeout = "10s"      # FORGE_HEADER_READ_TIMEOUT: also closes idle keep-alives
//! max_sessions = 10000             # FORGE_MAX_SESSIONS: event streams per node
//! max_sessions_per_user = 20       # FORGE_MAX_SESSIONS_PER_USER
//! max_sessions_per_ip = 200        # FORGE_MAX_SESSIONS_PER_IP
//! anonymous_session_lifetime = "1h" # FORGE_ANONYMOUS_SESSION_LIFETIME
//! max_live_queries = 10000         # FORGE_MAX_LIVE_QUERIES: query groups per node
//! max_starts_per_minute = 120      # FORGE_MAX_STARTS_PER_MINUTE: jobs/workflows per caller
//! max_result_bytes = 4194304       # FORGE_MAX_RESULT_BYTES: a query's or mutation's answer, as JSON
//! metrics = "off"                  # FORGE_METRICS: off, admin (the admin role) or open (anyone)
//! metrics_path = "/_api/metrics"   # FORGE_METRICS_PATH: where Prometheus text is served
//! dashboard = false                # FORGE_DASHBOARD: serve the operators' dashboard (admin role)
//! dashboard_path = "/_forge/"      # FORGE_DASHBOARD_PATH: where it is served
//!
//! [auth]
//! jwt_secret = "..."               # FORGE_JWT_SECRET (required on gateway nodes, >= 32 bytes)
//! leeway = "30s"                   # FORGE_JWT_LEEWAY: clock skew tolerated on `exp` and `nbf`
//! max_token_lifetime = "24h"       # FORGE_JWT_MAX_LIFETIME: longer-lived tokens are refused
//! admin_role = "admin"             # FORGE_ADMIN_ROLE: may watch and cancel every job
//!
//! [worker]
//! concurrency = 16                 # FORGE_WORKER_CONCURRENCY
//! queues = ["default"]             # FORGE_WORKER_QUEUES (comma-separated)
//! ```
//!
//! The file is `./forge.toml`, or the one `FORGE_CONFIG` names; without either, the environment
//! alone configures the node. Unknown keys are refused, so a typo does not go unnoticed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use forge_runtime::WorkerConfig;
use serde::Deserialize;

use crate::realtime::RealtimeConfig;

/// Why the configuration could not be loaded. Each names the setting at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A required setting is in neither the file nor the environment.
    #[error("missing required setting `{setting}`: set it in forge.toml or with the environment variable {env}")]
    Missing {
        setting: &'static str,
        env: &'static str,
    },
    /// A setting has a value that cannot be used.
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Serves HTTP: RPC and realtime.
    pub gateway: bool,
    /// Runs jobs.
    pub worker: bool,
}

/// How the gateway answers: authentication, limits, CORS, realtime.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The HS256 secret bearer tokens are signed with.
    pub jwt_secret: Vec<u8>,
    /// Clock skew tolerated on a token's `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// Tokens valid for longer than this (`exp - iat`, or `exp - now`) are refused.
    pub jwt_max_lifetime: Duration,
    /// Users with this role may watch and cancel every job, not only their own.
    pub admin_role: Option<String>,
    /// Origins a browser may call from; `*` allows any. Empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// How long a function may run when it declares no `timeout` of its own.
    pub function_timeout: Duration,
    /// Most calls in one batch.
    pub batch_limit: usize,
    /// How long a connection may take to send a request's headers, counted from when it
    /// starts waiting for one: bounds slow senders and idle keep-alive connections alike.
    pub header_read_timeout: Duration,
    /// Jobs and workflows one caller (a signed-in user, else a client address) may start over
    /// RPC a minute, a whole minute's worth at once at most: a token bucket per caller.
    pub max_starts_per_minute: u32,
    /// Largest answer of a query or mutation (a call or a live-query run), in bytes of JSON.
    pub max_result_bytes: usize,
    /// Who may read Prometheus metrics at `metrics_path`; off by default.
    pub metrics: crate::metrics::MetricsAccess,
    /// Where metrics are served when they are on.
    pub metrics_path: String,
    /// Serve the operators' dashboard (its data needs the admin role); off by default.
    pub dashboard: bool,
    /// Where the dashboard is served: a path that starts and ends with `/`.
    pub dashboard_path: String,
    pub realtime: RealtimeConfig,
}

impl GatewayConfig {
    /// Defaults with this token secret.
    pub fn new(jwt_secret: impl Into<Vec<u8>>) -> Self {
        Self {
            jwt_secret: jwt_secret.into(),
            jwt_leeway: Duration::from_secs(30),
            jwt_max_lifetime: crate::auth::DEFAULT_MAX_LIFETIME,
            admin_role: None,
            cors_origins: Vec::new(),
            body_limit: 1024 * 1024,
            function_timeout: Duration::from_secs(30),
            batch_limit: 100,
            header_read_timeout: Duration::from_secs(10),
            max_starts_per_minute: 120,
            max_result_bytes: 4 * 1024 * 1024,
            metrics: crate::metrics::MetricsAccess::Off,
            metrics_path: "/_api/metrics".into(),
            dashboard: false,
            dashboard_path: "/_forge/".into(),
            realtime: RealtimeConfig::default(),
        }
    }
}

/// Where a gateway listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    pub host: String,
    pub port: u16,
    /// Connections the kernel queues before they are accepted: large, so that a burst of
    /// reconnecting clients (a gateway restart) is not refused.
    pub backlog: u32,
}

/// A node's whole configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    pub database_url: String,
    /// A direct (session) connection for the LISTEN connection, migrations and the workflow
    /// engine, when `database_url` goes through a transaction-mode pooler.
    pub database_session_url: Option<String>,
    pub max_connections: u32,
    pub roles: Roles,
    pub listen: ListenConfig,
    /// Set on gateway nodes.
    pub gateway: Option<GatewayConfig>,
    pub worker: WorkerConfig,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    database: DatabaseFile,
    #[serde(default)]
    node: NodeFile,
    #[serde(default)]
    gateway: GatewayFile,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    worker: WorkerFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DatabaseFile {
    url: Option<String>,
    session_url: Option<String>,
    max_connections: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    roles: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    host: Option<String>,
    port: Option<u16>,
    cors_origins: Option<Vec<String>>,
    body_limit: Option<usize>,
    function_timeout: Option<String>,
    batch_limit: Option<usize>,
    listen_backlog: Option<u32>,
    header_read_timeout: Option<String>,
    max_sessions: Option<usize>,
    max_sessions_per_user: Option<usize>,
    max_sessions_per_ip: Option<usize>,
    anonymous_session_lifetime: Option<String>,
    max_live_queries: Option<usize>,
    max_starts_per_minute: Option<u32>,
    max_result_bytes: Option<usize>,
    metrics: Option<String>,
    metrics_path: Option<String>,
    dashboard: Option<bool>,
    dashboard_path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    jwt_secret: Option<String>,
    leeway: Option<String>,
    max_token_lifetime: Option<String>,
    admin_role: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WorkerFile {
    concurrency: Option<usize>,
    queues: Option<Vec<String>>,
}

impl Config {
    /// Reads `FORGE_CONFIG` (or `./forge.toml` if it exists) and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let (path, required) = match std::env::var_os("FORGE_CONFIG") {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from("forge.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_sources(text.as_deref().map(|t| (path.as_path(), t)), |name| {
            std::env::var(name).ok()
        })
    }

    /// Builds the configuration from a file's text (and its path, for messages) and an
    /// environment lookup; the environment wins.
    pub fn from_sources(
        file: Option<(&Path, &str)>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let f: File = match file {
            Some((path, text)) => toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?,
            None => File::default(),
        };
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let database_url = env("DATABASE_URL")
            .or(f.database.url)
            .ok_or(ConfigError::Missing {
                setting: "database.url",
                env: "DATABASE_URL",
            })?;
        let database_session_url = env("DATABASE_SESSION_URL").or(f.database.session_url);
        let max_connections = positive(
            "database.max_connections",
            env("FORGE_DATABASE_MAX_CONNECTIONS"),
            f.database.max_connections,
            20,
        )?;

        let roles = match env("FORGE_ROLES").map(|v| list(&v)).or(f.node.roles) {
            None => Roles {
                gateway: true,
                worker: true,
            },
            Some(names) => roles(&names)?,
        };

        let listen = ListenConfig {
            host: env("FORGE_HOST")
                .or(f.gateway.host)
                .unwrap_or_else(|| "0.0.0.0".into()),
            port: number("gateway.port", env("PORT"), f.gateway.port, 8080)?,
            backlog: number(
                "gateway.listen_backlog",
                env("FORGE_LISTEN_BACKLOG"),
                f.gateway.listen_backlog,
                4096,
            )?,
        };

        let gateway = if roles.gateway {
            let secret =
                env("FORGE_JWT_SECRET")
                    .or(f.auth.jwt_secret)
                    .ok_or(ConfigError::Missing {
                        setting: "auth.jwt_secret",
                        env: "FORGE_JWT_SECRET",
                    })?;
            if secret.len() < crate::auth::MIN_SECRET_LEN {
                return Err(invalid(
                    "auth.jwt_secret",
                    "must be at least 32 bytes long (a shorter HS256 key can be guessed)",
                ));
            }
            let mut g = GatewayConfig::new(secret);
            if let Some(v) = env("FORGE_JWT_LEEWAY").or(f.auth.leeway) {
                g.jwt_leeway = duration("auth.leeway", &v)?;
            }
            if let Some(v) = env("FORGE_JWT_MAX_LIFETIME").or(f.auth.max_token_lifetime) {
                g.jwt_max_lifetime = duration("auth.max_token_lifetime", &v)?;
                if g.jwt_max_lifetime.is_zero() {
                    return Err(invalid("auth.max_token_lifetime", "must be more than 0"));
                }
            }
            g.admin_role = env("FORGE_ADMIN_ROLE").or(f.auth.admin_role);
            g.realtime.see_all_role = g.admin_role.clone();
            if let Some(origins) = env("FORGE_CORS_ORIGINS")
                .map(|v| list(&v))
                .or(f.gateway.cors_origins)
            {
                g.cors_origins = origins;
            }
            g.body_limit = number(
                "gateway.body_limit",
                env("FORGE_BODY_LIMIT"),
                f.gateway.body_limit,
                g.body_limit,
            )?;
            if let Some(v) = env("FORGE_FUNCTION_TIMEOUT").or(f.gateway.function_timeout) {
                g.function_timeout = duration("gateway.function_timeout", &v)?;
            }
            g.batch_limit = positive(
                "gateway.batch_limit",
                env("FORGE_BATCH_LIMIT"),
                f.gateway.batch_limit,
                g.batch_limit,
            )?;
            if let Some(v) = env("FORGE_HEADER_READ_TIMEOUT").or(f.gateway.header_read_timeout) {
                g.header_read_timeout = duration("gateway.header_read_timeout", &v)?;
                if g.header_read_timeout.is_zero() {
                    return Err(invalid(
                        "gateway.header_read_timeout",
                        "must be more than 0",
                    ));
                }
            }
            let caps = [
                (
                    "gateway.max_sessions",
                    "FORGE_MAX_SESSIONS",
                    f.gateway.max_sessions,
                    &mut g.realtime.max_sessions,
                ),
                (
                    "gateway.max_sessions_per_user",
                    "FORGE_MAX_SESSIONS_PER_USER",
                    f.gateway.max_sessions_per_user,
                    &mut g.realtime.max_sessions_per_user,
                ),
                (
                    "gateway.max_sessions_per_ip",
                    "FORGE_MAX_SESSIONS_PER_IP",
                    f.gateway.max_sessions_per_ip,
                    &mut g.realtime.max_sessions_per_ip,
                ),
                (
                    "gateway.max_live_queries",
                    "FORGE_MAX_LIVE_QUERIES",
                    f.gateway.max_live_queries,
                    &mut g.realtime.max_query_groups,
                ),
                (
                    "gateway.max_result_bytes",
                    "FORGE_MAX_RESULT_BYTES",
                    f.gateway.max_result_bytes,
                    &mut g.max_result_bytes,
                ),
            ];
            for (setting, var, file, value) in caps {
                *value = positive(setting, env(var), file, *value)?;
            }
            g.max_starts_per_minute = positive(
                "gateway.max_starts_per_minute",
                env("FORGE_MAX_STARTS_PER_MINUTE"),
                f.gateway.max_starts_per_minute,
                g.max_starts_per_minute,
            )?;
            if let Some(v) =
                env("FORGE_ANONYMOUS_SESSION_LIFETIME").or(f.gateway.anonymous_session_lifetime)
            {
                let setting = "gateway.anonymous_session_lifetime";
                g.realtime.anonymous_session_lifetime = duration(setting, &v)?;
                if g.realtime.anonymous_session_lifetime.is_zero() {
                    return Err(invalid(setting, "must be more than 0"));
                }
            }
            if let Some(v) = env("FORGE_METRICS").or(f.gateway.metrics) {
                g.metrics = crate::metrics::MetricsAccess::parse(&v).ok_or_else(|| {
                    invalid(
                        "gateway.metrics",
                        format!("must be `off`, `admin` or `open`, not `{v}`"),
                    )
                })?;
            }
            if let Some(v) = env("FORGE_METRICS_PATH").or(f.gateway.metrics_path) {
                if !v.starts_with('/') || v.len() < 2 {
                    return Err(invalid(
                        "gateway.metrics_path",
                        format!("must be a path such as `/metrics`, not `{v}`"),
                    ));
                }
                g.metrics_path = v;
            }
            if let Some(v) = env("FORGE_DASHBOARD") {
                g.dashboard = match v.as_str() {
                    "true" | "1" | "on" => true,
                    "false" | "0" | "off" => false,
                    _ => {
                        return Err(invalid(
                            "gateway.dashboard",
                            format!("must be `true` or `false`, not `{v}`"),
                        ))
                    }
                };
            } else if let Some(on) = f.gateway.dashboard {
                g.dashboard = on;
            }
            if let Some(v) = env("FORGE_DASHBOARD_PATH").or(f.gateway.dashboard_path) {
                if !v.starts_with('/')
                    || !v.ends_with('/')
                    || v.len() < 3
                    || v.starts_with("/_api/")
                {
                    return Err(invalid(
                        "gateway.dashboard_path",
                        format!("must be a path that starts and ends with `/`, such as `/_forge/`, outside `/_api/`, not `{v}`"),
                    ));
                }
                g.dashboard_path = v;
            }
            Some(g)
        } else {
            None
        };

        let mut worker = WorkerConfig::default();
        worker.concurrency = positive(
            "worker.concurrency",
            env("FORGE_WORKER_CONCURRENCY"),
            f.worker.concurrency,
            worker.concurrency,
        )?;
        if let Some(queues) = env("FORGE_WORKER_QUEUES")
            .map(|v| list(&v))
            .or(f.worker.queues)
        {
            if queues.is_empty() {
                return Err(invalid("worker.queues", "must name at least one queue"));
            }
            worker.queues = queues;
        }

        Ok(Config {
            database_url,
            database_session_url,
            max_connections,
            roles,
            listen,
            gateway,
            worker,
        })
    }
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// A comma-separated list, as environment variables give them.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn roles(names: &[String]) -> Result<Roles, ConfigError> {
    let mut r = Roles {
        gateway: false,
        worker: false,
    };
    for name in names {
        match name.as_str() {
            "gateway" => r.gateway = true,
            "worker" => r.worker = true,
            other => {
                return Err(invalid(
                    "node.roles",
                    format!("unknown role `{other}`: expected `gateway` and/or `worker`"),
                ))
            }
        }
    }
    if !r.gateway && !r.worker {
        return Err(invalid(
            "node.roles",
            "a node needs at least one role: `gateway`, `worker`",
        ));
    }
    Ok(r)
}

/// The environment's value (text) if set, else the file's, else `default`.
fn number<T: std::str::FromStr>(
    setting: &'static str,
    env: Option<String>,
    file: Option<T>,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match env {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| invalid(setting, format!("`{v}` is not a valid number: {e}"))),
        None => Ok(file.unwrap_or(default)),
    }
}

/// [`number`], refused when it is 0 (`must be at least 1`).
fn positive<T>(
    setting: &'static str,
    env: Option<String>,
    file: Option<T>,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    let value = number(setting, env, file, default)?;
    if value == T::default() {
        return Err(invalid(setting, "must be at least 1"));
    }
    Ok(value)
}

/// `"250ms"`, `"30s"`, `"5m"`, `"2h"`.
fn duration(setting: &'static str, v: &str) -> Result<Duration, ConfigError> {
    let s = v.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || {
        invalid(
            setting,
            format!(
                "`{v}` is not a duration: write a whole number and a unit: ms, s, m or h (\"30s\")"
            ),
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(file.map(|t| (Path::new("forge.toml"), t)), |k| {
            env.get(k).cloned()
        })
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let file = format!(
            "[database]\nurl = \"postgres://file\"\n[gateway]\nport = 9000\nfunction_timeout = \"5s\"\n[auth]\njwt_secret = \"{SECRET}\"\n"
        );
        let c = load(Some(&file), &[("PORT", "9100")]).unwrap();
        assert_eq!(c.database_url, "postgres://file");
        assert_eq!(c.listen.port, 9100);
        let g = c.gateway.unwrap();
        assert_eq!(g.function_timeout, Duration::from_secs(5));
        assert_eq!(g.jwt_secret, SECRET.as_bytes());
        let c = load(
            Some(&file),
            &[
                ("DATABASE_URL", "postgres://env"),
                ("FORGE_ROLES", "worker"),
            ],
        )
        .unwrap();
        assert_eq!(c.database_url, "postgres://env");
        assert!(c.gateway.is_none());
        assert!(c.roles.worker && !c.roles.gateway);
    }

    #[test]
    fn the_session_url_is_optional_and_the_environment_wins() {
        let file = format!(
            "[database]\nurl = \"postgres://bouncer\"\n[auth]\njwt_secret = \"{SECRET}\"\n"
        );
        assert_eq!(load(Some(&file), &[]).unwrap().database_session_url, None);
        let file = file.replace("[auth]", "session_url = \"postgres://direct\"\n[auth]");
        let c = load(Some(&file), &[]).unwrap();
        assert_eq!(c.database_session_url.as_deref(), Some("postgres://direct"));
        let c = load(Some(&file), &[("DATABASE_SESSION_URL", "postgres://env")]).unwrap();
        assert_eq!(c.database_session_url.as_deref(), Some("postgres://env"));
    }

    #[test]
    fn a_missing_required_setting_is_named() {
        let err = load(None, &[("FORGE_JWT_SECRET", SECRET)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("missing required setting `database.url`")
                && err.to_string().contains("DATABASE_URL"),
            "{err}"
        );
        let err = load(None, &[("DATABASE_URL", "postgres://x")]).unwrap_err();
        assert!(err.to_string().contains("`auth.jwt_secret`"), "{err}");
        assert!(err.to_string().contains("FORGE_JWT_SECRET"), "{err}");
        // A worker-only node needs no token secret.
        load(
            None,
            &[("DATABASE_URL", "postgres://x"), ("FORGE_ROLES", "worker")],
        )
        .unwrap();
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let base = [
            ("DATABASE_URL", "postgres://x"),
            ("FORGE_JWT_SECRET", SECRET),
        ];
        let err = load(Some("[gateway]\nprot = 1\n"), &base).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let err = load(None, &[base[0], base[1], ("PORT", "http")]).unwrap_err();
        assert!(err.to_string().contains("`gateway.port`"), "{err}");
        let err = load(None, &[base[0], base[1], ("FORGE_FUNCTION_TIMEOUT", "5")]).unwrap_err();
        assert!(
            err.to_string().contains("`gateway.function_timeout`"),
            "{err}"
        );
        let err = load(None, &[base[0], base[1], ("FORGE_ROLES", "gateway,cron")]).unwrap_err();
        assert!(err.to_string().contains("unknown role `cron`"), "{err}");
        let err = load(None, &[base[0], ("FORGE_JWT_SECRET", "short")]).unwrap_err();
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }

    #[test]
    fn the_dashboard_is_off_by_default_and_set_by_file_or_environment() {
        let base = [
            ("DATABASE_URL", "postgres://x"),
            ("FORGE_JWT_SECRET", SECRET),
        ];
        let g = load(None, &base).unwrap().gateway.unwrap();
        assert_eq!(
            (g.dashboard, g.dashboard_path.as_str()),
            (false, "/_forge/")
        );
        let file = "[gateway]\ndashboard = true\ndashboard_path = \"/ops/\"\n";
        let g = load(Some(file), &base).unwrap().gateway.unwrap();
        assert_eq!((g.dashboard, g.dashboard_path.as_str()), (true, "/ops/"));
        let g = load(
            Some(file),
            &[base[0], base[1], ("FORGE_DASHBOARD", "false")],
        )
        .unwrap()
        .gateway
        .unwrap();
        assert!(!g.dashboard);
        let err = load(None, &[base[0], base[1], ("FORGE_DASHBOARD", "yes")]).unwrap_err();
        assert!(err.to_string().contains("`gateway.dashboard`"), "{err}");
        for bad in ["/ops", "ops/", "/_api/ops/"] {
            let err = load(None, &[base[0], base[1], ("FORGE_DASHBOARD_PATH", bad)]).unwrap_err();
            assert!(
                err.to_string().contains("`gateway.dashboard_path`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn metrics_are_off_by_default_and_set_by_file_or_environment() {
        use crate::metrics::MetricsAccess;
        let base = [
            ("DATABASE_URL", "postgres://x"),
            ("FORGE_JWT_SECRET", SECRET),
        ];
        let g = load(None, &base).unwrap().gateway.unwrap();
        assert_eq!(
            (g.metrics, g.metrics_path.as_str()),
            (MetricsAccess::Off, "/_api/metrics")
        );
        let file = "[gateway]\nmetrics = \"admin\"\nmetrics_path = \"/metrics\"\n";
        let g = load(Some(file), &base).unwrap().gateway.unwrap();
        assert_eq!(
            (g.metrics, g.metrics_path.as_str()),
            (MetricsAccess::Admin, "/metrics")
        );
        let g = load(Some(file), &[base[0], base[1], ("FORGE_METRICS", "open")])
            .unwrap()
            .gateway
            .unwrap();
        assert_eq!(g.metrics, MetricsAccess::Open);
        let err = load(None, &[base[0], base[1], ("FORGE_METRICS", "on")]).unwrap_err();
        assert!(
            err.to_string().contains("`gateway.metrics`") && err.to_string().contains("`on`"),
            "{err}"
        );
        let err = load(None, &[base[0], base[1], ("FORGE_METRICS_PATH", "metrics")]).unwrap_err();
        assert!(err.to_string().contains("`gateway.metrics_path`"), "{err}");
    }

    #[test]
    fn lists_from_the_environment() {
        let c = load(
            None,
            &[
                ("DATABASE_URL", "postgres://x"),
                ("FORGE_JWT_SECRET", SECRET),
                ("FORGE_CORS_ORIGINS", "http://a:5173, http://b"),
                ("FORGE_ADMIN_ROLE", "admin"),
            ],
        )
        .unwrap();
        let g = c.gateway.unwrap();
        assert_eq!(g.cors_origins, ["http://a:5173", "http://b"]);
        assert_eq!(g.jwt_max_lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(g.header_read_timeout, Duration::from_secs(10));
        let c = load(
            Some("[auth]\nmax_token_lifetime = \"1h\"\n"),
            &[
                ("DATABASE_URL", "postgres://x"),
                ("FORGE_JWT_SECRET", SECRET),
            ],
        )
        .unwrap();
        assert_eq!(
            c.gateway.unwrap().jwt_max_lifetime,
            Duration::from_secs(3600)
        );
        assert_eq!(g.realtime.see_all_role.as_deref(), Some("admin"));
    }

    #[test]
    fn stream_caps_from_the_file_and_the_environment() {
        let base = [
            ("DATABASE_URL", "postgres://x"),
            ("FORGE_JWT_SECRET", SECRET),
        ];
        let g = load(None, &base).unwrap().gateway.unwrap();
        assert_eq!(
            (
                g.realtime.max_sessions,
                g.realtime.max_sessions_per_user,
                g.realtime.max_sessions_per_ip
            ),
            (10_000, 20, 200)
        );
        let g = load(
            Some("[gateway]\nmax_sessions = 50\nmax_sessions_per_ip = 7\nmax_live_queries = 9\n"),
            &[base[0], base[1], ("FORGE_MAX_SESSIONS_PER_USER", "3")],
        )
        .unwrap()
        .gateway
        .unwrap();
        assert_eq!(
            (
                g.realtime.max_sessions,
                g.realtime.max_sessions_per_user,
                g.realtime.max_sessions_per_ip
            ),
            (50, 3, 7)
        );
        assert_eq!(g.realtime.max_query_groups, 9);
        assert_eq!(g.max_starts_per_minute, 120);
        assert_eq!(
            g.realtime.anonymous_session_lifetime,
            Duration::from_secs(3600)
        );
        let g = load(
            Some("[gateway]\nmax_starts_per_minute = 5\n"),
            &[base[0], base[1]],
        )
        .unwrap()
        .gateway
        .unwrap();
        assert_eq!(g.max_starts_per_minute, 5);
        assert_eq!(g.max_result_bytes, 4 * 1024 * 1024);
        let g = load(
            Some("[gateway]\nanonymous_session_lifetime = \"10m\"\n"),
            &base,
        )
        .unwrap()
        .gateway
        .unwrap();
        assert_eq!(
            g.realtime.anonymous_session_lifetime,
            Duration::from_secs(600)
        );
        let err = load(
            None,
            &[base[0], base[1], ("FORGE_MAX_SESSIONS_PER_IP", "0")],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("`gateway.max_sessions_per_ip`"),
            "{err}"
        );
    }
}
