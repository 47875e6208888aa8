//! What can go wrong while generating or checking the client.

use std::path::PathBuf;

/// Why the client could not be generated, written or checked.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum CodegenError {
    /// The command line of `<app> generate` is wrong.
    #[error("{0}\nusage: <app> generate --out <DIR> [--adapter svelte|react|none] [--check]")]
    Usage(String),

    /// Two different Rust types carry the same schema name, so they would be one TypeScript
    /// type.
    #[error(
        "two different Rust types are both named `{name}` (used by `{first}` and by `{second}`): \
         rename one, or give it another name with #[schemars(rename = \"...\")] \
         (for a generic type: #[schemars(rename = \"{name}For{{T}}\")])"
    )]
    TypeNameCollision {
        name: String,
        first: String,
        second: String,
    },

    /// Two functions would be exported under the same TypeScript name.
    #[error(
        "`{ts_name}` would be generated for both `{first}` and `{second}`: rename one of them"
    )]
    NameClash {
        ts_name: String,
        first: String,
        second: String,
    },

    /// A name cannot be used in the generated TypeScript.
    #[error("`{name}` cannot be used in the generated TypeScript: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// A schema refers to a type whose definition is missing.
    #[error("the schema of `{function}` refers to `{reference}`, which has no definition")]
    DanglingRef { function: String, reference: String },

    /// Reading or writing a generated file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `--check` found a generated file that differs from what would be generated now.
    #[error("{} is stale: {hint}\nrun `{command}` to update it", path.display())]
    Stale {
        path: PathBuf,
        /// Where the first difference is.
        hint: String,
        /// The command that brings the file up to date.
        command: String,
    },
}

// `main` returning `Result<_, CodegenError>` prints the error with `Debug`; the message is
// what a user needs there, not the variant's fields.
impl std::fmt::Debug for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
