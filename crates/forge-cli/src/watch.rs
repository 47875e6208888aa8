//! `jobs watch` and `workflows watch`: a run followed through the runtime's notifier until it
//! reaches a terminal status, shown as a progress bar (a terminal), lines (anything else) or
//! NDJSON (`--json`).
//!
//! The order is the gateway's: subscribe, then read the run with the snapshot of the read, so a
//! change made between the two is seen (twice at worst) and never missed; notifications the
//! snapshot already saw are dropped, so nothing older than what was shown is shown after it.
//! When notifications may have been lost (the listener reconnected, or this reader fell behind
//! the broadcast) the run is read again.

use std::io::IsTerminal;

use forge_runtime::notifier::Event;
use forge_runtime::store::DbSnapshot;
use forge_runtime::Forge;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::db::Context;
use crate::error::CliError;
use crate::output;

/// A job or a workflow as `watch` follows it.
pub(crate) trait Followed {
    /// What is shown, and printed as one NDJSON line per change.
    type State: PartialEq + Serialize;
    /// `job` or `workflow`, for messages.
    const KIND: &'static str;

    fn id(&self) -> Uuid;

    /// The state, and the snapshot it was read with; none when the run does not exist.
    async fn read(&self, forge: &Forge) -> Result<(DbSnapshot, Option<Self::State>), CliError>;

    /// What `event` says about this run, in commit order: each update's transaction and its
    /// state, when the notification carried one; none when the notification could not be
    /// decoded (the run is read again, in case it was about this one).
    fn updates(&self, event: &Event) -> Option<Vec<(u64, Option<Self::State>)>>;

    /// `update` completed from `last`, or none when what it leaves out (an output, an error)
    /// must be read from the database.
    fn merge(last: &Self::State, update: &Self::State) -> Option<Self::State>;

    fn is_terminal(state: &Self::State) -> bool;

    /// The exit code of a terminal state.
    fn exit_code(state: &Self::State) -> u8;

    /// Lines telling what changed from `before` (none: nothing shown yet) to `now`, without
    /// the outcome.
    fn lines(before: Option<&Self::State>, now: &Self::State) -> Vec<String>;

    /// Lines telling how a terminal state ended.
    fn outcome(state: &Self::State) -> Vec<String>;

    /// The bar's position and length, and the text beside it, numbers included: a number
    /// of the template would be drawn once with the old text before the text is set.
    fn bar(state: &Self::State) -> (u64, u64, String);
}

/// Follows `run` until it ends; answers the exit code of how it ended.
pub(crate) async fn watch<F: Followed>(ctx: &Context, run: F) -> Result<u8, CliError> {
    let forge = ctx.forge().await?;
    let notifier = forge
        .notifier()
        .await
        .map_err(|e| CliError::fail(format!("cannot listen for updates: {e}")))?;
    let mut events = notifier.subscribe();
    let (snapshot, state) = run.read(&forge).await?;
    let Some(state) = state else {
        return Err(CliError::fail(format!("no such {} {}", F::KIND, run.id())));
    };
    let mut view = View::new::<F>(ctx.json)?;
    view.show::<F>(None, &state)?;
    let mut follower = Follower {
        run,
        forge: &forge,
        snapshot,
        last: state,
        view,
    };
    while !F::is_terminal(&follower.last) {
        match events.recv().await {
            Ok(Event::Reconnected) | Err(RecvError::Lagged(_)) => follower.reread(None).await?,
            Ok(event) => {
                let Some(updates) = follower.run.updates(&event) else {
                    follower.reread(None).await?;
                    continue;
                };
                for (xid, update) in updates {
                    if follower.snapshot.sees(xid) {
                        continue;
                    }
                    match update {
                        Some(u) => match F::merge(&follower.last, &u) {
                            Some(state) => follower.show(state)?,
                            // Read what the notification leaves out; a run deleted since
                            // (retention, `jobs delete`) is shown as the update tells it.
                            None => follower.reread(Some(u)).await?,
                        },
                        None => follower.reread(None).await?,
                    }
                    if F::is_terminal(&follower.last) {
                        break;
                    }
                }
            }
            Err(RecvError::Closed) => {
                return Err(CliError::fail("the database listener stopped"));
            }
        }
    }
    Ok(F::exit_code(&follower.last))
}

struct Follower<'a, F: Followed> {
    run: F,
    forge: &'a Forge,
    snapshot: DbSnapshot,
    last: F::State,
    view: View,
}

impl<F: Followed> Follower<'_, F> {
    /// Reads the run again, and takes the snapshot of that read for the notifications to come.
    async fn reread(&mut self, fallback: Option<F::State>) -> Result<(), CliError> {
        let (snapshot, state) = self.run.read(self.forge).await?;
        self.snapshot = snapshot;
        match state.or(fallback) {
            Some(state) => self.show(state),
            None => Err(CliError::fail(format!(
                "{} {} was deleted while it was watched",
                F::KIND,
                self.run.id()
            ))),
        }
    }

    fn show(&mut self, state: F::State) -> Result<(), CliError> {
        if state != self.last {
            self.view.show::<F>(Some(&self.last), &state)?;
            self.last = state;
        }
        Ok(())
    }
}

const BAR: &str = "{bar:40} {msg}";

enum View {
    Json,
    /// Stdout is not a terminal (a pipe, a file, a test): one line per change.
    Lines,
    Bar(ProgressBar),
}

impl View {
    fn new<F: Followed>(json: bool) -> Result<Self, CliError> {
        if json {
            return Ok(Self::Json);
        }
        if !std::io::stdout().is_terminal() {
            return Ok(Self::Lines);
        }
        let style = ProgressStyle::with_template(BAR)
            .map_err(|e| CliError::fail(format!("progress bar: {e}")))?;
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
        bar.set_style(style);
        Ok(Self::Bar(bar))
    }

    fn show<F: Followed>(
        &mut self,
        before: Option<&F::State>,
        now: &F::State,
    ) -> Result<(), CliError> {
        let terminal = F::is_terminal(now);
        match self {
            Self::Json => output::print_json_line(now),
            Self::Lines => {
                let mut lines = F::lines(before, now);
                if terminal {
                    lines.extend(F::outcome(now));
                }
                lines.into_iter().try_for_each(output::print)
            }
            Self::Bar(bar) => {
                let (position, length, message) = F::bar(now);
                bar.set_length(length);
                bar.set_position(position);
                bar.set_message(message);
                if !terminal {
                    return Ok(());
                }
                bar.finish_and_clear();
                F::outcome(now).into_iter().try_for_each(output::print)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_template_is_valid() {
        assert!(ProgressStyle::with_template(BAR).is_ok());
    }
}
