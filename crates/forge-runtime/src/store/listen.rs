//! The node's LISTEN connection: opened on a connection of its own (never one of the pools', so
//! request load cannot keep it from reconnecting), confirmed by a round trip, and checked.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgNotification, PgPoolOptions};
use sqlx::Executor;

use super::Store;

/// An open LISTEN connection. Each one is used until it fails, then dropped and replaced by
/// a new one (never reconnected in place: see [`Store::listen`]).
pub struct Listen {
    listener: PgListener,
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a new connection and LISTENs on `channels`. Returns only once the server has
    /// answered the LISTEN on that connection, so a notification sent after this returns is
    /// delivered; fails after `listener_check_timeout` if the database does not answer.
    ///
    /// Each connection gets a pool of one of its own: `PgListener` reconnects in place
    /// through its pool, and a reconnect that a later command triggers silently (an `UNLISTEN`
    /// on a lost connection succeeds without one) could not be told from a confirmed LISTEN.
    pub async fn listen(&self, channels: &[String]) -> Result<Listen, sqlx::Error> {
        let timeout = self.settings.config.listener_check_timeout;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_before_acquire(false)
            .connect_lazy_with(
                self.settings
                    .session
                    .clone()
                    .application_name("forge-listener"),
            );
        let open = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.eager_reconnect(false);
            listener.ignore_pool_close_event(true);
            listener
                .listen_all(channels.iter().map(String::as_str))
                .await?;
            Ok(Listen { listener })
        };
        within(timeout, open).await
    }
}

impl Listen {
    /// The next notification; `Ok(None)` or an error when the connection is gone.
    /// Cancel-safe: the check may interrupt it.
    pub async fn recv(&mut self) -> Result<Option<PgNotification>, sqlx::Error> {
        self.listener.try_recv().await
    }

    /// A round trip on this connection, within `timeout`.
    pub async fn check(&mut self, timeout: Duration) -> Result<(), sqlx::Error> {
        within(timeout, async {
            (&mut self.listener).execute("SELECT 1").await?;
            Ok(())
        })
        .await
    }
}

async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the database did not answer within {timeout:?}"),
        ))),
    }
}
