//! An SSE client that follows jobs and workflows as the TypeScript client does
//! (`packages/client`): one stream per client; after every (re)connect, a new session, and every
//! followed job or workflow not yet finished is subscribed again, the answer carrying its current
//! state; the stream is reopened with exponential backoff and jitter (500 ms doubling to 5 s,
//! half of it random) whenever it ends or fails. Every state seen is recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Harness;
use crate::sse::{SseItem, SseStream};

/// Final statuses: nothing follows them.
pub const JOB_TERMINAL: &[&str] = &["completed", "failed", "dead_letter", "cancelled"];
pub const WORKFLOW_TERMINAL: &[&str] = &["completed", "failed", "compensated"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Job,
    Workflow,
}

/// One state the client saw, from a pushed event or a subscribe answer.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub status: String,
    pub progress: Option<f64>,
}

/// What the client saw of one job or workflow.
#[derive(Debug, Clone)]
pub struct Followed {
    pub kind: Kind,
    pub seen: Vec<Seen>,
    /// Pushed events received: a subscribe answer is dropped when an event came while it was
    /// on its way, since the answer is then the older state (docs/protocol.md, ordering).
    events: u64,
}

impl Followed {
    /// Whether the client saw a final status.
    pub fn saw_terminal(&self) -> bool {
        let terminal = match self.kind {
            Kind::Job => JOB_TERMINAL,
            Kind::Workflow => WORKFLOW_TERMINAL,
        };
        self.seen
            .iter()
            .any(|s| terminal.contains(&s.status.as_str()))
    }

    /// Times progress went down between two `running` states with no other status seen in
    /// between (so within what the client can tell is one attempt).
    pub fn progress_backwards(&self) -> usize {
        self.seen
            .windows(2)
            .filter(|w| {
                w[0].status == "running"
                    && w[1].status == "running"
                    && matches!((w[0].progress, w[1].progress), (Some(a), Some(b)) if b < a)
            })
            .count()
    }
}

#[derive(Default)]
struct State {
    session: Option<(String, String)>,
    followed: BTreeMap<String, Followed>,
}

/// A client of one node's event stream. Stops when dropped.
pub struct Follower {
    base: String,
    user: String,
    http: reqwest::Client,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// Starts following on the node at `base` as `user`; the stream opens in the background.
    pub fn start(http: reqwest::Client, base: &str, user: &str) -> Follower {
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(run(
            http.clone(),
            base.to_string(),
            user.to_string(),
            state.clone(),
        ));
        Follower {
            base: base.into(),
            user: user.into(),
            http,
            state,
            task,
        }
    }

    /// Waits (at most `within`) until the stream is open.
    pub async fn wait_open(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.state.lock().unwrap().session.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Follows a job or workflow from now on (subscribing now if the stream is open, else at
    /// the next connect).
    pub async fn follow(&self, kind: Kind, id: &str) {
        let session = {
            let mut s = self.state.lock().unwrap();
            s.followed.entry(id.to_string()).or_insert(Followed {
                kind,
                seen: Vec::new(),
                events: 0,
            });
            s.session.clone()
        };
        if let Some(session) = session {
            subscribe(
                &self.http,
                &self.base,
                &self.user,
                &self.state,
                &session,
                kind,
                id,
            )
            .await;
        }
    }

    /// What the client saw so far.
    pub fn followed(&self) -> BTreeMap<String, Followed> {
        self.state.lock().unwrap().followed.clone()
    }
}

/// Records a state: from a pushed event (`answer_after` `None`), or from a subscribe answer
/// sent when `answer_after` events had been received.
fn record(state: &Mutex<State>, id: &str, job_state: &Value, answer_after: Option<u64>) {
    let Some(status) = job_state["status"].as_str() else {
        return;
    };
    let mut s = state.lock().unwrap();
    if let Some(f) = s.followed.get_mut(id) {
        match answer_after {
            Some(n) if f.events > n => return,
            Some(_) => {}
            None => f.events += 1,
        }
        f.seen.push(Seen {
            at: Instant::now(),
            status: status.to_string(),
            progress: job_state["progress"].as_f64(),
        });
    }
}

/// `subscribe-job` / `subscribe-workflow` with the id as the subscription id; records the
/// state of the answer. A failure is left to the next reconnect, as the TypeScript client does.
async fn subscribe(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    state: &Mutex<State>,
    session: &(String, String),
    kind: Kind,
    id: &str,
) {
    let (route, field) = match kind {
        Kind::Job => ("subscribe-job", "jobId"),
        Kind::Workflow => ("subscribe-workflow", "workflowId"),
    };
    let events_before = state
        .lock()
        .unwrap()
        .followed
        .get(id)
        .map_or(0, |f| f.events);
    let body = json!({
        "sessionId": session.0, "sessionSecret": session.1, "subscriptionId": id, field: id,
    });
    let res = http
        .post(format!("{base}/_api/{route}"))
        .bearer_auth(Harness::token(user))
        .json(&body)
        .send()
        .await;
    if let Ok(res) = res {
        if res.status().is_success() {
            if let Ok(v) = res.json::<Value>().await {
                record(state, id, &v["data"], Some(events_before));
            }
        }
    }
}

async fn run(http: reqwest::Client, base: String, user: String, state: Arc<Mutex<State>>) {
    let mut failures = 0u32;
    loop {
        let url = format!("{base}/_api/events");
        // A client without a response timeout: the stream is long-lived.
        if let Ok(mut stream) = SseStream::open(&http, &url, Some(&Harness::token(&user))).await {
            let mut opened = false;
            while let Some((_, item)) = stream.next_item(Duration::from_secs(3600)).await {
                let SseItem::Event { event, data } = item else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                match event.as_str() {
                    "session" => {
                        let session = (
                            v["sessionId"].as_str().unwrap_or_default().to_string(),
                            v["sessionSecret"].as_str().unwrap_or_default().to_string(),
                        );
                        opened = true;
                        failures = 0;
                        let pending: Vec<(String, Kind)> = {
                            let mut s = state.lock().unwrap();
                            s.session = Some(session.clone());
                            s.followed
                                .iter()
                                .filter(|(_, f)| !f.saw_terminal())
                                .map(|(id, f)| (id.clone(), f.kind))
                                .collect()
                        };
                        // Re-subscribed in the background: events already flow meanwhile.
                        let (http, base, user, state) =
                            (http.clone(), base.clone(), user.clone(), state.clone());
                        tokio::spawn(async move {
                            for (id, kind) in pending {
                                subscribe(&http, &base, &user, &state, &session, kind, &id).await;
                            }
                        });
                    }
                    "job" | "workflow" if opened => {
                        if let Some(id) = v["subscriptionId"].as_str() {
                            record(&state, id, &v["state"], None);
                        }
                    }
                    _ => {}
                }
            }
        }
        state.lock().unwrap().session = None;
        let base_delay = (500u64 << failures.min(4)).min(5000);
        let delay = base_delay - (base_delay as f64 * 0.5 * fastrand::f64()) as u64;
        failures += 1;
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}
