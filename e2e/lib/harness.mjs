// What the browser tests share: a fresh database, the demo process, Chromium, and bounded waits.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../..");
export const SCREENSHOTS = resolve(here, "../screenshots");

const ADMIN_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const DEMO_BIN =
  process.env.DEMO_BIN ??
  // Relative to the repository root, where ./dev runs cargo.
  join(resolve(REPO, process.env.CARGO_TARGET_DIR ?? "target"), "debug/demo");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Polls `check` until it returns a truthy value, for at most `timeout` ms. */
export async function waitFor(what, check, { timeout = 15_000, every = 50 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, every));
  }
}

export function psql(url, sql) {
  const r = spawnSync("psql", [url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], { encoding: "utf8" });
  if (r.error) throw new Error(`psql could not run (${r.error.message}): install the PostgreSQL client`);
  if (r.status !== 0) throw new Error(`psql failed: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/** A database of its own on the server of DATABASE_URL; `drop()` removes it. */
export function freshDatabase() {
  const name = `forge_e2e_${process.pid}_${Date.now().toString(36)}`;
  psql(ADMIN_URL, `CREATE DATABASE ${name}`);
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop() {
      psql(ADMIN_URL, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/** The demo binary on `port` (0: a free one), resolved once it printed its URL. */
export async function startDemo({ databaseUrl, port = 0, dataDir }) {
  if (!existsSync(DEMO_BIN)) {
    throw new Error(`no demo binary at ${DEMO_BIN}: run \`cargo build -p demo\` (or set DEMO_BIN)`);
  }
  const child = spawn(DEMO_BIN, [], {
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      PORT: String(port),
      HOST: "127.0.0.1",
      DEMO_DATA_DIR: dataDir,
      DEMO_WEB_DIR: join(REPO, "examples/demo/web/dist"),
      RUST_LOG: process.env.RUST_LOG ?? "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((r) => {
    child.once("exit", (code, signal) => r({ code, signal }));
    child.once("error", (e) => r({ code: e.message, signal: null }));
  });
  const url = await Promise.race([
    waitFor("the demo to print its URL", () => output.match(/running at (http:\/\/\S+)/)?.[1], {
      timeout: 60_000,
    }),
    exited.then(({ code, signal }) => {
      throw new Error(`the demo (${DEMO_BIN}) exited (${code ?? signal}) before serving:\n${output}`);
    }),
  ]);
  return {
    url,
    port: Number(new URL(url).port),
    output: () => output,
    /** SIGKILL: a crash, not a shutdown. */
    async kill() {
      child.kill("SIGKILL");
      await exited;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}

export async function launchBrowser() {
  // playwright gives each launch a new empty profile (user data dir) of its own, and removes
  // it on close. The flags keep Chromium from reaching out to the network.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return browser;
}

/** A new browser context (its own localStorage) with a page that records its console. */
export async function newPage(browser, baseURL) {
  const context = await browser.newContext({ baseURL, acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const consoleLog = [];
  const note = (line) => consoleLog.push(`[${new Date().toISOString()}] ${line}`);
  page.on("console", (m) => note(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => note(`pageerror: ${e.stack ?? e}`));
  page.on("requestfailed", (r) => note(`request failed: ${r.method()} ${r.url()} (${r.failure()?.errorText})`));
  page.setDefaultTimeout(15_000);
  return { context, page, consoleLog };
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/**
 * Runs `fn`; if it throws, keeps a screenshot and the console log of every page given, and
 * what `server()` (if given) says of the server's side as `<name>-FAILED.server.log`.
 */
export async function keepEvidence(name, pages, fn, server) {
  try {
    await fn();
  } catch (e) {
    mkdirSync(SCREENSHOTS, { recursive: true });
    if (server) {
      let text;
      try {
        text = await server();
      } catch (err) {
        text = `could not read the server's side: ${err.message}`;
      }
      writeFileSync(join(SCREENSHOTS, `${name}-FAILED.server.log`), text);
    }
    for (const [i, p] of pages().entries()) {
      const suffix = pages().length > 1 ? `-${i}` : "";
      writeFileSync(join(SCREENSHOTS, `${name}-FAILED${suffix}.console.log`), p.consoleLog.join("\n") + "\n");
      await p.page.screenshot({ path: join(SCREENSHOTS, `${name}-FAILED${suffix}.png`), fullPage: true }).catch(() => {});
    }
    throw e;
  }
}

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}
