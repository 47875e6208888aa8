//! The LISTEN connection's liveness, through a TCP proxy between the node and PostgreSQL: a
//! half-open listener (bytes stop, no RST) is replaced within 15 s with the default settings,
//! and `Reconnected` (the cue to re-read) only ever follows a LISTEN the server confirmed.

use std::str::FromStr;
use std::time::{Duration, Instant};

use forge::prelude::*;
use forge::updates::Event;
use forge::DatabaseConfig;
use forge_test_support::proxy::Proxy;
use forge_test_support::TestDb;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::sync::broadcast;

#[forge::job]
async fn listened_to(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

/// The test database behind a proxy; returns the proxy and the URL that goes through it.
async fn proxied(db: &TestDb) -> (Proxy, String) {
    let opts = PgConnectOptions::from_str(&db.url).unwrap();
    let upstream = format!("{}:{}", opts.get_host(), opts.get_port());
    let addr = tokio::net::lookup_host(upstream.as_str())
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(addr).await.unwrap();
    let url = db.url.replacen(&upstream, &proxy.addr().to_string(), 1);
    assert_ne!(url, db.url, "the URL names its host and port");
    (proxy, url)
}

/// Waits for the next event `want` accepts, for at most `within`.
async fn next_event<T>(
    events: &mut broadcast::Receiver<Event>,
    within: Duration,
    mut want: impl FnMut(&Event) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) => {
                if let Some(t) = want(&e) {
                    return Some(t);
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
        }
    }
}

/// Enqueues a job and cancels it (it stays `pending`: no worker runs): the cancel is
/// published on `forge_job_updates`. True once the subscriber saw it.
async fn update_reaches(forge: &Forge, events: &mut broadcast::Receiver<Event>) -> bool {
    let id = forge.enqueue(listened_to::request()).await.unwrap();
    forge.cancel_job(id, None).await.unwrap();
    next_event(events, Duration::from_secs(5), |e| match e {
        Event::JobUpdates(u) => u
            .iter()
            .any(|u| u.job_id == id && u.status == JobStatus::Cancelled)
            .then_some(()),
        _ => None,
    })
    .await
    .is_some()
}

#[tokio::test]
async fn a_half_open_listener_is_replaced_within_15_s() {
    let db = TestDb::new().await;
    let (proxy, url) = proxied(&db).await;
    let forge = Forge::connect_with_config(&url, DatabaseConfig::default())
        .await
        .unwrap();
    let mut events = forge.notifier().await.unwrap().subscribe();
    assert!(update_reaches(&forge, &mut events).await);

    // Find the listener's connection in the proxy by its port, as the server sees it.
    let observer = PgPool::connect(&db.url).await.unwrap();
    let port: i32 = sqlx::query_scalar(
        "SELECT client_port FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'forge-listener'",
    )
    .fetch_one(&observer)
    .await
    .unwrap();
    let conn = proxy
        .connections()
        .into_iter()
        .find(|c| i32::from(c.upstream_local.port()) == port)
        .expect("the listener's connection goes through the proxy");
    proxy.blackhole_connection(conn.id);
    let cut = Instant::now();

    let replaced = next_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, Event::Reconnected).then(|| cut.elapsed())
    })
    .await
    .expect("the half-open listener was never replaced");
    assert!(
        replaced <= Duration::from_secs(15),
        "replaced after {replaced:?}"
    );
    // A new connection, not the held one come back.
    assert!(proxy.connections().iter().any(|c| c.id > conn.id));
    assert!(
        update_reaches(&forge, &mut events).await,
        "an update published after the replacement reaches the subscriber"
    );
    forge.close().await;
}

#[tokio::test]
async fn reconnected_only_follows_a_confirmed_listen() {
    let db = TestDb::new().await;
    let (proxy, url) = proxied(&db).await;
    let forge = Forge::connect_with_config(&url, DatabaseConfig::default())
        .await
        .unwrap();
    let mut events = forge.notifier().await.unwrap().subscribe();

    // The database is down: every connection is reset, every new one refused.
    proxy.refuse();
    let early = next_event(&mut events, Duration::from_secs(4), |e| {
        matches!(e, Event::Reconnected).then_some(())
    })
    .await;
    assert!(
        early.is_none(),
        "Reconnected was announced while the database was unreachable"
    );

    proxy.heal();
    next_event(&mut events, Duration::from_secs(15), |e| {
        matches!(e, Event::Reconnected).then_some(())
    })
    .await
    .expect("the listener came back once the database did");
    assert!(update_reaches(&forge, &mut events).await);
    forge.close().await;
}
