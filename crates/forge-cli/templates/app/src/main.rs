//! {{name}}: a Forge app. Its README says how to run and test it.
//!
//! ```sh
//! cargo run                # the server: the API, a worker and the built page
//! cargo run -- {{generate}}    # the typed TypeScript client (`--check`: is it current?)
//! ```
//!
//! With no `DATABASE_URL` it uses the PostgreSQL server on 127.0.0.1:5432, or else a private
//! cluster in `.data/` (see `forge-devdb`). Other settings: `settings.rs`.

mod items;
mod notes;
mod server;
mod session;
mod settings;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // `{{name}} generate --out DIR [--check]` writes (or checks) the page's typed client from
    // the functions registered in this binary, then exits; anything else starts the server.
    match forge_codegen::run_from_args() {
        Ok(true) => return ExitCode::SUCCESS,
        Ok(false) => {}
        Err(e) => {
            eprintln!("{{name}} generate: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Logs as `RUST_LOG` says; traces to `FORGE_OTLP_ENDPOINT` when it is set.
    let telemetry = match forge_gateway::telemetry::init("warn,forge_devdb=info") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{{name}}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match server::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{{name}}: {e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
