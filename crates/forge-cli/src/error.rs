//! Exit codes, and how a failure is told: one line on stderr, `forge: ` first, so a script can
//! log it as it is and a person reads it without a backtrace.

use std::io::Write;
use std::process::ExitCode;

use forge_runtime::runs::RunsError;

/// The database, the runtime or the run said no: not found, a conflict, unreachable.
pub(crate) const ERROR: u8 = 1;
/// The command line cannot be used (clap's own code for its errors, kept for ours).
pub(crate) const USAGE: u8 = 2;
/// A watched job ended `failed` or `dead_letter`, or a watched workflow `failed`.
pub(crate) const FAILED: u8 = 3;
/// A watched job ended `cancelled`.
pub(crate) const CANCELLED: u8 = 4;
/// A watched workflow ended `compensated`: it did not complete, and its steps were undone.
pub(crate) const COMPENSATED: u8 = 5;

#[derive(Debug)]
pub(crate) struct CliError {
    code: u8,
    /// None: nothing to tell (stdout was closed under us).
    message: Option<String>,
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: USAGE,
            message: Some(message.into()),
        }
    }

    pub(crate) fn fail(message: impl Into<String>) -> Self {
        Self {
            code: ERROR,
            message: Some(message.into()),
        }
    }

    /// A failed write to stdout. A reader that went away (`| head`) is not an error worth a
    /// line: the command stops quietly, as it would have if SIGPIPE had ended it.
    pub(crate) fn from_stdout(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Self {
                code: ERROR,
                message: None,
            };
        }
        Self::fail(format!("cannot write to stdout: {e}"))
    }

    pub(crate) fn exit(self) -> ExitCode {
        if let Some(message) = &self.message {
            tell(&one_line(message));
        }
        ExitCode::from(self.code)
    }
}

impl From<RunsError> for CliError {
    fn from(e: RunsError) -> Self {
        match e {
            // The runtime names fields as the HTTP API spells them; here they are flags.
            RunsError::Invalid { field, message } => {
                let flag = match field {
                    "limit" => "--limit",
                    "cursor" => "--after",
                    "createdAfter" => "--since",
                    "createdBefore" => "--until",
                    "jobIds" => "job ids",
                    other => other,
                };
                Self::usage(format!("invalid {flag}: {message}"))
            }
            RunsError::NotFound(what) => Self::fail(format!("no such {what}")),
            RunsError::Conflict(message) => Self::fail(message),
            e => Self::fail(e.to_string()),
        }
    }
}

/// A failed statement of the runtime's, as the driver words it.
pub(crate) fn database(e: impl std::fmt::Display) -> CliError {
    CliError::fail(format!("database error: {e}"))
}

/// The panic hook: a bug still reads as one line (exit 101, Rust's), not as a backtrace.
pub(crate) fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    tell(&one_line(&format!("internal error: {info}")));
}

/// `eprintln!` would panic if stderr were closed; the exit code still tells.
fn tell(message: &str) {
    let _ = writeln!(std::io::stderr(), "forge: {message}");
}

/// A database error's text may span lines (a server's DETAIL); the contract is one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help and version go out as clap prints them. Errors become one line: clap's first line and
/// the indented hints under it (possible values, a similar flag), without the usage block.
pub(crate) fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let code = u8::try_from(e.exit_code()).unwrap_or(USAGE);
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Nothing useful is left to do if stdout is gone.
        let _ = e.print();
        return ExitCode::from(code);
    }
    let text = e.render().to_string();
    let mut line = String::new();
    for part in text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
    {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part.strip_prefix("error: ").unwrap_or(part));
    }
    tell(&line);
    ExitCode::from(code)
}
