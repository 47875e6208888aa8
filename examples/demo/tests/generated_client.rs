//! The page's generated client (`web/src/lib/forge/api.ts`) matches the functions this binary
//! registers: change one without running `demo generate` and this fails, naming the first
//! differing line.

use std::path::Path;
use std::process::Command;

#[test]
fn the_generated_client_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // From the repository root, with the path as committed: it is part of the file's header.
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .current_dir(&root)
        .args([
            "generate",
            "--out",
            "examples/demo/web/src/lib/forge",
            "--check",
        ])
        .output()
        .expect("run the demo binary");
    assert!(
        out.status.success(),
        "stale client; run `cargo run -p demo -- generate --out examples/demo/web/src/lib/forge`\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
