//! The Forge demo: a Svelte page that starts jobs and a workflow and follows them live, served
//! with the API on one port.
//!
//! ```sh
//! ./dev demo                                   # builds the page, then runs this
//! npm run build -w @forge/demo-web && cargo run -p demo
//! cargo run -p demo -- generate --out examples/demo/web/src/lib/forge [--check]
//! ```
//!
//! With no `DATABASE_URL` it uses the PostgreSQL server on 127.0.0.1:5432, or else a private
//! cluster in `examples/demo/.data` (see `forge-devdb`). Settings: `settings.rs`.

mod accounts;
mod activity;
mod digest;
mod export;
mod report;
mod server;
mod settings;
mod verification;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // `demo generate --out DIR [--check]` writes (or checks) the page's typed client.
    match forge_codegen::run_from_args() {
        Ok(true) => return ExitCode::SUCCESS,
        Ok(false) => {}
        Err(e) => {
            eprintln!("demo generate: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Logs as `RUST_LOG` says; traces to `FORGE_OTLP_ENDPOINT` when it is set.
    let telemetry = match forge_gateway::telemetry::init("warn,forge_devdb=info") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match server::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
