//! The lease loops: the heartbeat renews the leases of the jobs this node holds (and notices
//! cancel requests it missed); the rescuer gives jobs whose node died to another attempt.

use std::collections::HashMap;
use std::sync::Arc;

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
        match shared
            .store
            .renew_leases(shared.worker_id, &ids, shared.config.lease)
            .await
        {
            Ok(held) => {
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
                        Some(JobStatus::CancelRequested) => cancel.request(),
                        Some(_) => {}
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "renewing leases failed"),
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
