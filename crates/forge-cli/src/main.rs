//! `forge`, the operator's command line: lists, inspects, follows and fixes jobs and workflows,
//! migrates the database, and generates the TypeScript client; and, for a developer, makes a
//! new app (`forge new`). See `docs/cli.md` and `docs/new.md`.
//!
//! It talks to PostgreSQL itself, through the runtime's runs API (the calls the HTTP admin
//! routes make), so it needs no running node and no token: whoever can reach the database may
//! use it, as with `psql`.

mod args;
mod db;
mod error;
mod generate;
mod jobs;
mod migrate;
mod new;
mod output;
mod watch;
mod workflows;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::db::Context;

#[derive(Parser)]
#[command(
    name = "forge",
    version,
    about = "Forge's command line: jobs, workflows, migrations, the generated client and new apps",
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 a watched run failed, \
                  4 a watched job was cancelled, 5 a watched workflow was compensated."
)]
struct Cli {
    /// The application's PostgreSQL database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// A direct connection, when DATABASE_URL is a transaction-mode pooler (PgBouncer):
    /// `migrate` takes its lock on it.
    #[arg(
        long,
        env = "DATABASE_SESSION_URL",
        global = true,
        hide_env_values = true
    )]
    database_session_url: Option<String>,
    /// Print JSON (the runs API's shapes) instead of tables and text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List, show, watch, retry, cancel and delete jobs.
    #[command(subcommand)]
    Jobs(jobs::Command),
    /// List, show and watch workflows, and send them events.
    #[command(subcommand)]
    Workflows(workflows::Command),
    /// Apply the runtime's migrations that the database does not have yet.
    Migrate,
    /// Generate (or check) the TypeScript client of an application crate.
    Generate(generate::Args),
    /// Make a new app: a Rust crate, its server and a page (see docs/new.md).
    ///
    /// The crate has a job, a query and a mutation; the page (Svelte or React) starts the job
    /// with the generated client and shows its progress. `npm run dev` in the new folder runs
    /// it, `npm test` tests it.
    New(new::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    std::panic::set_hook(Box::new(error::report_panic));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return error::clap_exit(e),
    };
    let ctx = Context::new(cli.database_url, cli.database_session_url, cli.json);
    let result = match cli.command {
        Command::Jobs(c) => jobs::run(&ctx, c).await,
        Command::Workflows(c) => workflows::run(&ctx, c).await,
        Command::Migrate => migrate::run(&ctx).await,
        Command::Generate(a) => generate::run(a).await,
        Command::New(a) => new::run(a, cli.json).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => e.exit(),
    }
}
