//! The lease loops: the heartbeat renews the leases of the jobs this node holds (and notices
//! cancel requests it missed); the fence stops attempts whose lease this node could not renew
//! in time; the rescuer gives jobs whose node died to another attempt.
//!
//! Self-fencing: when the database cannot be reached (an outage, a network partition of this
//! node, a half-open connection), leases are not renewed, and once one runs out any node's
//! rescuer may start the job again. Fenced writes alone would let both attempts work at once
//! (on files, on other services). So an attempt stops itself, as if its lease were lost, when
//! its lease has not been renewed for `lease` minus a fifth of it, judged from a time no later
//! than the database's: two attempts of one job never run at the same time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::{more_jobs, Shared};
use crate::status::JobStatus;

pub(super) async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Jobs of an open held claim are locked, not leased: nothing to renew.
        let ids: Vec<Uuid> = {
            let held_claims = shared.writer.held();
            let local = shared.local.lock().unwrap();
            local
                .held
                .keys()
                .filter(|id| !held_claims.contains(id))
                .copied()
                .collect()
        };
        if ids.is_empty() {
            continue;
        }
        let sent = Instant::now();
        // Bounded, so that a connection that hangs (half-open) does not stop the heartbeat.
        let renewal = tokio::time::timeout(
            shared.config.heartbeat_interval,
            shared
                .store
                .renew_leases(shared.worker_id, &ids, shared.config.lease),
        )
        .await;
        match renewal {
            Ok(Ok(held)) => {
                let held: HashMap<Uuid, JobStatus> = held.into_iter().collect();
                let local = shared.local.lock().unwrap();
                for id in ids {
                    let Some(cancel) = local.held.get(&id) else {
                        continue;
                    };
                    match held.get(&id) {
                        None => {
                            tracing::warn!(job_id = %id, "lost the lease of a job");
                            cancel.lose();
                        }
                        Some(status) => {
                            cancel.renewed(sent);
                            if *status == JobStatus::CancelRequested {
                                cancel.request();
                            }
                        }
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "renewing leases failed"),
            Err(_) => tracing::error!(
                timeout = %crate::text::duration(shared.config.heartbeat_interval),
                "renewing leases timed out"
            ),
        }
    }
}

/// Stops the attempts whose lease could not be renewed in time (see the module docs).
pub(super) async fn fence_loop(shared: Arc<Shared>) {
    let lease = shared.config.lease;
    let margin = lease / 5;
    let mut tick = tokio::time::interval(lease / 10);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let held_claims = shared.writer.held();
        let local = shared.local.lock().unwrap();
        for (id, cancel) in &local.held {
            // Jobs of an open held claim are locked by its transaction, not leased.
            if cancel.is_lost() || held_claims.contains(id) {
                continue;
            }
            if cancel.lease_age() + margin >= lease {
                tracing::warn!(
                    job_id = %id,
                    "the lease could not be renewed in time: stopping the attempt before \
                     another node may start the job again"
                );
                cancel.lose();
            }
        }
    }
}

pub(super) async fn reap_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match shared.store.reap_expired_leases().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(jobs = n, "recovered jobs of a worker that stopped");
                more_jobs(&shared);
            }
            Err(e) => tracing::error!(error = %e, "reaping expired leases failed"),
        }
        match shared.store.reap_lost_held_claims().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    jobs = n,
                    "jobs of a held claim that was lost go to plain claims"
                );
                more_jobs(&shared);
            }
            Err(e) => tracing::error!(error = %e, "reaping lost held claims failed"),
        }
    }
}
