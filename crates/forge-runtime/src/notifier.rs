//! The node's one LISTEN connection, checked every few seconds and replaced when it stops
//! answering. It turns PostgreSQL notifications into typed [`Event`]s (decoded as
//! [`crate::publish`] defines them) and broadcasts them inside the process: workers wake on new
//! jobs and learn of cancel requests from it, and the gateway fans job and workflow updates out
//! to its SSE sessions.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::publish::{
    decode_job_updates, JobUpdate, WorkflowUpdates, JOBS_AVAILABLE, JOB_UPDATES, SESSION_CALLS,
    TABLE_CHANGES, WORKFLOW_UPDATES,
};
use crate::store::{Listen, Store};

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
    /// Starts listening on the runtime's channels plus `extra_channels`, on a connection of
    /// its own, and returns once the LISTEN is in place (so nothing sent after this returns is
    /// missed).
    pub async fn start(store: &Store, extra_channels: &[&str]) -> Result<Self, sqlx::Error> {
        let mut channels = vec![
            JOBS_AVAILABLE,
            JOB_UPDATES,
            WORKFLOW_UPDATES,
            TABLE_CHANGES,
            SESSION_CALLS,
        ];
        channels.extend_from_slice(extra_channels);
        let channels: Vec<String> = channels.into_iter().map(String::from).collect();
        let listen = store.listen(&channels).await?;
        // Large enough to absorb bursts of batched updates; a receiver that still lags gets
        // `Lagged` and must re-read, exactly as after a reconnect.
        let (tx, _) = broadcast::channel(16_384);
        let notifier = Self { tx: tx.clone() };
        tokio::spawn(run(store.clone(), channels, listen, tx));
        Ok(notifier)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Passes notifications on until the connection fails or stops answering its check, then
/// replaces it. A half-open connection (the peer gone without a FIN or RST) reports nothing
/// by itself, so a round trip every `listener_check_interval` is what notices it: within
/// interval + timeout, then the replacement.
async fn run(
    store: Store,
    channels: Vec<String>,
    mut listen: Listen,
    tx: broadcast::Sender<Event>,
) {
    let (interval, timeout) = {
        let c = store.config();
        (c.listener_check_interval, c.listener_check_timeout)
    };
    loop {
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = listen.recv() => match received {
                    Ok(Some(n)) => {
                        if let Some(event) = parse(n.channel(), n.payload()) {
                            // An error only means nobody is subscribed right now.
                            let _ = tx.send(event);
                        }
                    }
                    // A closed connection is `Ok(None)`, a failed read an error.
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection error; reconnecting");
                        break;
                    }
                },
                _ = check.tick() => {
                    if let Err(e) = listen.check(timeout).await {
                        tracing::warn!(error = %e, "LISTEN connection did not answer its check; replacing it");
                        break;
                    }
                }
            }
        }
        listen = reconnect(&store, &channels).await;
        tracing::info!("LISTEN connection re-established");
        // Only now, after the new connection confirmed its LISTEN: a receiver's re-read
        // sees everything a notification it missed would have told it.
        let _ = tx.send(Event::Reconnected);
    }
}

/// Opens new LISTEN connections until one is confirmed, backing off up to 5 s between
/// attempts.
async fn reconnect(store: &Store, channels: &[String]) -> Listen {
    let mut delay = Duration::from_millis(50);
    loop {
        match store.listen(channels).await {
            Ok(listen) => return listen,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN reconnect failed; still trying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
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
