// `forge new`: an app of one's own, made as a user makes it, for each page framework. Each app
// is scaffolded into a temporary folder outside the repository by the built `forge` binary,
// built, tested with its own test command (`npm test`), started as it would be deployed (the
// built page served by its Rust server, on a free port, with a fresh database) and driven in
// Chromium until its example job completes with its progress seen moving. Then the job's
// argument is renamed in the Rust source: the client is stale, and once regenerated the page no
// longer type-checks, until the page passes the new argument. Last, `npm run dev`: the page
// served by Vite tracks a job through its proxy, and renaming the argument again makes it
// rebuild, regenerate the client and report that the page no longer fits.
//
// The apps build with the repository's CARGO_TARGET_DIR, so Forge's compiled dependencies are
// reused (each app compiles Forge's own crates and itself). Screenshots: e2e/screenshots/new-*.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  REPO,
  freshDatabase,
  keepEvidence,
  launchBrowser,
  newPage,
  screenshot,
  tempDir,
  waitFor,
} from "../lib/harness.mjs";

const TARGET = resolve(REPO, process.env.CARGO_TARGET_DIR ?? "target");
const BUILT_FORGE = join(TARGET, "debug/forge");
const MINUTE = 60_000;

let root;
let forgeBin;
let browser;
const databases = [];
let evidence = [];
const pages = () => evidence;

/**
 * The environment the app's commands get: this one without what npm set for the script that
 * runs these tests (`npm test -w @forge/e2e` sets the workspace, which an `npm install` in the
 * app would take as its own), and with the repository's target folder for cargo.
 */
function appEnv(extra = {}) {
  // Where packages come from and how to reach it stay (a CI's registry, proxy or certificates).
  const keep = new Set(
    ["cache", "registry", "userconfig", "globalconfig", "cafile", "proxy", "https_proxy", "noproxy", "strict_ssl"].map(
      (k) => `npm_config_${k}`,
    ),
  );
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) || keep.has(k.toLowerCase())),
  );
  delete env.INIT_CWD;
  return { ...env, CARGO_TARGET_DIR: TARGET, CARGO_TERM_COLOR: "never", ...extra };
}

/** Runs a command to its end within `timeout` ms: `{ code, output }` (stdout and stderr). */
function sh(cmd, args, { cwd, env = appEnv(), timeout = 10 * MINUTE } = {}) {
  return new Promise((done, fail) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
    child.once("error", (e) => {
      clearTimeout(timer);
      fail(new Error(`${cmd} could not run: ${e.message}`));
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      done({ code: code ?? `${signal} (after ${timeout} ms?)`, output });
    });
  });
}

/** `sh` that must succeed. */
async function must(cmd, args, options) {
  const { code, output } = await sh(cmd, args, options);
  assert.equal(code, 0, `\`${cmd} ${args.join(" ")}\` failed (${code}):\n${output}`);
  return output;
}

/** Runs `fn`, printing how long it took. */
async function timed(what, fn) {
  const start = Date.now();
  const result = await fn();
  console.log(`  ${what}: ${((Date.now() - start) / 1000).toFixed(1)} s`);
  return result;
}

/** The app's server binary, started as a deployment would: resolves once it printed its URL. */
async function startApp(binary, cwd, databaseUrl) {
  const child = spawn(binary, [], {
    cwd,
    env: appEnv({ DATABASE_URL: databaseUrl, PORT: "0", HOST: "127.0.0.1", RUST_LOG: "warn" }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((r) => child.once("exit", (code, signal) => r(code ?? signal)));
  const url = await Promise.race([
    waitFor("the app to print its URL", () => output.match(/running at (http:\/\/\S+)/)?.[1], { timeout: MINUTE }),
    exited.then((code) => {
      throw new Error(`the app exited (${code}) before serving:\n${output}`);
    }),
  ]);
  return {
    url,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * `npm run dev` in `dir`, in a process group of its own (npm, node, cargo, the server, esbuild):
 * resolves once Vite printed the page's address.
 */
async function startDev(dir, databaseUrl) {
  const child = spawn("npm", ["run", "dev"], {
    cwd: dir,
    env: appEnv({ DATABASE_URL: databaseUrl, NO_COLOR: "1" }),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((r) => child.once("exit", (code, signal) => r(code ?? signal)));
  const signal = (sig) => {
    try {
      process.kill(-child.pid, sig);
    } catch {
      // The group is gone already.
    }
  };
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    signal("SIGINT");
    const t = setTimeout(() => signal("SIGKILL"), 15_000);
    await exited;
    clearTimeout(t);
  };
  try {
    const url = await Promise.race([
      waitFor("npm run dev to print the page's address", () => output.match(/Local:\s+(http:\/\/\S+)/)?.[1], {
        timeout: 5 * MINUTE,
        every: 100,
      }),
      exited.then((code) => {
        throw new Error(`npm run dev exited (${code}) before serving:\n${output}`);
      }),
    ]);
    return { url, output: () => output, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

before(async () => {
  // The binary under test, current with the templates compiled into it.
  await timed("cargo build -p forge-cli", () =>
    must("cargo", ["build", "--quiet", "-p", "forge-cli"], { cwd: REPO, timeout: 15 * MINUTE }),
  );
  assert.ok(existsSync(BUILT_FORGE), `no forge binary at ${BUILT_FORGE}`);
  // Outside the repository: the app must build on its own, not as part of Forge's workspace.
  root = tempDir("forge-new-e2e-");
  // A copy of its own: a build of another checkout on the same target folder would replace it.
  forgeBin = join(root, "forge");
  copyFileSync(BUILT_FORGE, forgeBin);
  const help = await must(forgeBin, ["new", "--help"], { cwd: root });
  assert.match(help, /--web/, `${BUILT_FORGE} is a forge without \`new\``);
  browser = await launchBrowser();
}, { timeout: 20 * MINUTE });

after(async () => {
  await browser?.close();
  for (const db of databases) db.drop();
  if (root) rmSync(root, { recursive: true, force: true });
});

for (const web of ["svelte", "react"]) {
  describe(`forge new --web ${web}`, () => {
    it("makes an app that builds, passes its tests and tracks its job in the browser, and whose client follows the Rust", { timeout: 25 * MINUTE }, async () => {
      const name = `app-${web}`;
      const dir = join(root, name);
      const page = web === "svelte" ? join(dir, "web/src/App.svelte") : join(dir, "web/src/App.tsx");
      console.log(`forge new --web ${web}:`);

      const made = await timed("forge new (pack, npm install)", () =>
        must(forgeBin, ["new", dir, "--web", web], { cwd: root, timeout: 5 * MINUTE }),
      );
      assert.match(made, /npm run dev/);
      const readme = readFileSync(join(dir, "README.md"), "utf8");
      assert.match(readme, /npm run dev .*# run it/);
      assert.match(readme, /npm test .*# test it/);
      const manifest = readFileSync(join(dir, "Cargo.toml"), "utf8");
      assert.match(manifest, /^\[workspace\]$/m, "a workspace of its own");
      assert.match(manifest, new RegExp(`forge = \\{ path = "${realpathSync(REPO).replace(/[\\^$.*+?()[\]{}|]/g, "\\$&")}/crates/forge" \\}`));

      await timed("cargo build (Forge's crates and the app)", () => must("cargo", ["build"], { cwd: dir, timeout: 15 * MINUTE }));
      await timed("npm run build (the page)", () => must("npm", ["run", "build"], { cwd: dir }));

      const db = freshDatabase();
      databases.push(db);
      const tested = await timed("npm test (cargo test, the client is current, the page type-checks)", () =>
        must("npm", ["test"], { cwd: dir, env: appEnv({ DATABASE_URL: db.url }), timeout: 10 * MINUTE }),
      );
      assert.match(tested, /test result: ok\. [1-9]\d* passed/);
      assert.match(tested, /the generated client is up to date/);

      const app = await startApp(join(TARGET, "debug", name), dir, db.url);
      try {
        await timed("the page: the job's progress moves, then its output", async () => {
          const p = await newPage(browser, app.url);
          evidence = [p];
          await keepEvidence(`new-${web}`, pages, async () => {
            await p.page.goto("/");
            await p.page.locator("[data-testid=count]").fill("25");
            await p.page.click("[data-testid=start]");
            // Sampled far more often than the job reports (every 100 ms).
            const seen = new Set();
            let shot = false;
            const ended = await waitFor(
              "the job to end on the page",
              async () => {
                const status = await p.page.locator("[data-testid=job-status]").getAttribute("data-status", { timeout: 1_000 });
                const value = await p.page.locator("[data-testid=progress]").getAttribute("data-progress", { timeout: 1_000 });
                if (value !== null) seen.add(Number(value));
                if (!shot && seen.size >= 3) {
                  shot = true;
                  await screenshot(p.page, `new-${web}-running`);
                }
                return ["completed", "failed", "dead_letter", "cancelled"].includes(status) && status;
              },
              { timeout: MINUTE, every: 30 },
            );
            assert.equal(ended, "completed");
            const moving = [...seen].filter((v) => v > 0 && v < 100);
            assert.ok(moving.length >= 3, `the bar moved through ${[...seen].join(", ")}`);
            assert.equal(await p.page.locator("[data-testid=job-output]").textContent(), "Done: 25 items processed.");
            assert.match(await p.page.locator("[data-testid=job-status]").textContent(), /completed: Processed 25 of 25/);

            // The mutation, and the live query showing what it added.
            await p.page.locator("[data-testid=note-text]").fill(`a note from ${web}`);
            await p.page.click("[data-testid=add-note]");
            await p.page.locator("[data-testid=notes] li", { hasText: `a note from ${web}` }).waitFor();
            await screenshot(p.page, `new-${web}-done`);
            await p.context.close();
          });
        });
      } finally {
        await app.stop();
      }

      await timed("rename the job's argument: the client is stale, then the page does not type-check", async () => {
        const items = join(dir, "src/items.rs");
        writeFileSync(items, readFileSync(items, "utf8").replace(/\bcount\b/g, "total"));
        const stale = await sh("npm", ["run", "generate", "--", "--check"], { cwd: dir });
        assert.equal(stale.code, 1, `the old client is stale:\n${stale.output}`);
        assert.match(stale.output, /is stale|differs/);
        const wrote = await must("npm", ["run", "generate"], { cwd: dir });
        assert.match(wrote, /wrote web\/src\/lib\/forge\/api\.ts/);
        assert.match(readFileSync(join(dir, "web/src/lib/forge/api.ts"), "utf8"), /args: \{ total: number \}/);
        const broken = await sh("npm", ["run", "typecheck"], { cwd: dir });
        assert.notEqual(broken.code, 0, `the page still passes { count }:\n${broken.output}`);
        assert.match(broken.output, /'count' does not exist in type '\{ total: number; \}'/);
      });

      await timed("fix the page: it type-checks again", async () => {
        const source = readFileSync(page, "utf8");
        assert.ok(source.includes("({ count })"), "the page passes { count }");
        writeFileSync(page, source.replace("({ count })", "({ total: count })"));
        await must("npm", ["run", "typecheck"], { cwd: dir });
      });

      await timed("npm run dev: the page through Vite, and a Rust change regenerates the client", async () => {
        const dev = await startDev(dir, db.url);
        try {
          // Through Vite's proxy: the calls and the event stream.
          const p = await newPage(browser, dev.url);
          evidence = [p];
          await keepEvidence(`new-${web}-dev`, pages, async () => {
            await p.page.goto("/");
            await p.page.locator("[data-testid=count]").fill("5");
            await p.page.click("[data-testid=start]");
            await waitFor(
              "the job to complete on the page served by Vite",
              async () =>
                (await p.page.locator("[data-testid=job-status]").getAttribute("data-status", { timeout: 1_000 })) ===
                "completed",
              { timeout: MINUTE },
            );
            await p.context.close();
          });
          const seenBefore = dev.output().length;
          const items = join(dir, "src/items.rs");
          writeFileSync(items, readFileSync(items, "utf8").replace(/\btotal\b/g, "items"));
          await waitFor(
            "npm run dev to rebuild, regenerate the client and find the page no longer fits it",
            () => /does not type-check against the new client/.test(dev.output().slice(seenBefore)),
            { timeout: 3 * MINUTE, every: 200 },
          );
          assert.match(readFileSync(join(dir, "web/src/lib/forge/api.ts"), "utf8"), /args: \{ items: number \}/);
          await waitFor("npm run dev to restart the server", () => /server restarted/.test(dev.output().slice(seenBefore)), {
            timeout: MINUTE,
          });
        } catch (e) {
          throw new Error(`${e.message}\nnpm run dev said:\n${dev.output()}`);
        } finally {
          await dev.stop();
        }
      });
    });
  });
}
