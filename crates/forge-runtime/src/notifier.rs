//! The node's one LISTEN connection. It turns PostgreSQL notifications into typed [`Event`]s
//! (decoded as [`crate::publish`] defines them) and broadcasts them inside the process: workers wake on new jobs and learn of cancel requests
//! from it, and the gateway fans job and workflow updates out to its SSE sessions.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;

use crate::publish::{
    decode_job_updates, JobUpdate, WorkflowUpdates, JOBS_AVAILABLE, JOB_UPDATES, TABLE_CHANGES,
    WORKFLOW_UPDATES,
};

/// What the notifier broadcasts.
#[derive(Debug, Clone)]
pub enum Event {
    /// New jobs were inserted (any queue).
    JobsAvailable,
    JobUpdates(Arc<[JobUpdate]>),
    WorkflowUpdates(WorkflowUpdates),
    /// A watched table changed (its oid).
    TableChanged(u32),
    /// A raw payload of another channel the notifier was asked to listen on.
    Other {
        channel: Arc<str>,
        payload: Arc<str>,
    },
    /// The LISTEN connection was lost and is back. Notifications sent in between are gone:
    /// whoever keeps state derived from them must re-read it from the database.
    Reconnected,
}

/// Handle to the node's listener task. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Notifier {
    tx: broadcast::Sender<Event>,
}

impl Notifier {
    /// Starts listening on the runtime's channels plus `extra_channels`, and returns once the
    /// LISTEN is in place (so nothing sent after this returns is missed).
    pub async fn start(pool: &PgPool, extra_channels: &[&str]) -> Result<Self, sqlx::Error> {
        let mut channels = vec![JOBS_AVAILABLE, JOB_UPDATES, WORKFLOW_UPDATES, TABLE_CHANGES];
        channels.extend_from_slice(extra_channels);
        let channels: Vec<String> = channels.into_iter().map(String::from).collect();
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all(channels.iter().map(String::as_str))
            .await?;
        // Large enough to absorb bursts of batched updates; a receiver that still lags gets
        // `Lagged` and must re-read, exactly as after a reconnect.
        let (tx, _) = broadcast::channel(16_384);
        let notifier = Self { tx: tx.clone() };
        tokio::spawn(run(listener, tx));
        Ok(notifier)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

async fn run(mut listener: PgListener, tx: broadcast::Sender<Event>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if let Some(event) = parse(n.channel(), n.payload()) {
                    // An error only means nobody is subscribed right now.
                    let _ = tx.send(event);
                }
            }
            // `try_recv` reports a closed connection as `Ok(None)`, a failed read as an error.
            Ok(None) => {
                tracing::warn!("LISTEN connection lost; reconnecting");
                reconnect(&mut listener, &tx).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection error; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
                reconnect(&mut listener, &tx).await;
            }
        }
    }
}

/// Re-establishes the LISTEN connection here rather than inside the next `try_recv`, which
/// would block waiting for a notification once it is back: `Reconnected` must go out as soon as
/// the database answers again, on a quiet system too, so that receivers re-read at once.
async fn reconnect(listener: &mut PgListener, tx: &broadcast::Sender<Event>) {
    while let Err(e) = reconnect_probe(listener).await {
        tracing::warn!(error = %e, "LISTEN reconnect failed; still trying");
    }
    tracing::info!("LISTEN connection re-established");
    let _ = tx.send(Event::Reconnected);
}

/// Any command on a `PgListener` whose connection is gone reconnects and re-issues every
/// LISTEN first; UNLISTEN of a channel nobody listens on is that command without side effects.
/// Gives up (for the caller to log and call again) after about six seconds of attempts.
async fn reconnect_probe(listener: &mut PgListener) -> Result<(), sqlx::Error> {
    let mut delay = Duration::from_millis(50);
    loop {
        match listener.unlisten("forge_reconnect_probe").await {
            Ok(()) => return Ok(()),
            Err(e) if delay < Duration::from_secs(5) => {
                tracing::debug!(error = %e, "LISTEN reconnect attempt failed");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tokio::time::sleep(delay).await;
                return Err(e);
            }
        }
    }
}

fn parse(channel: &str, payload: &str) -> Option<Event> {
    match channel {
        JOBS_AVAILABLE => Some(Event::JobsAvailable),
        JOB_UPDATES => match decode_job_updates(payload) {
            Ok(updates) => Some(Event::JobUpdates(updates.into())),
            Err(e) => {
                tracing::error!(error = %e, "unreadable job update payload");
                None
            }
        },
        WORKFLOW_UPDATES => Some(Event::WorkflowUpdates(WorkflowUpdates::new(payload))),
        TABLE_CHANGES => match payload.parse::<u32>() {
            Ok(oid) => Some(Event::TableChanged(oid)),
            Err(_) => {
                tracing::error!(%payload, "unreadable table change payload");
                None
            }
        },
        _ => Some(Event::Other {
            channel: channel.into(),
            payload: payload.into(),
        }),
    }
}
