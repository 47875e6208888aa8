// Runs the Rust fixture app (examples/client-fixture) for the integration tests: spawns the
// built binary (FORGE_FIXTURE_BIN, default $CARGO_TARGET_DIR/debug/client-fixture), waits for
// the URL it prints, signs tokens with its secret. Builds nothing itself.
//
// With FORGE_FIXTURE_NODES=N (N > 1) a fixture is N nodes on one database behind HAProxy in
// round-robin mode (Debian's `haproxy`, no sticky sessions), and `url` is HAProxy's: the same
// tests then run as users deploy several nodes. HAProxy names the node that answered each
// request in `x-forge-served-by`. With FORGE_FIXTURE_PGBOUNCER set to a PgBouncer (>= 1.21)
// binary as well, the nodes reach PostgreSQL through it in transaction mode (a private
// PgBouncer per fixture), with DATABASE_SESSION_URL going direct, as docs/operations.md says.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { get } from "node:http";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** Nodes per fixture: 1, or N behind HAProxy (FORGE_FIXTURE_NODES). */
export const FIXTURE_NODES = Math.max(1, Number(process.env.FORGE_FIXTURE_NODES ?? "1") || 1);

export const SECRET = "client-fixture-secret-for-tests-only-0123456789";

export function fixtureBin(): string {
  const fromEnv = process.env.FORGE_FIXTURE_BIN;
  if (fromEnv) return fromEnv;
  const target = process.env.CARGO_TARGET_DIR ?? fileURLToPath(new URL("../../../../target", import.meta.url));
  return join(target, "debug", "client-fixture");
}

export interface Fixture {
  url: string;
  port: number;
  db: string;
  /** Stops the process (SIGKILL: as a crashed node) and waits until it is gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port and database. */
  restart(): Promise<void>;
  /** Stops it and drops its database. */
  dispose(): Promise<void>;
  /** Ends every open event stream from the server side; answers how many there were. */
  cutStreams(): Promise<number>;
  /** The PgBouncer between the nodes and PostgreSQL, when there is one. */
  pgbouncer?: { port: number };
}

function launch(
  db: string,
  port: number,
  env: Record<string, string> = {},
): Promise<{ child: ChildProcess; url: string }> {
  const bin = fixtureBin();
  if (!existsSync(bin)) {
    throw new Error(`no fixture binary at ${bin}: run \`cargo build -p client-fixture\` (or set FORGE_FIXTURE_BIN)`);
  }
  const child = spawn(bin, [], {
    env: { ...process.env, ...env, FIXTURE_DB: db, PORT: String(port), HOST: "127.0.0.1", FORGE_JWT_SECRET: SECRET },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    stderr += d.toString();
    if (process.env.FIXTURE_LOG) process.stderr.write(d);
  });
  return new Promise((resolvePromise, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the fixture printed no URL within 60 s; stderr:\n${stderr}`));
    }, 60_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolvePromise({ child, url: m[1]! });
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the fixture exited (${code}) before listening; stderr:\n${stderr}`));
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => child.once("exit", () => r()));
}

export async function startFixture(): Promise<Fixture> {
  if (FIXTURE_NODES > 1) return startBalanced(FIXTURE_NODES);
  const db = `forge_client_it_${randomBytes(6).toString("hex")}`;
  let { child, url } = await launch(db, 0);
  const port = Number(new URL(url).port);
  const fixture: Fixture = {
    url,
    port,
    db,
    async kill() {
      child.kill("SIGKILL");
      await exited(child);
    },
    async restart() {
      ({ child } = await launch(db, port));
    },
    async dispose() {
      await fixture.kill();
      spawnSync(fixtureBin(), ["drop-db"], { env: { ...process.env, FIXTURE_DB: db }, stdio: "inherit" });
    },
    async cutStreams() {
      const res = await fetch(`${url}/_test/cut-streams`, { method: "POST" });
      return ((await res.json()) as { data: number }).data;
    },
  };
  return fixture;
}

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

/**
 * `nodes` fixture processes on one database behind HAProxy, round robin. Streams are long
 * requests, so the client, server and tunnel timeouts are above the stream's 15 s keep-alive;
 * a connection refused by a stopped node is retried on another (`option redispatch`).
 */
async function startBalanced(nodes: number): Promise<Fixture> {
  const db = `forge_client_it_${randomBytes(6).toString("hex")}`;
  const dir = mkdtempSync(join(tmpdir(), "forge-haproxy-"));
  const bouncer = process.env.FORGE_FIXTURE_PGBOUNCER ? await startPgBouncer(dir) : undefined;
  const running: { child: ChildProcess; port: number }[] = [];
  // One after the other: the first creates the database.
  for (let i = 0; i < nodes; i++) {
    const { child, url } = await launch(db, 0, bouncer?.env);
    running.push({ child, port: Number(new URL(url).port) });
  }
  const lbPort = await freePort();
  const config = join(dir, "haproxy.cfg");
  writeFileSync(
    config,
    [
      "global",
      "  maxconn 4096",
      "defaults",
      "  mode http",
      "  timeout connect 2s",
      "  timeout client 1h",
      "  timeout server 1h",
      "  timeout tunnel 1h",
      "  retries 3",
      "  option redispatch",
      // Each event is written when it comes, not merged with the next: a stream's updates
      // would otherwise arrive in bursts.
      "  option http-no-delay",
      "frontend forge",
      `  bind 127.0.0.1:${lbPort}`,
      "  default_backend nodes",
      "backend nodes",
      "  balance roundrobin",
      "  http-response set-header x-forge-served-by %[srv_name]",
      ...running.map((n, i) => `  server node${i + 1} 127.0.0.1:${n.port}`),
      "",
    ].join("\n"),
  );
  const haproxy = spawn("haproxy", ["-db", "-f", config], { stdio: ["ignore", "ignore", "pipe"] });
  let haproxyErr = "";
  haproxy.stderr!.on("data", (d: Buffer) => (haproxyErr += d.toString()));
  const spawnFailed = new Promise<never>((_, reject) =>
    haproxy.once("error", (e) =>
      reject(new Error(`haproxy could not start (${e.message}): install Debian's haproxy package`)),
    ),
  );
  const url = `http://127.0.0.1:${lbPort}`;
  // Node's own HTTP client: a test file's environment (happy-dom) may replace `fetch`.
  const healthy = () =>
    new Promise<boolean>((resolveOk) => {
      get(`${url}/_api/health`, (res) => {
        res.resume();
        resolveOk(res.statusCode === 200);
      }).on("error", () => resolveOk(false));
    });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await Promise.race([healthy(), spawnFailed]);
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`haproxy did not answer within 10 s: ${haproxyErr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const fixture: Fixture = {
    url,
    port: lbPort,
    db,
    async kill() {
      for (const n of running) n.child.kill("SIGKILL");
      await Promise.all(running.map((n) => exited(n.child)));
    },
    async restart() {
      for (const n of running) ({ child: n.child } = await launch(db, n.port, bouncer?.env));
    },
    async dispose() {
      await fixture.kill();
      haproxy.kill("SIGTERM");
      await exited(haproxy);
      if (bouncer) {
        bouncer.child.kill("SIGTERM");
        await exited(bouncer.child);
      }
      rmSync(dir, { recursive: true, force: true });
      spawnSync(fixtureBin(), ["drop-db"], {
        env: { ...process.env, ...bouncer?.env, FIXTURE_DB: db },
        stdio: "inherit",
      });
    },
    async cutStreams() {
      let cut = 0;
      for (const n of running) {
        const res = await fetch(`http://127.0.0.1:${n.port}/_test/cut-streams`, { method: "POST" });
        cut += ((await res.json()) as { data: number }).data;
      }
      return cut;
    },
    pgbouncer: bouncer && { port: bouncer.port },
  };
  return fixture;
}

/**
 * A PgBouncer in transaction mode in front of DATABASE_URL's server, for every database name,
 * with protocol-level prepared statements tracked (`max_prepared_statements`, PgBouncer 1.21+:
 * sqlx names its statements). `env` points a node at it, its session URL going direct.
 */
async function startPgBouncer(dir: string): Promise<{ child: ChildProcess; port: number; env: Record<string, string> }> {
  const bin = process.env.FORGE_FIXTURE_PGBOUNCER!;
  const direct = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const server = new URL(direct);
  const user = decodeURIComponent(server.username || "postgres");
  const port = await freePort();
  writeFileSync(join(dir, "users.txt"), `"${user}" "${decodeURIComponent(server.password)}"\n`);
  writeFileSync(
    join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `* = host=${server.hostname || "127.0.0.1"} port=${server.port || "5432"}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = trust",
      `auth_file = ${join(dir, "users.txt")}`,
      `admin_users = ${user}`,
      "pool_mode = transaction",
      "max_prepared_statements = 200",
      "default_pool_size = 20",
      "max_client_conn = 1000",
      "log_connections = 0",
      "log_disconnections = 0",
      // PgBouncer refuses to run as root; CI runs as root.
      ...(process.getuid?.() === 0 ? ["user = postgres"] : []),
      "",
    ].join("\n"),
  );
  const child = spawn(bin, [join(dir, "pgbouncer.ini")], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const failed = new Promise<never>((_, reject) => {
    child.once("error", (e) => reject(new Error(`pgbouncer could not start (${e.message}): see .ci/pgbouncer`)));
    child.once("exit", (code) => reject(new Error(`pgbouncer exited (${code}): ${err}`)));
  });
  const listening = () =>
    new Promise<boolean>((resolveOk) => {
      const socket = createConnection({ host: "127.0.0.1", port }, () => {
        socket.destroy();
        resolveOk(true);
      }).on("error", () => resolveOk(false));
    });
  const deadline = Date.now() + 10_000;
  while (!(await Promise.race([listening(), failed]))) {
    if (Date.now() > deadline) throw new Error(`pgbouncer did not listen within 10 s: ${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  failed.catch(() => {});
  const pooled = new URL(direct);
  pooled.hostname = "127.0.0.1";
  pooled.port = String(port);
  return { child, port, env: { DATABASE_URL: pooled.toString(), DATABASE_SESSION_URL: direct } };
}

const b64url = (s: string | Buffer) => Buffer.from(s).toString("base64url");

/** An HS256 token for `sub`, valid for `ttlSeconds` (negative: already expired). */
export function token(sub: string, ttlSeconds = 3600, secret = SECRET): string {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds }));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

/**
 * Resolves with the first state of `store` that satisfies `ok`, within `ms`; the error names
 * the last state seen.
 */
export function until<S>(
  store: { subscribe(run: (s: S) => void): () => void },
  ok: (s: S) => boolean,
  ms = 20_000,
): Promise<S> {
  return new Promise((resolvePromise, reject) => {
    let last: S | undefined;
    let done = false;
    let stop: (() => void) | undefined;
    const timer = setTimeout(() => {
      done = true;
      stop?.();
      reject(new Error(`no matching state within ${ms} ms; last: ${JSON.stringify(last)}`));
    }, ms);
    stop = store.subscribe((s) => {
      last = s;
      if (!done && ok(s)) {
        done = true;
        clearTimeout(timer);
        queueMicrotask(() => stop?.());
        resolvePromise(s);
      }
    });
    if (done) stop();
  });
}

/** Every state a store goes through while the test holds it. */
export function record<S>(store: { subscribe(run: (s: S) => void): () => void }) {
  const states: S[] = [];
  const stop = store.subscribe((s) => states.push(s));
  return { states, stop };
}
