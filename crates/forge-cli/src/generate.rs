//! `forge generate`: the TypeScript client is made from the functions an application
//! registers, which only the application's own binary holds (`forge_codegen::run_from_args`
//! in its `main`). So this builds and runs that binary's `generate` command with cargo, and
//! exits as it did.

use clap::Args as ClapArgs;

use crate::error::{self, CliError};

#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// The application's package: its binary calls `forge_codegen::run_from_args`.
    #[arg(long, short = 'p', value_name = "PACKAGE")]
    package: String,
    /// Where the client goes, from the current folder (the files' header records it as typed).
    #[arg(long, value_name = "DIR")]
    out: String,
    /// Fail if the files there are not what would be generated, instead of writing them.
    #[arg(long)]
    check: bool,
    /// The framework adapter: `svelte` (the application's default), `react` or `none`.
    #[arg(long, value_name = "ADAPTER")]
    adapter: Option<String>,
}

pub(crate) async fn run(args: Args) -> Result<u8, CliError> {
    // Cargo sets CARGO for what it runs: `cargo run -p forge-cli -- generate` then builds the
    // application with the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = tokio::process::Command::new(&cargo);
    command.args(["run", "--quiet", "-p", &args.package, "--", "generate"]);
    command.args(["--out", &args.out]);
    if args.check {
        command.arg("--check");
    }
    if let Some(adapter) = &args.adapter {
        command.args(["--adapter", adapter]);
    }
    let status = command
        .status()
        .await
        .map_err(|e| CliError::fail(format!("cannot run {}: {e}", cargo.to_string_lossy())))?;
    match status.code() {
        Some(code) => Ok(u8::try_from(code).unwrap_or(error::ERROR)),
        None => Err(CliError::fail("cargo was ended by a signal")),
    }
}
