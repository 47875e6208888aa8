//! Reaching the database: the global flags, and a node handle that never migrates on its own.

use forge_runtime::error::RuntimeError;
use forge_runtime::store::Store;
use forge_runtime::{DatabaseConfig, Forge};

use crate::error::CliError;

/// What every command may need: the global flags.
pub(crate) struct Context {
    database_url: Option<String>,
    session_url: Option<String>,
    pub(crate) json: bool,
}

impl Context {
    pub(crate) fn new(
        database_url: Option<String>,
        session_url: Option<String>,
        json: bool,
    ) -> Self {
        Self {
            database_url,
            session_url,
            json,
        }
    }

    /// The pools, without migrating (only `forge migrate` changes the schema).
    pub(crate) async fn store(&self) -> Result<Store, CliError> {
        let Some(url) = self.database_url.as_deref() else {
            return Err(CliError::usage(
                "no database: set DATABASE_URL or pass --database-url",
            ));
        };
        // One command at a time needs few connections; the worker's pool is never used.
        let config = DatabaseConfig {
            session_url: self.session_url.clone(),
            max_connections: 4,
            internal_connections: 1,
            ..DatabaseConfig::default()
        };
        Store::connect_with(url, config).await.map_err(|e| match e {
            // The URL is never repeated: it may hold a password.
            RuntimeError::Config { message, .. } => {
                CliError::usage(format!("invalid database URL: {message}"))
            }
            RuntimeError::Database(e) => CliError::fail(format!("cannot reach the database: {e}")),
            e => CliError::fail(e.to_string()),
        })
    }

    /// A node on a database whose schema is current. `Forge::connect` would apply missing
    /// migrations as a side effect of `jobs ls`; an operator's read must not change a
    /// production schema, so a database that is behind is refused instead.
    pub(crate) async fn forge(&self) -> Result<Forge, CliError> {
        let store = self.store().await?;
        if !store.is_ready().await {
            return Err(CliError::fail(
                "the database does not have Forge's current schema: run `forge migrate` first",
            ));
        }
        Ok(Forge::from_store(store))
    }
}
