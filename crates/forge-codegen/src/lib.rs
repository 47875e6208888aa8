//! # forge-codegen
//!
//! Writes the typed TypeScript client of a Forge app from its registered functions: every
//! `#[forge::job]`, `#[forge::workflow]`, `#[forge::query]` and `#[forge::mutation]` linked into
//! the app binary, with the JSON Schemas (schemars) of their arguments and outputs.
//!
//! An app calls it first thing in `main`:
//!
//! ```ignore
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     if forge_codegen::run_from_args()? {
//!         return Ok(()); // `<app> generate --out src/lib/forge [--check]` ran
//!     }
//!     // ... start the app
//! }
//! ```
//!
//! `<app> generate --out web/src/lib/forge [--adapter svelte|react|none]` writes
//! `web/src/lib/forge/api.ts`, importing the framework-free core, `@forge/client` (and, with
//! `--adapter react`, `@forge/react` for its hooks); `--check` writes nothing and fails (exit
//! status 1) naming the file and its first differing line when the file on disk is stale, for
//! CI and tests. The output is deterministic: types and functions sorted by name, no
//! timestamps.
//!
//! The adapter (default `svelte`) only adds to the core functions: their stores are Svelte
//! stores as they are, so `svelte` adds a note and `none` nothing; `react` adds a hook per
//! job, workflow and query, which takes its client from the nearest `ForgeProvider`.
//!
//! ## What is generated
//!
//! | Rust | TypeScript (in `api.ts`) |
//! |---|---|
//! | `#[forge::job] fn export_users(ctx, format: String) -> Result<R>` | `trackExportUsers(args: { format: string })`: starts the job and follows it (a job store); `followExportUsers(jobId)`: follows one started earlier. React: `useTrackExportUsers()` (`{ start, state, tracker }`), `useFollowExportUsers(jobId)` |
//! | `#[forge::workflow] fn verify(ctx, user_id: Uuid) -> Result<()>` | `trackVerify(args: { userId: string })` and `followVerify(workflowId)`, workflow stores; React: `useTrackVerify()`, `useFollowVerify(id)` |
//! | `#[forge::query] fn recent_jobs(ctx, limit: i32) -> Result<R>` | `recentJobs(args)`: one call, a `Promise`; `liveRecentJobs(args)`: a live query store; React: `useLiveRecentJobs(args)` |
//! | `#[forge::mutation] fn confirm_email(ctx, ..) -> Result<R>` | `confirmEmail(args)`: a `Promise` |
//!
//! "Track" starts and follows; "follow" only follows. Argument names are camelCased (the wire
//! format of the arguments object); a function without arguments takes no argument object.
//! Every function but the hooks takes an explicit `ForgeClient` last (default: the one
//! `configureForge` set). Doc comments of types and fields become JSDoc.
//!
//! ## Type mapping
//!
//! | Rust | TypeScript |
//! |---|---|
//! | `struct` with named fields | `interface`, named after the type (serde renames respected) |
//! | unit-only `enum` | union of string literals: `"red" \| "dark_blue"` |
//! | `enum` externally tagged (serde's default) | `"Unit" \| { Newtype: string } \| { Struct: { a: string } }` |
//! | `#[serde(tag = "kind")]` | `{ kind: "a"; .. } \| (Meta & { kind: "b" })` |
//! | `#[serde(tag = "t", content = "c")]` | `{ t: "A" } \| { t: "B"; c: string }` |
//! | `#[serde(untagged)]` | union of the variants' types |
//! | `Option<T>` | `T \| null`; the field is optional (`?`) when serde may leave it out (`skip_serializing_if` in outputs, `Option`/`default` in arguments) |
//! | `Vec<T>`, slices, sets | `T[]` |
//! | tuples | `[A, B]` |
//! | `HashMap<String, T>`, `BTreeMap<String, T>` | `Record<string, T>` |
//! | `String`, `char`, `Uuid` | `string` |
//! | `DateTime<Utc>`, `NaiveDate`, `NaiveTime` | `string` (ISO 8601, said in a doc comment) |
//! | integers, floats | `number` (64-bit integers: see below) |
//! | `bool` | `boolean` |
//! | `serde_json::Value` | `unknown` |
//! | `()` | `void` as an output, `null` inside a type |
//! | recursive types | interfaces that refer to themselves |
//!
//! A type used both as an argument and in an output whose two JSON forms differ (a field
//! skipped when `None` on output but required on input, say) gets a second type for the
//! argument side, `<Name>Input`.
//!
//! ## 64-bit integers
//!
//! `i64`, `u64`, `isize`, `usize` (and 128-bit) travel as JSON numbers and are typed `number`.
//! JavaScript represents integers exactly only up to 2^53 (`Number.MAX_SAFE_INTEGER`); the
//! `@forge/client` core parses every response with a reviver that throws a `ForgeError` with
//! code `precision_loss` for an integer beyond that, so a loss is never silent. Every such
//! field carries a doc comment saying so. For ids that may exceed 2^53, use a `String` (or
//! `#[serde(with = ...)]` to a string) in the Rust type.
//!
//! ## Names
//!
//! Types take their schemars name. Two different Rust types with the same name (from two
//! modules, or two instances of one generic type) used by different functions are refused with
//! an error naming both functions; rename one with `#[schemars(rename = "...")]` (a generic
//! type: `#[schemars(rename = "Page{T}")]`). When a single function's types hold both, schemars
//! itself numbers the second one (`Page2`): deterministic, but worth a rename too. Function
//! names that would clash in TypeScript, or with the names imported from `@forge/client` (and
//! `@forge/react`), are refused.

mod collect;
mod doc;
mod emit;
mod error;
mod ts;

use std::path::{Component, Path, PathBuf};

pub use error::CodegenError;

/// The framework the generated client is for. Every choice generates the same core functions
/// (importing `@forge/client`); they differ in what comes on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Adapter {
    /// The core's stores are Svelte stores already: a note on using them, nothing more. The
    /// default.
    #[default]
    Svelte,
    /// Also a hook per function (`useTrackExportUsers()`, `useFollowExportUsers(id)`,
    /// `useLiveRecentJobs(args)`), importing `@forge/react`.
    React,
    /// The core functions only.
    None,
}

impl Adapter {
    /// The name `--adapter` takes.
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Svelte => "svelte",
            Adapter::React => "react",
            Adapter::None => "none",
        }
    }

    fn from_name(name: &str) -> Result<Adapter, CodegenError> {
        [Adapter::Svelte, Adapter::React, Adapter::None]
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                CodegenError::Usage(format!(
                    "unknown adapter `{name}`: `--adapter` takes svelte, react or none"
                ))
            })
    }
}

/// What to generate, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The folder the files go to (`src/lib/forge`).
    pub out_dir: PathBuf,
    /// The framework the client is for.
    pub adapter: Adapter,
    /// The command that regenerates the files, named in their header and in `--check`'s
    /// message.
    pub command: String,
}

impl Options {
    /// Options for `out_dir` and the default adapter, the command named as run by the app
    /// binary `app`.
    pub fn new(app: &str, out_dir: impl Into<PathBuf>) -> Options {
        Options::with_adapter(app, out_dir, Adapter::default())
    }

    /// Options for `out_dir` and `adapter`; the command names `--adapter` unless it is the
    /// default.
    pub fn with_adapter(app: &str, out_dir: impl Into<PathBuf>, adapter: Adapter) -> Options {
        let out_dir = out_dir.into();
        let mut command = format!("{app} generate --out {}", display_dir(&out_dir));
        if adapter != Adapter::default() {
            command.push_str(&format!(" --adapter {}", adapter.name()));
        }
        Options {
            out_dir,
            adapter,
            command,
        }
    }
}

/// A generated file and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    pub path: PathBuf,
    pub contents: String,
}

/// The client files of the functions registered in this binary.
pub fn generate(options: &Options) -> Result<Vec<GeneratedFile>, CodegenError> {
    let api = collect::collect()?;
    let contents = emit::api_ts(&api, &options.command, options.adapter)?;
    Ok(vec![GeneratedFile {
        path: options.out_dir.join("api.ts"),
        contents,
    }])
}

/// Generates the files and writes those that changed; returns the paths written.
pub fn write(options: &Options) -> Result<Vec<PathBuf>, CodegenError> {
    let files = generate(options)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CodegenError::Io { path, source }
    };
    std::fs::create_dir_all(&options.out_dir).map_err(io(&options.out_dir))?;
    let mut written = Vec::new();
    for file in files {
        // Unchanged files keep their modification time, so dev servers do not reload.
        if std::fs::read_to_string(&file.path).ok().as_deref() == Some(&file.contents) {
            continue;
        }
        std::fs::write(&file.path, &file.contents).map_err(io(&file.path))?;
        written.push(file.path);
    }
    Ok(written)
}

/// Fails with [`CodegenError::Stale`] when a file on disk differs from what [`generate`] gives.
pub fn check(options: &Options) -> Result<(), CodegenError> {
    for file in generate(options)? {
        let on_disk = match std::fs::read_to_string(&file.path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CodegenError::Stale {
                    path: file.path,
                    hint: "the file does not exist".into(),
                    command: options.command.clone(),
                })
            }
            Err(source) => {
                return Err(CodegenError::Io {
                    path: file.path,
                    source,
                })
            }
        };
        if let Some(hint) = first_difference(&file.contents, &on_disk) {
            return Err(CodegenError::Stale {
                path: file.path,
                hint,
                command: options.command.clone(),
            });
        }
    }
    Ok(())
}

/// Where `found` first differs from `expected`, for a person to look at; `None` if equal.
pub fn first_difference(expected: &str, found: &str) -> Option<String> {
    if expected == found {
        return None;
    }
    let clip = |s: &str| {
        let s = s.trim_end();
        match s.char_indices().nth(100) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s.to_string(),
        }
    };
    let mut exp = expected.split_inclusive('\n');
    let mut got = found.split_inclusive('\n');
    for line in 1.. {
        match (exp.next(), got.next()) {
            (Some(e), Some(g)) if e == g => continue,
            (Some(e), Some(g)) => {
                return Some(format!(
                    "line {line} differs\n  expected: {}\n  found:    {}",
                    clip(e),
                    clip(g)
                ))
            }
            (Some(e), None) => {
                return Some(format!(
                    "the file ends before line {line}\n  expected: {}",
                    clip(e)
                ))
            }
            (None, Some(g)) => {
                return Some(format!(
                    "line {line} should not be there\n  found:    {}",
                    clip(g)
                ))
            }
            (None, None) => break,
        }
    }
    Some("the files differ".into())
}

/// What `generate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The files were generated; those listed changed on disk.
    Written(Vec<PathBuf>),
    /// `--check`: the files on disk are up to date.
    UpToDate,
}

/// Runs `<app> generate --out DIR [--check]` when `args` (the whole command line, program
/// name first) is one; `Ok(None)` when it is not a `generate` command.
pub fn run<I, S>(args: I) -> Result<Option<Outcome>, CodegenError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    let program = args.next().unwrap_or_default();
    if args.next().as_deref() != Some("generate") {
        return Ok(None);
    }
    let app = Path::new(&program)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into());
    let mut out = None;
    let mut adapter = Adapter::default();
    let mut check_only = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check_only = true,
            "--out" => match args.next() {
                Some(dir) => out = Some(dir),
                None => return Err(CodegenError::Usage("`--out` needs a folder".into())),
            },
            "--adapter" => match args.next() {
                Some(name) => adapter = Adapter::from_name(&name)?,
                None => return Err(CodegenError::Usage("`--adapter` needs a name".into())),
            },
            other => {
                if let Some(dir) = other.strip_prefix("--out=") {
                    out = Some(dir.to_string());
                } else if let Some(name) = other.strip_prefix("--adapter=") {
                    adapter = Adapter::from_name(name)?;
                } else {
                    return Err(CodegenError::Usage(format!("unknown argument `{other}`")));
                }
            }
        }
    }
    let out = out.ok_or_else(|| CodegenError::Usage("`--out <DIR>` is required".into()))?;
    let options = Options::with_adapter(&app, out, adapter);
    if check_only {
        check(&options)?;
        Ok(Some(Outcome::UpToDate))
    } else {
        Ok(Some(Outcome::Written(write(&options)?)))
    }
}

/// [`run`] on this process's command line, telling the user what happened: `Ok(true)` when
/// it was a `generate` command (done), `Ok(false)` when the app should start as usual.
pub fn run_from_args() -> Result<bool, CodegenError> {
    match run(std::env::args())? {
        None => Ok(false),
        Some(Outcome::UpToDate) => {
            println!("the generated client is up to date");
            Ok(true)
        }
        Some(Outcome::Written(paths)) if paths.is_empty() => {
            println!("the generated client was already up to date");
            Ok(true)
        }
        Some(Outcome::Written(paths)) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            Ok(true)
        }
    }
}

/// `dir` with `/` separators and without `.` parts, so the command in the header does not
/// depend on how the folder was typed.
fn display_dir(dir: &Path) -> String {
    let parts: Vec<String> = dir
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::RootDir => String::new(),
            c => c.as_os_str().to_string_lossy().into_owned(),
        })
        .collect();
    match parts.join("/") {
        s if s.is_empty() => ".".into(),
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_dir_is_stable() {
        assert_eq!(display_dir(Path::new("./src/lib/forge/")), "src/lib/forge");
        assert_eq!(display_dir(Path::new("/abs/dir")), "/abs/dir");
        assert_eq!(display_dir(Path::new(".")), ".");
    }

    #[test]
    fn names_the_first_difference() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        let hint = first_difference("a\nb\n", "a\nc\n").unwrap();
        assert!(hint.starts_with("line 2 differs"), "{hint}");
        let hint = first_difference("a\nb\n", "a\n").unwrap();
        assert!(hint.starts_with("the file ends before line 2"), "{hint}");
        let hint = first_difference("a\n", "a\nx\n").unwrap();
        assert!(hint.starts_with("line 2 should not be there"), "{hint}");
        let hint = first_difference("a\n", "a").unwrap();
        assert!(hint.starts_with("line 1 differs"), "{hint}");
    }

    #[test]
    fn leaves_other_command_lines_alone() {
        assert_eq!(run(["app"]).unwrap(), None);
        assert_eq!(run(["app", "serve", "--out", "x"]).unwrap(), None);
        assert!(matches!(
            run(["app", "generate"]),
            Err(CodegenError::Usage(_))
        ));
        assert!(matches!(
            run(["app", "generate", "--out", "x", "--bogus"]),
            Err(CodegenError::Usage(_))
        ));
        assert!(matches!(
            run(["app", "generate", "--out", "x", "--adapter", "vue"]),
            Err(CodegenError::Usage(m)) if m.contains("svelte, react or none")
        ));
    }

    #[test]
    fn the_command_names_the_adapter_unless_it_is_the_default() {
        assert_eq!(
            Options::new("app", "web/api").command,
            "app generate --out web/api"
        );
        assert_eq!(
            Options::with_adapter("app", "web/api", Adapter::React).command,
            "app generate --out web/api --adapter react"
        );
    }
}
