//! `forge new PATH [--web svelte|react|none]`: writes a small app of the user's own (a Rust
//! crate with one job, one query and one mutation, its server, and a Vite page on the generated
//! client) that depends on Forge as an outside user would. See `docs/new.md`.
//!
//! The files are templates under `crates/forge-cli/templates/`, compiled into the binary, with
//! `{{key}}` placeholders. Forge is not published, so the app points at a Forge checkout: its
//! crates by path, its npm packages as tarballs packed from the checkout into `vendor/`.
//!
//! The generated client (`templates/{svelte,react}/web/src/lib/forge/api.ts`) is a template
//! too, so that a new app is complete without a first build. After changing the app's Rust
//! templates or `forge-codegen`'s output, make an app, run its `npm run generate`, and copy its
//! `api.ts` back with the app's name as `{{name}}`: the app's `npm test` (run by
//! `e2e/tests/new.e2e.mjs`) fails on a stale one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::{Args as ClapArgs, ValueEnum};
use serde_json::{json, Value};

use crate::error::CliError;
use crate::output;

#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// The folder to make; its last part names the app (the crate, the binary, the database).
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// The page: Svelte 5, React, or none (the server and its API only).
    #[arg(long, value_enum, default_value_t = Web::Svelte)]
    web: Web,
    /// The Forge checkout the app depends on (default: the one this `forge` was built from).
    #[arg(long, value_name = "DIR")]
    forge_path: Option<PathBuf>,
    /// Skip `npm install` in the new app (Forge's packages are packed into `vendor/` all the
    /// same).
    #[arg(long)]
    no_install: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Web {
    Svelte,
    React,
    None,
}

impl Web {
    /// The npm package of the adapter, and what `generate` is told.
    fn adapter(self) -> Option<&'static str> {
        match self {
            Web::Svelte => Some("svelte"),
            Web::React => Some("react"),
            Web::None => None,
        }
    }
}

/// Where the generated client goes, from the app's folder.
const CLIENT_DIR: &str = "web/src/lib/forge";

/// A file of the new app: where it goes, and its template.
struct Template {
    path: &'static str,
    text: &'static str,
}

macro_rules! templates {
    ($($path:literal => $file:literal),* $(,)?) => {
        &[$(Template { path: $path, text: include_str!(concat!("../templates/", $file)) }),*]
    };
}

/// Every app's files: the Rust crate.
const RUST: &[Template] = templates![
    "Cargo.toml" => "app/Cargo.toml",
    ".gitignore" => "app/gitignore",
    "src/main.rs" => "app/src/main.rs",
    "src/server.rs" => "app/src/server.rs",
    "src/settings.rs" => "app/src/settings.rs",
    "src/items.rs" => "app/src/items.rs",
    "src/notes.rs" => "app/src/notes.rs",
    "src/session.rs" => "app/src/session.rs",
    "src/schema.sql" => "app/src/schema.sql",
];

/// Without a page, the README runs the crate with cargo.
const NO_WEB: &[Template] = templates!["README.md" => "app/README.md"];

/// With a page, whatever the framework: the README runs it with npm.
const WEB: &[Template] = templates![
    "README.md" => "web/README.md",
    "scripts/dev.mjs" => "web/scripts/dev.mjs",
    "web/index.html" => "web/web/index.html",
    "web/src/app.css" => "web/web/src/app.css",
    "web/src/lib/session.ts" => "web/web/src/lib/session.ts",
];

const SVELTE: &[Template] = templates![
    "package.json" => "svelte/package.json",
    "vite.config.ts" => "svelte/vite.config.ts",
    "tsconfig.json" => "svelte/tsconfig.json",
    "web/src/main.ts" => "svelte/web/src/main.ts",
    "web/src/App.svelte" => "svelte/web/src/App.svelte",
    "web/src/lib/forge/api.ts" => "svelte/web/src/lib/forge/api.ts",
];

const REACT: &[Template] = templates![
    "package.json" => "react/package.json",
    "vite.config.ts" => "react/vite.config.ts",
    "tsconfig.json" => "react/tsconfig.json",
    "web/src/main.tsx" => "react/web/src/main.tsx",
    "web/src/App.tsx" => "react/web/src/App.tsx",
    "web/src/lib/forge/api.ts" => "react/web/src/lib/forge/api.ts",
];

/// The templates of an app with `web`.
fn templates(web: Web) -> impl Iterator<Item = &'static Template> {
    let page: &[&[Template]] = match web {
        Web::Svelte => &[WEB, SVELTE],
        Web::React => &[WEB, REACT],
        Web::None => &[NO_WEB],
    };
    RUST.iter().chain(page.iter().flat_map(|t| t.iter()))
}

pub(crate) async fn run(args: Args, json: bool) -> Result<u8, CliError> {
    // Every step is a file write or a child process to wait for: nothing to gain from async.
    tokio::task::spawn_blocking(move || scaffold(&args, json))
        .await
        .map_err(|e| CliError::fail(format!("forge new stopped: {e}")))?
}

fn scaffold(args: &Args, json: bool) -> Result<u8, CliError> {
    let name = app_name(&args.path).map_err(CliError::usage)?;
    let forge = forge_checkout(args.forge_path.as_deref())?;
    if args.path.exists() && !is_empty_dir(&args.path) {
        return Err(CliError::usage(format!(
            "{} already exists and is not empty: choose a new folder",
            args.path.display()
        )));
    }
    let existed = args.path.exists();
    let result = write_app(args, &name, &forge, json);
    if result.is_err() {
        // Half an app is worse than none: the next attempt would find the folder taken.
        let _ = std::fs::remove_dir_all(&args.path);
        if existed {
            let _ = std::fs::create_dir(&args.path);
        }
    }
    let app = result?;

    let installed = match args.web.adapter() {
        Some(_) if !args.no_install => {
            say(json, "installing the npm packages (npm install)");
            npm_install(&args.path)?;
            true
        }
        _ => false,
    };

    let framework = match args.web {
        Web::Svelte => "a Svelte page",
        Web::React => "a React page",
        Web::None => "no page",
    };
    if json {
        output::print_json(&json!({
            "path": args.path,
            "name": name,
            "web": args.web.adapter(),
            "forge": forge,
            "vendor": app.vendor,
            "installed": installed,
        }))?;
        return Ok(0);
    }
    let (run, test) = match args.web {
        Web::None => ("cargo run", "cargo test"),
        _ => ("npm run dev", "npm test"),
    };
    output::print(format!(
        "made the app {name} ({framework}) in {path}, on the Forge checkout at {forge}\n\n\
         next:\n  cd {path}\n  {run:<13}# run it\n  {test:<13}# test it",
        path = args.path.display(),
        forge = forge.display(),
    ))?;
    Ok(0)
}

/// What writing the app left to report.
struct Written {
    /// The tarballs of Forge's npm packages in `vendor/`.
    vendor: Vec<String>,
}

fn write_app(args: &Args, name: &str, forge: &Path, json: bool) -> Result<Written, CliError> {
    let dir = &args.path;
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::fail(format!("cannot make {}: {e}", dir.display())))?;
    // npm packs from Forge's folder: `vendor` must not be relative to this one.
    let dir = &dir
        .canonicalize()
        .map_err(|e| CliError::fail(format!("cannot open {}: {e}", dir.display())))?;

    // Packed first: package.json names the tarballs.
    let vendor = match args.web.adapter() {
        Some(adapter) => {
            say(
                json,
                &format!(
                    "packing @forge/client and @forge/{adapter} from {}",
                    forge.display()
                ),
            );
            pack(forge, adapter, &dir.join("vendor"))?
        }
        None => Vec::new(),
    };
    let values = Values::new(name, forge, args.web, &vendor);
    for template in templates(args.web) {
        write(&dir.join(template.path), &values.render(template.text))?;
    }
    // The same versions of every crate as in Forge's own build: nothing to resolve or download
    // that Forge did not, and a shared CARGO_TARGET_DIR reuses Forge's compiled dependencies.
    // Cargo drops what the app does not use at its first build.
    std::fs::copy(forge.join("Cargo.lock"), dir.join("Cargo.lock"))
        .map_err(|e| CliError::fail(format!("cannot copy Forge's Cargo.lock: {e}")))?;
    Ok(Written { vendor })
}

fn write(path: &Path, text: &str) -> Result<(), CliError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CliError::fail(format!("cannot make {}: {e}", parent.display())))?;
    }
    std::fs::write(path, text)
        .map_err(|e| CliError::fail(format!("cannot write {}: {e}", path.display())))
}

/// The app's name: the folder's last part, which must do as a Cargo package name, a binary
/// name and (with `-` read as `_`) a PostgreSQL database name.
fn app_name(path: &Path) -> Result<String, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} does not end in a folder name", path.display()))?;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "`{name}` cannot name an app: use lowercase letters, digits, `-` and `_`, \
             starting with a letter (it names the crate, the binary and the database)"
        ));
    }
    // The database is `<name>`, the tests' `<name>_test`: PostgreSQL keeps 63 bytes of a name.
    if name.len() > 40 {
        return Err(format!(
            "`{name}` is too long for an app name: 40 characters at most"
        ));
    }
    // A package named as one of its own dependencies would not build.
    const TAKEN: &[&str] = &[
        "forge",
        "axum",
        "chrono",
        "jsonwebtoken",
        "schemars",
        "serde",
        "serde_json",
        "sqlx",
        "tokio",
        "tower",
        "tower-http",
        "tracing",
        "uuid",
        "test",
    ];
    if TAKEN.contains(&name) || name.starts_with("forge-") || name.starts_with("forge_") {
        return Err(format!(
            "`{name}` is the name of a crate the app depends on: choose another"
        ));
    }
    Ok(name.to_owned())
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

/// The Forge checkout: `--forge-path`, else the one this binary was built from. It must hold
/// Forge's workspace (the crates the app depends on, its Cargo.lock, its npm packages).
fn forge_checkout(flag: Option<&Path>) -> Result<PathBuf, CliError> {
    let (dir, how) = match flag {
        Some(dir) => (dir.to_path_buf(), "--forge-path"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
            "the checkout this forge was built from",
        ),
    };
    let not_forge = |why: String| {
        CliError::usage(format!(
            "{} ({how}) is not a Forge checkout: {why}; pass --forge-path with the folder of a \
             Forge clone",
            dir.display()
        ))
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| not_forge(format!("cannot open it ({e})")))?;
    for needed in [
        "Cargo.lock",
        "crates/forge/Cargo.toml",
        "crates/forge-gateway/Cargo.toml",
        "crates/forge-codegen/Cargo.toml",
        "crates/forge-devdb/Cargo.toml",
        "packages/client/package.json",
    ] {
        if !dir.join(needed).is_file() {
            return Err(not_forge(format!("it has no {needed}")));
        }
    }
    let manifest = std::fs::read_to_string(dir.join("crates/forge/Cargo.toml"))
        .map_err(|e| not_forge(format!("cannot read crates/forge/Cargo.toml ({e})")))?;
    if !manifest.lines().any(|l| l.trim() == "name = \"forge\"") {
        return Err(not_forge("crates/forge is not the `forge` crate".into()));
    }
    Ok(dir)
}

/// `npm pack`s `@forge/client` and `@forge/<adapter>` from the checkout into `vendor`; returns
/// the tarballs' file names, the client's first.
///
/// Tarballs rather than `file:` links to the checkout's folders: a linked package resolves its
/// own imports from the checkout, so the page would get the checkout's copy of svelte or react
/// next to its own, two copies of a framework that must be one. A tarball installs like a
/// registry package, sharing the app's.
fn pack(forge: &Path, adapter: &str, vendor: &Path) -> Result<Vec<String>, CliError> {
    std::fs::create_dir_all(vendor)
        .map_err(|e| CliError::fail(format!("cannot make {}: {e}", vendor.display())))?;
    // Packing builds each package (its `prepack`), with the checkout's TypeScript.
    if !forge.join("node_modules").is_dir() {
        npm(
            forge,
            &["ci", "--no-audit", "--no-fund"],
            "install Forge's npm packages",
        )?;
    }
    let destination = vendor.to_string_lossy();
    let out = npm(
        forge,
        &[
            "pack",
            "--json",
            "--pack-destination",
            &destination,
            "-w",
            "@forge/client",
            "-w",
            &format!("@forge/{adapter}"),
        ],
        "pack Forge's npm packages",
    )?;
    let packed: Value = serde_json::from_str(&out)
        .map_err(|e| CliError::fail(format!("npm pack printed no JSON ({e}): {out}")))?;
    let files: Vec<String> = packed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["filename"].as_str().map(str::to_owned))
        .collect();
    if files.len() != 2 {
        return Err(CliError::fail(format!(
            "npm pack made {} tarballs, not 2: {out}",
            files.len()
        )));
    }
    Ok(files)
}

fn npm_install(app: &Path) -> Result<(), CliError> {
    npm(
        app,
        &["install", "--no-audit", "--no-fund"],
        "install the app's npm packages (run `npm install` in it to try again)",
    )
    .map(drop)
}

/// Runs npm in `dir`; its stdout, or its output in the error when it fails.
fn npm(dir: &Path, args: &[&str], what: &str) -> Result<String, CliError> {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CliError::fail(format!("cannot run npm to {what}: {e}; install Node 20")))?;
    if !out.status.success() {
        return Err(CliError::fail(format!(
            "npm {} failed to {what} in {}: {}{}",
            args.first().unwrap_or(&""),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim(),
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A step, for the person at the terminal (on stderr, so that `--json` stays one document).
fn say(json: bool, step: &str) {
    if !json {
        output::note(format!("forge new: {step}"));
    }
}

/// What the placeholders stand for.
struct Values(Vec<(&'static str, String)>);

impl Values {
    fn new(name: &str, forge: &Path, web: Web, vendor: &[String]) -> Self {
        let forge = forge.to_string_lossy();
        let mut generate = vec!["generate".to_owned(), "--out".into()];
        let adapter = web.adapter().unwrap_or("none");
        generate.push(if web == Web::None {
            "DIR".into()
        } else {
            CLIENT_DIR.into()
        });
        // Svelte is the generator's default adapter: the command says so only for the others.
        if adapter != "svelte" {
            generate.extend(["--adapter".into(), adapter.into()]);
        }
        let (framework, page, call, entry) = match web {
            Web::Svelte => (
                "Svelte",
                "web/src/App.svelte",
                "trackProcessItems({ count })",
                "main.ts",
            ),
            Web::React => (
                "React",
                "web/src/App.tsx",
                "job.start({ count })",
                "main.tsx",
            ),
            Web::None => ("", "", "", ""),
        };
        let tarball = |i: usize| vendor.get(i).cloned().unwrap_or_default();
        Self(vec![
            ("name", name.to_owned()),
            ("db_name", name.replace('-', "_")),
            // Inside a TOML string.
            (
                "forge_toml",
                forge.replace('\\', "\\\\").replace('"', "\\\""),
            ),
            ("forge", forge.into_owned()),
            ("generate", generate.join(" ")),
            (
                "generate_args",
                generate
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("framework", framework.to_owned()),
            ("framework_lower", framework.to_lowercase()),
            ("page", page.to_owned()),
            ("call", call.to_owned()),
            ("entry", entry.to_owned()),
            ("client_tgz", tarball(0)),
            ("adapter_tgz", tarball(1)),
        ])
    }

    fn render(&self, template: &str) -> String {
        self.0
            .iter()
            .fold(template.to_owned(), |text, (key, value)| {
                text.replace(&format!("{{{{{key}}}}}"), value)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(web: Web) -> Values {
        let vendor = [
            "forge-client-0.1.0.tgz".into(),
            "forge-svelte-0.1.0.tgz".into(),
        ];
        Values::new("my-app", Path::new("/src/forge"), web, &vendor)
    }

    #[test]
    fn every_placeholder_of_every_template_has_a_value() {
        for web in [Web::Svelte, Web::React, Web::None] {
            let values = values(web);
            for t in templates(web) {
                let text = values.render(t.text);
                // `{{` followed by a word and `}}`: JSX's `{{ a: 1 }}` has spaces, so is not one.
                let left = text.match_indices("{{").find(|(i, _)| {
                    let rest = &text[i + 2..];
                    rest.find("}}").is_some_and(|end| {
                        end > 0
                            && rest[..end]
                                .chars()
                                .all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                });
                assert!(left.is_none(), "{} ({web:?}) keeps a placeholder", t.path);
            }
        }
    }

    #[test]
    fn each_page_has_its_files_and_the_rust_crate() {
        let paths = |web| templates(web).map(|t| t.path).collect::<Vec<_>>();
        let svelte = paths(Web::Svelte);
        assert!(svelte.contains(&"web/src/App.svelte") && svelte.contains(&"src/items.rs"));
        let react = paths(Web::React);
        assert!(react.contains(&"web/src/App.tsx") && !react.contains(&"web/src/App.svelte"));
        let none = paths(Web::None);
        assert!(!none.contains(&"package.json") && none.contains(&"README.md"));
        for web in [Web::Svelte, Web::React, Web::None] {
            let all = paths(web);
            let mut unique = all.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(all.len(), unique.len(), "{web:?} writes a file twice");
        }
    }

    #[test]
    fn npm_run_generate_and_npm_run_dev_generate_alike() {
        let react = values(Web::React);
        assert_eq!(
            react.render("{{generate}} / [{{generate_args}}]"),
            "generate --out web/src/lib/forge --adapter react / \
             [\"generate\", \"--out\", \"web/src/lib/forge\", \"--adapter\", \"react\"]"
        );
        for (web, package) in [(Web::Svelte, &SVELTE[0]), (Web::React, &REACT[0])] {
            let values = values(web);
            let script = format!("\"cargo run --quiet -- {}\"", values.render("{{generate}}"));
            assert!(
                values.render(package.text).contains(&script),
                "{web:?}: {script}"
            );
        }
    }

    #[test]
    fn names_must_suit_cargo_and_postgres() {
        assert_eq!(app_name(Path::new("/tmp/x/my-app")).unwrap(), "my-app");
        assert_eq!(app_name(Path::new("todo_2")).unwrap(), "todo_2");
        for bad in [
            "My-App",
            "2fast",
            "a.b",
            "forge",
            "forge-extra",
            "tokio",
            "-x",
        ] {
            assert!(app_name(Path::new(bad)).is_err(), "{bad}");
        }
        assert!(app_name(Path::new("/")).is_err());
        assert!(app_name(&PathBuf::from("a".repeat(41))).is_err());
    }

    #[test]
    fn the_checkout_it_was_built_from_is_a_forge_checkout() {
        let dir = forge_checkout(None).unwrap();
        assert!(dir.join("crates/forge-cli").is_dir());
        let err = forge_checkout(Some(&dir.join("crates"))).unwrap_err();
        assert!(
            format!("{err:?}").contains("is not a Forge checkout"),
            "{err:?}"
        );
    }
}
