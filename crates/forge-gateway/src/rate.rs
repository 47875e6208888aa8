//! The limit on starting jobs and workflows over RPC: a token bucket per signed-in user, or per
//! client address for anonymous callers.
//!
//! A bucket holds `per_minute` starts and refills at `per_minute` a minute, so a caller may
//! start a burst of a minute's worth at once and then keeps to the rate. Written here rather
//! than with `governor`: one `HashMap` entry per caller behind a lock is all it takes, and a
//! keyed `governor` limiter needs the same periodic pruning of idle keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whose bucket a start is taken from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Starter {
    User(String),
    Address(IpAddr),
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Buckets {
    map: HashMap<Starter, Bucket>,
    /// Size at which full (idle) buckets are dropped next; doubles with the live ones, so the
    /// sweep costs O(1) per start amortized.
    prune_at: usize,
}

/// Smallest `prune_at`: below it the map is never swept.
const MIN_PRUNE_AT: usize = 1024;

pub(crate) struct StartLimiter {
    per_minute: u32,
    buckets: Mutex<Buckets>,
}

impl std::fmt::Debug for StartLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartLimiter")
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

impl StartLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }

    /// Takes one start from `who`'s bucket; when it is empty, how long until it holds one.
    pub(crate) fn take(&self, who: Starter) -> Result<(), Duration> {
        let now = Instant::now();
        let cap = f64::from(self.per_minute);
        let per_sec = cap / 60.0;
        let refill = |b: &mut Bucket| {
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(cap);
            b.at = now;
        };
        // Every mutation is one field update: a poisoned lock leaves the buckets usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.map.len() >= buckets.prune_at {
            // A full bucket is the same as no bucket.
            buckets.map.retain(|_, b| {
                refill(b);
                b.tokens < cap
            });
            buckets.prune_at = (buckets.map.len() * 2).max(MIN_PRUNE_AT);
        }
        let b = buckets.map.entry(who).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        refill(b);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_a_minutes_worth_then_refused_with_the_wait() {
        let limiter = StartLimiter::new(3);
        let alice = || Starter::User("alice".into());
        for _ in 0..3 {
            limiter.take(alice()).unwrap();
        }
        let wait = limiter.take(alice()).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another caller has a bucket of its own.
        limiter.take(Starter::User("bob".into())).unwrap();
        limiter
            .take(Starter::Address("127.0.0.1".parse().unwrap()))
            .unwrap();
    }

    #[test]
    fn idle_buckets_are_dropped_as_the_map_grows() {
        let limiter = StartLimiter::new(60);
        for i in 0..MIN_PRUNE_AT {
            limiter.take(Starter::User(i.to_string())).unwrap();
        }
        // A minute later every one of them is full again.
        for b in limiter.buckets.lock().unwrap().map.values_mut() {
            b.at -= Duration::from_secs(60);
        }
        limiter.take(Starter::User("new".into())).unwrap();
        let buckets = limiter.buckets.lock().unwrap();
        assert_eq!(buckets.map.len(), 1);
        assert_eq!(buckets.prune_at, MIN_PRUNE_AT);
    }
}
