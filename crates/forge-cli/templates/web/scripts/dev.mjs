// `npm run dev`: the app while you work on it.
//
// 1. builds the Rust server (`cargo build`) and regenerates the page's typed client from it;
// 2. starts the server (API, worker, database) on a port of its own;
// 3. serves the page with Vite, hot reload included, sending `/_api` to the server;
// 4. on every change under `src/` (or to Cargo.toml): builds again, regenerates the client
//    (Vite then reloads what uses it), type-checks the page against it, restarts the server.
//
// A build that fails leaves the running server as it was; fix the code and save again.
import { spawn } from "node:child_process";
import { existsSync, readdirSync, statSync, watch } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const NAME = "{{name}}";
// The same arguments as `npm run generate`.
const GENERATE = [{{generate_args}}];

const log = (line) => console.log(`[dev] ${line}`);

/** Runs `cmd` to the end with the terminal as its output; resolves with its exit code. */
function run(cmd, args, options = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: "inherit", ...options });
    child.once("error", (e) => {
      log(`cannot run ${cmd}: ${e.message}`);
      resolve(1);
    });
    child.once("exit", (code) => resolve(code ?? 1));
  });
}

/** A port nobody listens on now, for the Rust server (kept across its restarts). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** `cargo build`; resolves with the server binary's path, or null when the build failed. */
function build() {
  return new Promise((resolve) => {
    // JSON on stdout says where the binary is (CARGO_TARGET_DIR may move it); cargo's
    // progress and errors still go to the terminal, rendered as usual.
    const child = spawn("cargo", ["build", "--message-format=json-render-diagnostics"], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let executable = null;
    createInterface({ input: child.stdout }).on("line", (line) => {
      try {
        const message = JSON.parse(line);
        if (message.reason === "compiler-artifact" && message.target?.name === NAME && message.executable) {
          executable = message.executable;
        }
      } catch {
        // Not one of cargo's messages (a build script's output): ignore it.
      }
    });
    child.once("error", (e) => {
      log(`cannot run cargo: ${e.message}`);
      resolve(null);
    });
    child.once("exit", (code) => resolve(code === 0 ? executable : null));
  });
}

/** Writes the client from `binary`'s functions; true when the file changed. */
function generate(binary) {
  return new Promise((resolve) => {
    const child = spawn(binary, GENERATE, { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.once("error", () => resolve(false));
    child.once("exit", (code) => {
      if (output.trim()) log(output.trim());
      resolve(code === 0 && output.includes("wrote "));
    });
  });
}

/**
 * Regenerates the client from `binary`; when it changed, type-checks the page against it: the
 * page's code may no longer match the functions it calls, and it is better said now than when
 * a call fails in the browser.
 */
async function regenerate(binary) {
  if (!(await generate(binary))) return;
  const code = await run("npm", ["run", "--silent", "typecheck"]);
  log(
    code === 0
      ? "the page type-checks against the new client"
      : "the page does not type-check against the new client: see above",
  );
}

/** The running server: its process, and a promise of its exit. */
let server = null;

/** Starts the server on `port`; resolves once it listens, or with false if it exited first. */
function startServer(binary, port) {
  const child = spawn(binary, [], {
    cwd: ROOT,
    env: { ...process.env, PORT: String(port), HOST: "127.0.0.1" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  server = { child, exited };
  return new Promise((resolve) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      console.log(line);
      if (/ running at /.test(line)) resolve(true);
    });
    exited.then(() => resolve(false));
  });
}

/** Stops the server: SIGTERM, then SIGKILL if it has not exited within 10 s. */
async function stopServer() {
  if (!server) return;
  const { child, exited } = server;
  server = null;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

// ---- start --------------------------------------------------------------------------------

if (!existsSync(join(ROOT, "node_modules"))) {
  log("installing the npm packages");
  if ((await run("npm", ["install", "--no-audit", "--no-fund"])) !== 0) process.exit(1);
}

log("building the server (the first build compiles Forge and its dependencies: a few minutes)");
const binary = await build();
if (!binary) {
  log("the build failed: fix the errors above and run `npm run dev` again");
  process.exit(1);
}
await regenerate(binary);

const port = Number(process.env.API_PORT) || (await freePort());
if (!(await startServer(binary, port))) {
  log("the server exited at start (its error is above)");
  process.exit(1);
}

// Vite after the first generate, so that the page never loads without its client.
process.env.FORGE_API = `http://127.0.0.1:${port}`;
const { createServer: createVite } = await import("vite");
const vite = await createVite({ configFile: join(ROOT, "vite.config.ts") });
await vite.listen();
vite.printUrls();
log("watching src/ and Cargo.toml: saving a change rebuilds the server and the client");

// ---- watch --------------------------------------------------------------------------------

let rebuilding = false;
let again = false;
let timer = null;

async function rebuild() {
  if (rebuilding) {
    again = true;
    return;
  }
  rebuilding = true;
  do {
    again = false;
    log("change seen: building");
    const next = await build();
    if (!next) {
      log("the build failed: the server keeps running the previous build");
      continue;
    }
    await regenerate(next);
    await stopServer();
    if (await startServer(next, port)) log("server restarted");
    else log("the server exited at start (its error is above)");
  } while (again);
  rebuilding = false;
}

function changed(file) {
  // Editors write temporary files next to the real ones; only Rust sources and SQL matter.
  if (file && !/\.(rs|sql)$/.test(file)) return;
  clearTimeout(timer);
  // Saving several files at once (a rename, a formatter) is one rebuild.
  timer = setTimeout(rebuild, 200);
}

/**
 * Watches `dir` and the folders in it, one watcher each: Node's `recursive` watch loses a file
 * that an editor (or `sed -i`) replaced by a new one on Linux; a folder's watcher does not.
 */
function watchTree(dir, watched = new Set()) {
  if (watched.has(dir)) return;
  watched.add(dir);
  const watcher = watch(dir, (_event, file) => {
    if (!file) return changed(null);
    try {
      // A folder made since: watch it too.
      if (statSync(join(dir, file)).isDirectory()) watchTree(join(dir, file), watched);
    } catch {
      // Gone already (an editor's temporary file).
    }
    changed(file);
  });
  // The folder was removed: its watcher ends, and a new folder of that name gets a new one.
  watcher.on("error", () => {
    watcher.close();
    watched.delete(dir);
  });
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) watchTree(join(dir, entry.name), watched);
  }
}

watchTree(join(ROOT, "src"));
// The folder, not the file: an editor that saves by replacing Cargo.toml would end a file's
// watcher.
watch(ROOT, (_event, file) => file === "Cargo.toml" && changed(null));

async function shutdown() {
  await vite.close();
  await stopServer();
  process.exit(0);
}
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
