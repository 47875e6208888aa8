//! The generator over the fixture app (`fixture/mod.rs`): the output pinned by a golden file,
//! `--check` on fresh and stale output, and the output type-checked by `tsc`.

mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;

use forge_codegen::{Adapter, CodegenError, Options, Outcome};

/// The output pinned for each adapter (`none` is `svelte` without its note, checked below).
const GOLDEN: &[(Adapter, &str)] = &[
    (Adapter::Svelte, "tests/golden/api.ts"),
    (Adapter::React, "tests/golden/api.react.ts"),
];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh folder under the target directory's scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("forge-codegen")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture_api_ts_for(adapter: Adapter) -> String {
    let options = Options::with_adapter("fixture", "src/lib/forge", adapter);
    let files = forge_codegen::generate(&options).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, Path::new("src/lib/forge/api.ts"));
    files.into_iter().next().unwrap().contents
}

fn fixture_api_ts() -> String {
    fixture_api_ts_for(Adapter::default())
}

#[test]
fn output_matches_the_golden_files() {
    for &(adapter, golden) in GOLDEN {
        let generated = fixture_api_ts_for(adapter);
        let golden_path = manifest_dir().join(golden);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden_path, &generated).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden_path).unwrap_or_default();
        if let Some(diff) = forge_codegen::first_difference(&expected, &generated) {
            panic!(
                "the generated api.ts ({}) differs from {golden}: {diff}\n\
                 if the change is intended: UPDATE_GOLDEN=1 cargo test -p forge-codegen --test generate",
                adapter.name()
            );
        }
    }
}

#[test]
fn every_adapter_generates_the_core_functions_importing_the_core() {
    let svelte = fixture_api_ts_for(Adapter::Svelte);
    let none = fixture_api_ts_for(Adapter::None);
    let react = fixture_api_ts_for(Adapter::React);
    assert!(svelte.contains("} from \"@forge/client\";"), "{svelte}");
    for out in [&svelte, &none, &react] {
        assert!(!out.contains("@forge/svelte\";"), "{out}");
    }
    assert!(!none.contains("@forge/react") && !svelte.contains("@forge/react"));
    assert!(react.contains("} from \"@forge/react\";"), "{react}");
    // `none` is `svelte` without the Svelte note (and the header's command).
    let body = |s: &str| s.split_once("\nimport").unwrap().1.to_string();
    assert_eq!(body(&none), body(&svelte));
    assert!(
        none.contains("generate --out src/lib/forge --adapter none`"),
        "{none}"
    );
    assert!(!svelte.contains("--adapter"), "{svelte}");
}

#[test]
fn output_is_deterministic() {
    assert_eq!(fixture_api_ts(), fixture_api_ts());
    assert_eq!(
        fixture_api_ts_for(Adapter::React),
        fixture_api_ts_for(Adapter::React)
    );
}

#[test]
fn check_passes_on_fresh_output_and_names_the_stale_file() {
    let dir = scratch("check");
    let out = dir.join("web/src/lib/forge");
    let out_arg = out.to_str().unwrap();
    let api = out.join("api.ts");

    // Nothing there yet: stale.
    let err = forge_codegen::run(["fixture", "generate", "--out", out_arg, "--check"]).unwrap_err();
    assert!(
        matches!(&err, CodegenError::Stale { path, .. } if *path == api),
        "{err}"
    );
    assert!(!api.exists(), "--check must not write");

    let written = forge_codegen::run(["fixture", "generate", "--out", out_arg]).unwrap();
    assert_eq!(written, Some(Outcome::Written(vec![api.clone()])));
    let fresh = forge_codegen::run(["./fixture", "generate", "--check", "--out", out_arg]).unwrap();
    assert_eq!(fresh, Some(Outcome::UpToDate));
    // Writing again leaves the unchanged file alone.
    let again = forge_codegen::run(["fixture", "generate", &format!("--out={out_arg}")]).unwrap();
    assert_eq!(again, Some(Outcome::Written(vec![])));

    // A hand edit (or a changed function) makes it stale; the message names the file, the
    // first differing line, and the command that fixes it. `main` prints errors with `Debug`.
    let contents = std::fs::read_to_string(&api).unwrap();
    let edited = contents.replacen("downloadUrl: string;", "downloadUrl: number;", 1);
    assert_ne!(edited, contents);
    std::fs::write(&api, &edited).unwrap();
    let err = forge_codegen::run(["fixture", "generate", "--out", out_arg, "--check"]).unwrap_err();
    let shown = format!("{err:?}");
    assert!(
        shown.contains(&format!("{} is stale", api.display())),
        "{shown}"
    );
    assert!(shown.contains("differs"), "{shown}");
    assert!(shown.contains("downloadUrl: number;"), "{shown}");
    assert!(
        shown.contains(&format!("run `fixture generate --out {out_arg}`")),
        "{shown}"
    );

    // Regenerating repairs it.
    forge_codegen::run(["fixture", "generate", "--out", out_arg]).unwrap();
    assert_eq!(std::fs::read_to_string(&api).unwrap(), contents);
}

/// Declarations of `@forge/client` as its contract fixes them (the trackers are stores: a
/// `subscribe` that returns the stopper); the generated code must type-check against them.
const FORGE_CLIENT_STUB: &str = r#"
export type JobStatus = "pending" | "claimed" | "running" | "completed" | "retry" | "failed"
  | "dead_letter" | "cancel_requested" | "cancelled" | "not_found";
export interface JobState<O> {
  jobId: string | null; status: JobStatus; progress: number | null; message: string | null;
  output: O | null; error: string | null; loading: boolean;
}
export interface JobTracker<O> {
  subscribe(run: (state: JobState<O>) => void): () => void;
  unsubscribe(): void;
  cancel(): Promise<void>;
}
export type WorkflowStatus = "created" | "running" | "waiting" | "completed" | "compensating"
  | "compensated" | "failed" | "not_found";
export interface WorkflowState<O> {
  workflowId: string | null; status: WorkflowStatus; step: string | null;
  waitingFor: string | null; steps: { name: string; status: string; error: string | null }[];
  output: O | null; error: string | null; loading: boolean;
}
export interface WorkflowTracker<O> {
  subscribe(run: (state: WorkflowState<O>) => void): () => void;
  unsubscribe(): void;
  cancel(): Promise<void>;
}
export interface QueryState<O> { data: O | null; error: unknown; loading: boolean }
export interface QueryTracker<O> {
  subscribe(run: (state: QueryState<O>) => void): () => void;
  unsubscribe(): void;
}
export declare class ForgeClient { private readonly brand: true }
export declare function createForgeClient(): ForgeClient;
export interface TrackOptions { key?: string; client?: ForgeClient }
export declare function startJob<A, O>(fn: string, args: A, options?: ForgeClient | TrackOptions): JobTracker<O>;
export declare function followJob<O>(jobId: string, client?: ForgeClient): JobTracker<O>;
export declare function startWorkflow<A, O>(fn: string, args: A, options?: ForgeClient | TrackOptions): WorkflowTracker<O>;
export declare function followWorkflow<O>(workflowId: string, client?: ForgeClient): WorkflowTracker<O>;
export declare function liveQuery<A, O>(fn: string, args: A, client?: ForgeClient): QueryTracker<O>;
export declare function callFunction<A, O>(fn: string, args: A, client?: ForgeClient): Promise<O>;
"#;

/// Declarations of `@forge/react`'s hooks, for the `react` adapter's output.
const FORGE_REACT_STUB: &str = r#"
import type { JobState, JobTracker, QueryState, WorkflowState, WorkflowTracker } from "@forge/client";
export interface Track<A, T, S> { start(args: A): T; tracker: T | null; state: S | null }
export declare function useTrackJob<A, O>(fn: string): Track<A, JobTracker<O>, JobState<O>>;
export declare function useTrackWorkflow<A, O>(fn: string): Track<A, WorkflowTracker<O>, WorkflowState<O>>;
export declare function useFollowJob<O>(jobId: string | null): JobState<O> | null;
export declare function useFollowWorkflow<O>(workflowId: string | null): WorkflowState<O> | null;
export declare function useLiveQuery<A, O>(fn: string, args: A): QueryState<O>;
"#;

/// Uses of the generated code: what must compile, and (`@ts-expect-error`) what must not.
const USAGE: &str = r#"
import {
  trackExportUsers, followExportUsers, trackNightlyCleanup, trackAccountVerification,
  followImportCatalog, recentJobs, liveRecentJobs, shapes, countJobs, confirmEmail, saveProfile,
  setPriority,
} from "./api";
import { createForgeClient } from "@forge/client";
import type {
  Adjacent, Color, External, Internal, Priority, Profile, SettingsInput, Shapes, Tree, Untagged,
} from "./api";

const job = trackExportUsers({ format: "csv" });
job.subscribe((s) => {
  const url: string | undefined = s.output?.downloadUrl;
  const rows: number | undefined = s.output?.rows;
  void url; void rows;
});
// @ts-expect-error: `format` is a string
trackExportUsers({ format: 1 });
// @ts-expect-error: `format` is required
trackExportUsers({});
// @ts-expect-error: unknown argument
trackExportUsers({ format: "csv", extra: 1 });
followExportUsers("0190c6a4-0000-7000-8000-000000000000").unsubscribe();
trackNightlyCleanup().cancel();
// An explicit client, last; without arguments it is the only one.
const client = createForgeClient();
trackExportUsers({ format: "json" }, client).unsubscribe();
followExportUsers("j", client).unsubscribe();
trackNightlyCleanup(client).cancel();
// @ts-expect-error: neither a client nor track options
trackNightlyCleanup({ keys: "k" });
// Reload-safe: a key, with or without a client.
trackExportUsers({ format: "csv" }, { key: "export-1" }).unsubscribe();
trackNightlyCleanup({ key: "nightly", client }).cancel();
// @ts-expect-error: a key is a string
trackExportUsers({ format: "csv" }, { key: 1 });
trackAccountVerification({ userId: "u" }).subscribe((s) => {
  const done: void | null = s.output;
  void done;
});
followImportCatalog("w").subscribe((s) => {
  const cursor: string | null | undefined = s.output?.nextCursor;
  void cursor;
});

async function calls(): Promise<void> {
  const rows = await recentJobs({ limit: 10 });
  const first: string | null = rows[0]?.finishedAt ?? null;
  void first;
  liveRecentJobs({ limit: 5 }).subscribe((s) => void s.data?.length);
  const n: number = await countJobs(client);
  void n;
  const nothing: void = await confirmEmail({ workflowId: "w" });
  void nothing;
  const s: Shapes = await shapes({ afterId: 1, tags: [] });
  const color: Color = s.color;
  const maybe: string | null = s.scalars.maybe;
  const pair: [string, number] = s.scalars.pair;
  const hash: Record<string, number> = s.scalars.hash;
  const raw: unknown = s.scalars.raw;
  const nested: (number | null)[][] = s.scalars.nested;
  const page: string[] = s.jobs.items.map((j) => j.id);
  const flat: [string, number | undefined, string | undefined, Color, string] = [
    s.flattened.key, s.flattened.byId["u"], s.flattened.byNumber["1"], s.flattened.boxed,
    s.flattened.type,
  ];
  void flat;
  void color; void maybe; void pair; void hash; void raw; void nested; void page;
  await shapes({ colorFilter: null, afterId: 1, tags: ["a"] });
  await shapes({ colorFilter: "dark_blue", afterId: 1, tags: ["a"] });
  // @ts-expect-error: not a Color
  await shapes({ colorFilter: "blue", afterId: 1, tags: [] });

  // The argument side may leave `theme` out; the output always has it.
  const input: SettingsInput = { pageSize: 10 };
  const saved: Profile = await saveProfile({ profile: { name: "a", settings: input } });
  const theme: Color = saved.settings.theme;
  void theme;
  const p: Priority | null = await setPriority({ jobId: "j", priority: "High" });
  void p;
}
void calls;

const priorities: Priority[] = ["Low", "High"];
const externals: External[] = ["Unit", { Newtype: "x" }, { Tuple: [1, true] }, { Struct: { a: "a" } }];
// @ts-expect-error: a tuple variant needs both fields
const badExternal: External = { Tuple: [1] };
const internals: Internal[] = [
  { kind: "empty" },
  { kind: "withMeta", key: "k" },
  { kind: "fields", user_id: "u" },
];
// @ts-expect-error: the tag is checked
const badInternal: Internal = { kind: "other" };
const adjacents: Adjacent[] = [{ t: "A" }, { t: "B", c: "x" }, { t: "C", c: { x: 1 } }];
// @ts-expect-error: content of the wrong variant
const badAdjacent: Adjacent = { t: "B", c: { x: 1 } };
const untagged: Untagged[] = [1.5, "text", { key: "k" }];
const tree: Tree = { label: "root", parent: null, children: [{ label: "leaf", children: [], parent: null }] };
void priorities; void externals; void badExternal; void internals; void badInternal;
void adjacents; void badAdjacent; void untagged; void tree;
"#;

/// Uses of the `react` adapter's hooks (called as a component would; the types are the test).
const USAGE_REACT: &str = r#"
import {
  useTrackExportUsers, useFollowExportUsers, useFollowImportCatalog, useLiveRecentJobs,
  useLiveCountJobs, useTrackAccountVerification, trackExportUsers,
} from "./api";

export function component(): string {
  const exp = useTrackExportUsers();
  const started = exp.start({ format: "csv" });
  void started.cancel();
  // @ts-expect-error: `format` is checked
  exp.start({ format: 1 });
  const rows: number | undefined = exp.state?.output?.rows;
  const same: typeof started | null = exp.tracker;
  const followed = useFollowExportUsers(null);
  const url: string | undefined = followed?.output?.downloadUrl;
  const cursor: string | null | undefined = useFollowImportCatalog("w")?.output?.nextCursor;
  const recent = useLiveRecentJobs({ limit: 5 });
  const first: string | undefined = recent.data?.[0]?.id;
  const count: number | null = useLiveCountJobs().data;
  useTrackAccountVerification().start({ userId: "u" });
  void trackExportUsers;
  return `${rows} ${same} ${url} ${cursor} ${first} ${count}`;
}
"#;

const TSCONFIG: &str = r#"{
  "compilerOptions": {
    "strict": true,
    "noEmit": true,
    "noUnusedLocals": true,
    "noUnusedParameters": true,
    "exactOptionalPropertyTypes": true,
    "target": "ES2022",
    "module": "ESNext",
    "moduleResolution": "Bundler",
    "skipLibCheck": false,
    "types": []
  },
  "files": ["api.ts", "usage.ts"]
}
"#;

/// The TypeScript compiler, or `None` (with a notice) when it is not installed.
fn tsc() -> Option<PathBuf> {
    // `FORGE_TSC` names another TypeScript compiler (a `bin/tsc` script).
    let tsc = match std::env::var_os("FORGE_TSC") {
        Some(path) => PathBuf::from(path),
        None => repo_root().join("node_modules/typescript/bin/tsc"),
    };
    if tsc.exists() {
        Some(tsc)
    } else {
        println!(
            "NOTICE: type check skipped: {} is missing (run `npm install` at the repository root)",
            tsc.display()
        );
        None
    }
}

fn repo_root() -> PathBuf {
    manifest_dir().join("../..")
}

/// Runs `tsc -p tsconfig.json` in `dir`, failing the test on any error.
fn run_tsc(tsc: &Path, dir: &Path) {
    let out = Command::new("node")
        .arg(tsc)
        .args(["-p", "tsconfig.json"])
        .current_dir(dir)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "tsc found errors in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The generated code for `adapter` and its uses in a fresh folder.
fn project(name: &str, adapter: Adapter) -> PathBuf {
    let dir = scratch(name);
    std::fs::write(dir.join("api.ts"), fixture_api_ts_for(adapter)).unwrap();
    std::fs::write(dir.join("usage.ts"), USAGE).unwrap();
    std::fs::write(dir.join("usage_react.ts"), USAGE_REACT).unwrap();
    dir
}

/// Files of `project` that `adapter`'s output must compile with.
fn files(adapter: Adapter) -> &'static str {
    match adapter {
        Adapter::React => r#"["api.ts", "usage.ts", "usage_react.ts"]"#,
        _ => r#"["api.ts", "usage.ts"]"#,
    }
}

/// Against declarations of `@forge/client` (and `@forge/react`) written from their contract,
/// under the strictest options users may have.
#[test]
fn output_type_checks() {
    let Some(tsc) = tsc() else { return };
    for adapter in [Adapter::Svelte, Adapter::React, Adapter::None] {
        let dir = project(&format!("tsc-{}", adapter.name()), adapter);
        let tsconfig = TSCONFIG.replace(r#"["api.ts", "usage.ts"]"#, files(adapter));
        std::fs::write(dir.join("tsconfig.json"), tsconfig).unwrap();
        for (name, stub) in [("client", FORGE_CLIENT_STUB), ("react", FORGE_REACT_STUB)] {
            let stub_dir = dir.join("node_modules/@forge").join(name);
            std::fs::create_dir_all(&stub_dir).unwrap();
            std::fs::write(
                stub_dir.join("package.json"),
                format!(r#"{{ "name": "@forge/{name}", "types": "index.d.ts" }}"#),
            )
            .unwrap();
            std::fs::write(stub_dir.join("index.d.ts"), stub).unwrap();
        }
        run_tsc(&tsc, &dir);
    }
}

/// Against the real `packages/client` and `packages/react` of this repository, when they are
/// there.
#[test]
fn output_type_checks_against_the_packages() {
    let Some(tsc) = tsc() else { return };
    let packages =
        ["client", "react"].map(|p| repo_root().join(format!("packages/{p}/src/index.ts")));
    if let Some(missing) = packages.iter().find(|p| !p.exists()) {
        println!("NOTICE: skipped: {} is missing", missing.display());
        return;
    }
    let [client, react] = packages
        .map(|p| serde_json::Value::String(p.canonicalize().unwrap().display().to_string()));
    for adapter in [Adapter::Svelte, Adapter::React] {
        let dir = project(&format!("tsc-package-{}", adapter.name()), adapter);
        let tsconfig = format!(
            r#"{{
  "compilerOptions": {{
    "strict": true,
    "noEmit": true,
    "target": "ES2022",
    "module": "ESNext",
    "moduleResolution": "Bundler",
    "skipLibCheck": true,
    "types": [],
    "paths": {{ "@forge/client": [{client}], "@forge/react": [{react}] }}
  }},
  "files": {}
}}
"#,
            files(adapter)
        );
        std::fs::write(dir.join("tsconfig.json"), tsconfig).unwrap();
        run_tsc(&tsc, &dir);
    }
}
