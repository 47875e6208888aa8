// The runs API (docs/runs.md) against the real server: a user lists and inspects their own
// jobs and workflows and nobody else's, and the admin role (`admin` in the fixture) acts on
// them while other users are refused.
import { createHmac } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  callFunction,
  cancelJobs,
  createForgeClient,
  deleteJobs,
  ForgeError,
  getJob,
  getOverview,
  getWorkflow,
  listJobs,
  listWorkflows,
  replayWorkflow,
  retryJobs,
  sendWorkflowEvent,
  startJob,
  startWorkflow,
  type ForgeClient,
  type JobState,
  type WorkflowState,
} from "../../src/index.js";
import { SECRET, startFixture, until, type Fixture } from "../../../svelte/test/integration/fixture.js";

const b64url = (s: string) => Buffer.from(s).toString("base64url");

/** An HS256 token for `sub` with `roles`, as the fixture's secret signs it. */
function tokenWithRoles(sub: string, roles: string[]): string {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub, roles, exp: Math.floor(Date.now() / 1000) + 3600 }));
  const sig = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

/** What `promise` rejected with; fails when it resolved. */
async function rejection(promise: Promise<unknown>): Promise<ForgeError> {
  const outcome = await promise.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
  if (!("error" in outcome)) throw new Error(`expected a rejection, got ${JSON.stringify(outcome.value)}`);
  expect(outcome.error).toBeInstanceOf(ForgeError);
  return outcome.error as ForgeError;
}

/** Calls `read` until `ok` holds for its answer, within `ms`. */
async function eventually<T>(read: () => Promise<T>, ok: (t: T) => boolean, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  let last: T = await read();
  while (!ok(last)) {
    if (Date.now() > end) throw new Error(`no matching answer within ${ms} ms; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
    last = await read();
  }
  return last;
}

const ALICE = "runs-alice";
const BOB = "runs-bob";
const OPS = "runs-ops";

let fx: Fixture;
let alice: ForgeClient;
let bob: ForgeClient;
let ops: ForgeClient;
// Alice's count_steps jobs, oldest first, and their labels.
const jobIds: string[] = [];
const labels = ["first", "second", "third"];

async function runJob<O>(client: ForgeClient, fn: string, args: unknown, status: string): Promise<JobState<O>> {
  const job = startJob<unknown, O>(fn, args, client);
  return until<JobState<O>>(job, (s) => s.status === status);
}

beforeAll(async () => {
  fx = await startFixture();
  alice = createForgeClient({ baseUrl: fx.url, token: () => tokenWithRoles(ALICE, []) });
  // A role that is not the admin role changes nothing.
  bob = createForgeClient({ baseUrl: fx.url, token: () => tokenWithRoles(BOB, ["support"]) });
  ops = createForgeClient({ baseUrl: fx.url, token: () => tokenWithRoles(OPS, ["admin"]) });
  // One after the other, each finished before the next starts: their order is certain.
  for (const label of labels) {
    const done = await runJob(alice, "count_steps", { steps: 1, delayMs: 10, label }, "completed");
    jobIds.push(done.jobId);
  }
});
afterAll(async () => {
  for (const c of [alice, bob, ops]) c?.close();
  await fx?.dispose();
});

describe("reading one's own jobs", () => {
  it("lists exactly the user's jobs, newest first, with where each stands", async () => {
    const page = await listJobs({}, alice);
    expect(page.nextCursor).toBeNull();
    expect(page.items.map((j) => j.jobId)).toEqual([...jobIds].reverse());
    for (const [i, job] of page.items.entries()) {
      expect(job).toMatchObject({
        function: "count_steps",
        status: "completed",
        attempts: 1,
        maxAttempts: 1,
        owner: ALICE,
        progress: 100,
        output: { steps: 1, label: labels[labels.length - 1 - i] },
        error: null,
      });
      expect(Number.isNaN(Date.parse(job.createdAt))).toBe(false);
      expect(job.startedAt).not.toBeNull();
      expect(job.finishedAt).not.toBeNull();
    }
    const created = page.items.map((j) => Date.parse(j.createdAt));
    expect([...created].sort((a, b) => b - a)).toEqual(created);
  });

  it("pages through them one at a time with nextCursor, without repeats", async () => {
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let pages = 0; ; pages++) {
      expect(pages).toBeLessThan(jobIds.length);
      const page = await listJobs({ limit: 1, ...(cursor ? { cursor } : {}) }, alice);
      expect(page.items).toHaveLength(1);
      seen.push(page.items[0]!.jobId);
      if (page.nextCursor === null) break;
      cursor = page.nextCursor;
    }
    expect(seen).toEqual([...jobIds].reverse());

    const bad = await rejection(listJobs({ limit: 0 }, alice));
    expect(bad.code).toBe("invalid_args");
    expect(bad.field).toBe("limit");
  });

  it("filters by function and status", async () => {
    expect((await listJobs({ filter: { function: "count_steps", status: ["completed"] } }, alice)).items).toHaveLength(3);
    expect((await listJobs({ filter: { function: "failing_job" } }, alice)).items).toEqual([]);
    expect((await listJobs({ filter: { status: ["failed", "running"] } }, alice)).items).toEqual([]);
    // Naming oneself as the owner is allowed.
    expect((await listJobs({ filter: { owner: ALICE } }, alice)).items).toHaveLength(3);
  });

  it("gets one job with its arguments and its single attempt", async () => {
    const job = await getJob(jobIds[0]!, alice);
    expect(job).toMatchObject({
      jobId: jobIds[0],
      function: "count_steps",
      status: "completed",
      owner: ALICE,
      args: { steps: 1, delayMs: 10, label: "first" },
      output: { steps: 1, label: "first" },
    });
    expect(job.attemptHistory).toHaveLength(1);
    expect(job.attemptHistory[0]).toMatchObject({ attempt: 1, outcome: "completed", error: null });
    expect(job.attemptHistory[0]!.startedAt).not.toBeNull();
    expect(job.attemptHistory[0]!.endedAt).not.toBeNull();
    expect(job.attemptHistory[0]!.workerId).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe("another user's jobs", () => {
  it("are not listed, not readable, and may not be asked for by owner", async () => {
    const page = await listJobs({}, bob);
    for (const id of jobIds) expect(page.items.map((j) => j.jobId)).not.toContain(id);
    expect(page.items).toEqual([]);

    const missing = await rejection(getJob(jobIds[0]!, bob));
    expect(missing.code).toBe("not_found");
    expect(missing.status).toBe(404);

    const forbidden = await rejection(listJobs({ filter: { owner: ALICE } }, bob));
    expect(forbidden.code).toBe("forbidden");
    expect(forbidden.status).toBe(403);
    expect(forbidden.field).toBe("filter.owner");
  });

  it("are every user's for the admin role", async () => {
    const mine = await listJobs({ filter: { owner: ALICE } }, ops);
    expect(mine.items.map((j) => j.jobId)).toEqual([...jobIds].reverse());
    expect((await getJob(jobIds[1]!, ops)).args).toMatchObject({ label: "second" });
  });

  it("need a signed-in user", async () => {
    const anonymous = createForgeClient({ baseUrl: fx.url });
    try {
      expect((await rejection(listJobs({}, anonymous))).code).toBe("unauthenticated");
    } finally {
      anonymous.close();
    }
  });
});

describe("admin actions", () => {
  it("are refused to users without the admin role, the job's owner included", async () => {
    for (const client of [alice, bob]) {
      for (const act of [cancelJobs, deleteJobs, retryJobs]) {
        const e = await rejection(act({ jobIds: [jobIds[0]!] }, client));
        expect(e.code).toBe("forbidden");
        expect(e.status).toBe(403);
        expect(e.message).toContain("`admin`");
      }
    }
    // Nothing changed.
    expect((await listJobs({}, alice)).items.map((j) => j.jobId)).toEqual([...jobIds].reverse());
  });

  it("cancel running jobs and delete finished ones, answering how many changed", async () => {
    const gate = `never-${Math.random().toString(36).slice(2, 10)}`;
    const gated = await runJob(alice, "gated_job", { gate }, "running");

    // A completed job is left alone and not counted.
    expect(await cancelJobs({ jobIds: [gated.jobId, jobIds[0]!] }, ops)).toBe(1);
    const cancelled = await eventually(
      () => getJob(gated.jobId, alice),
      (j) => j.status === "cancelled",
    );
    expect(cancelled.attemptHistory.at(-1)).toMatchObject({ outcome: "cancelled" });
    // Aimed at one job that cannot be cancelled, it says why.
    expect((await rejection(cancelJobs({ jobIds: [jobIds[0]!] }, ops))).code).toBe("conflict");

    expect(await deleteJobs({ jobIds: [gated.jobId, jobIds[0]!] }, ops)).toBe(2);
    expect((await rejection(getJob(gated.jobId, alice))).code).toBe("not_found");
    expect((await rejection(getJob(jobIds[0]!, ops))).code).toBe("not_found");
    expect((await listJobs({}, alice)).items.map((j) => j.jobId)).toEqual([jobIds[2], jobIds[1]]);
    expect((await rejection(deleteJobs({ jobIds: [gated.jobId] }, ops))).code).toBe("not_found");
  });

  it("retry a failed job, which keeps its earlier attempt in the history", async () => {
    const failed = await runJob(alice, "failing_job", { reason: "boom" }, "failed");
    const before = await getJob(failed.jobId, alice);
    expect(before.attemptHistory).toEqual([expect.objectContaining({ attempt: 1, outcome: "failed", error: "boom" })]);

    // A completed job cannot be retried.
    expect((await rejection(retryJobs({ jobIds: [jobIds[1]!] }, ops))).code).toBe("conflict");
    expect(await retryJobs({ filter: { owner: ALICE, status: ["failed"] } }, ops)).toBe(1);
    const again = await eventually(
      () => getJob(failed.jobId, alice),
      (j) => j.attempts === 2 && j.status === "failed",
    );
    expect(again.attemptHistory.map((a) => [a.attempt, a.outcome])).toEqual([
      [1, "failed"],
      [2, "failed"],
    ]);
  });
});

describe("workflows", () => {
  let first: string;

  it("are listed and read with their steps, and not by another user", async () => {
    const title = "runs report";
    const started = startWorkflow<unknown, unknown>("approval", { title }, alice);
    const waiting = await until<WorkflowState>(started, (s) => s.status === "waiting");
    first = waiting.workflowId;

    const page = await listWorkflows({}, alice);
    expect(page.nextCursor).toBeNull();
    expect(page.items).toHaveLength(1);
    expect(page.items[0]).toMatchObject({ workflowId: first, name: "approval", owner: ALICE, status: "waiting" });
    expect(Number.isNaN(Date.parse(page.items[0]!.createdAt))).toBe(false);
    // The job that runs a workflow is not listed as a job.
    expect((await listJobs({}, alice)).items.map((j) => j.function)).not.toContain("workflow:approval");

    const detail = await getWorkflow(first, alice);
    expect(detail).toMatchObject({ workflowId: first, name: "approval", args: { title }, events: [] });
    expect(detail.stepDetails.map((s) => [s.name, s.kind])).toEqual([
      ["prepare", "step"],
      ["approved", "event"],
      ["finish", "step"],
    ]);
    expect(detail.stepDetails[0]).toMatchObject({ status: "completed", attempts: 1 });
    expect(detail.stepDetails[1]!.wakeAt).not.toBeNull();

    expect((await listWorkflows({}, bob)).items).toEqual([]);
    const missing = await rejection(getWorkflow(first, bob));
    expect(missing.code).toBe("not_found");
    const forbidden = await rejection(listWorkflows({ filter: { owner: ALICE } }, bob));
    expect([forbidden.code, forbidden.field]).toEqual(["forbidden", "filter.owner"]);

    await callFunction("approve", { workflowId: first }, alice);
    const done = await eventually(
      () => getWorkflow(first, alice),
      (w) => w.status === "completed",
    );
    expect(done.output).toEqual({ title, approvedBy: ALICE });
    expect(done.stepDetails.map((s) => s.status)).toEqual(["completed", "completed", "completed"]);
    expect(done.events).toEqual([expect.objectContaining({ name: "approved", payload: { by: ALICE }, consumed: true })]);
  });

  it("are replayed by the admin role only, as a new run of the same owner", async () => {
    expect((await rejection(replayWorkflow(first, alice))).code).toBe("forbidden");
    const second = await replayWorkflow(first, ops);
    expect(second).not.toBe(first);

    const page = await listWorkflows({}, alice);
    expect(page.items.map((w) => w.workflowId)).toEqual([second, first]);
    const replayed = await getWorkflow(second, alice);
    expect(replayed).toMatchObject({ name: "approval", owner: ALICE, args: { title: "runs report" } });
    await eventually(
      () => getWorkflow(second, alice),
      (w) => w.status === "waiting",
    );
    // Not finished: it cannot be replayed yet.
    expect((await rejection(replayWorkflow(second, ops))).code).toBe("conflict");
  });

  it("are sent the event they wait for by the admin role, and by no one else", async () => {
    // The replay of the test before waits for `approved`.
    const waiting = (await listWorkflows({ filter: { status: ["waiting"] } }, ops)).items[0]!;
    expect((await rejection(sendWorkflowEvent(waiting.workflowId, "approved", { by: "ops" }, alice))).code).toBe(
      "forbidden",
    );
    const empty = await rejection(sendWorkflowEvent(waiting.workflowId, "", null, ops));
    expect([empty.code, empty.field]).toEqual(["invalid_args", "event"]);
    await sendWorkflowEvent(waiting.workflowId, "approved", { by: "ops" }, ops);
    const done = await eventually(
      () => getWorkflow(waiting.workflowId, alice),
      (w) => w.status === "completed",
    );
    expect(done.output).toEqual({ title: "runs report", approvedBy: "ops" });
    expect((await rejection(sendWorkflowEvent(waiting.workflowId, "approved", null, ops))).code).toBe("conflict");
  });
});

describe("the overview", () => {
  it("counts each queue's jobs for the admin role, and refuses everyone else", async () => {
    const overview = await getOverview({ windowMinutes: 60 }, ops);
    const queue = overview.queues.find((q) => q.queue === "default");
    expect(queue).toBeDefined();
    expect(queue!.completed).toBeGreaterThanOrEqual(labels.length);
    expect(queue!.throughputPerMinute).toBeGreaterThan(0);
    expect(overview.sampleLimit).toBe(20_000);
    expect(overview.perMinute.reduce((n, m) => n + m.completed, 0)).toBeGreaterThanOrEqual(labels.length);
    expect((await rejection(getOverview({}, bob))).code).toBe("forbidden");
    const bad = await rejection(getOverview({ windowMinutes: 0 }, ops));
    expect([bad.code, bad.field]).toEqual(["invalid_args", "windowMinutes"]);
  });
});
