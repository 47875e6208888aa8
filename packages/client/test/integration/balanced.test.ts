// Behind a round-robin load balancer (FORGE_FIXTURE_NODES=3: three nodes behind HAProxy, see
// fixture.ts), a subscription call lands on a node that does not hold the session, and takes
// effect all the same: its answer is the job's state and the job's updates come on the stream.
// The rest of the integration suite runs through the balancer too in that mode, and with
// FORGE_FIXTURE_PGBOUNCER through a transaction-mode PgBouncer between the nodes and PostgreSQL.
import { spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createForgeClient, startJob, type ForgeClient, type JobState } from "../../src/index.js";
import {
  FIXTURE_NODES,
  startFixture,
  token,
  until,
  type Fixture,
} from "../../../svelte/test/integration/fixture.js";

describe.skipIf(FIXTURE_NODES < 2)("through a round-robin load balancer", () => {
  let fx: Fixture;
  let client: ForgeClient;
  const alice = token("balanced-alice");

  beforeAll(async () => {
    fx = await startFixture();
    client = createForgeClient({ baseUrl: fx.url, token: () => alice });
  });
  afterAll(async () => {
    client?.close();
    await fx?.dispose();
  });

  it("a subscription call answered by a node that does not hold the session takes effect", async () => {
    // The stream, read by hand to see which node holds it.
    const abort = new AbortController();
    const stream = await fetch(`${fx.url}/_api/events`, {
      headers: { authorization: `Bearer ${alice}`, accept: "text/event-stream" },
      signal: abort.signal,
    });
    const holder = stream.headers.get("x-forge-served-by");
    expect(holder).toMatch(/^node\d$/);
    const reader = stream.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const nextData = async (pred: (d: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> => {
      const deadline = Date.now() + 20_000;
      for (;;) {
        for (const block of text.split("\n\n").slice(0, -1)) {
          const data = block
            .split("\n")
            .filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).trim())
            .join("\n");
          if (data) {
            const d = JSON.parse(data) as Record<string, unknown>;
            if (pred(d)) {
              text = text.slice(text.indexOf(block) + block.length + 2);
              return d;
            }
          }
        }
        if (Date.now() > deadline) throw new Error(`no matching event; read: ${text}`);
        const { value, done } = await reader.read();
        if (done) throw new Error("the stream ended");
        text += value;
      }
    };
    const session = await nextData((d) => typeof d.sessionId === "string");

    // A job of alice's, started without following it, that takes a moment.
    const job = startJob<unknown, unknown>("count_steps", { steps: 5, delayMs: 200, label: "lb" }, client);
    const started = await until<JobState>(job, (s) => s.jobId !== "");

    // Round robin: of three calls in a row, at least one lands on another node.
    let elsewhere: string | null = null;
    for (let i = 0; i < 3 && !elsewhere; i++) {
      const res = await fetch(`${fx.url}/_api/subscribe-job`, {
        method: "POST",
        headers: { authorization: `Bearer ${alice}`, "content-type": "application/json" },
        body: JSON.stringify({
          sessionId: session.sessionId,
          sessionSecret: session.sessionSecret,
          subscriptionId: `s${i}`,
          jobId: started.jobId,
        }),
      });
      const served = res.headers.get("x-forge-served-by");
      const body = (await res.json()) as { data: { jobId: string } };
      expect(res.status).toBe(200);
      expect(body.data.jobId).toBe(started.jobId);
      if (served !== holder) elsewhere = `s${i}`;
    }
    expect(elsewhere).not.toBeNull();
    // The subscription made through the other node delivers on the holder's stream.
    const done = await nextData(
      (d) => d.subscriptionId === elsewhere && (d.state as { status?: string })?.status === "completed",
    );
    expect((done.state as { jobId: string }).jobId).toBe(started.jobId);
    abort.abort();
    job.unsubscribe();
  });

  it.skipIf(!process.env.FORGE_FIXTURE_PGBOUNCER)(
    "the nodes' work goes through PgBouncer in transaction mode, prepared statements included",
    async () => {
      const job = startJob<unknown, unknown>("count_steps", { steps: 3, delayMs: 10, label: "pgb" }, client);
      const done = await until<JobState>(job, (s) => s.status === "completed");
      expect(done.progress).toBe(100);
      job.unsubscribe();
      // PgBouncer's admin console: its mode, and what it passed to this fixture's database.
      const show = (what: string) => {
        const out = spawnSync(
          "psql",
          ["-h", "127.0.0.1", "-p", String(fx.pgbouncer!.port), "-U", "postgres", "-d", "pgbouncer", "-AF|", "-c", `SHOW ${what}`],
          { encoding: "utf8" },
        );
        expect(out.status, out.stderr).toBe(0);
        const [head, ...rows] = out.stdout.trim().split("\n");
        const names = head!.split("|");
        return rows
          .filter((r) => r.includes("|"))
          .map((r) => Object.fromEntries(r.split("|").map((v, i) => [names[i], v])) as Record<string, string>);
      };
      expect(show("CONFIG").find((r) => r.key === "pool_mode")?.value).toBe("transaction");
      const stats = show("STATS").find((r) => r.database === fx.db);
      expect(Number(stats?.total_xact_count)).toBeGreaterThan(100);
      // sqlx's named statements, which PgBouncer re-prepares on whichever server it picks.
      expect(Number(stats?.total_client_parse_count)).toBeGreaterThan(0);
    },
  );
});
