// The client and the stores against the real server, through the client generated from the
// fixture's functions: jobs, workflows, live queries, errors, and the stream cut or the server
// restarted mid-way.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  configureForge,
  createForgeClient,
  getForgeClient,
  startJob,
  type ConnectionState,
  type ForgeClientOptions,
  type JobState,
} from "@forge/svelte";
import { fixtureBin, record, startFixture, token, until, type Fixture } from "./fixture.js";
import {
  addNote,
  approve,
  bigNumber,
  liveListNotes,
  listNotes,
  openGate,
  followCountSteps,
  trackApproval,
  trackCountSteps,
  trackFailingJob,
  trackGatedJob,
  type StepsDone,
} from "./generated/api.js";

let fx: Fixture;
beforeAll(async () => {
  fx = await startFixture();
});
afterAll(async () => {
  getForgeClient().close();
  await fx?.dispose();
});
afterEach(() => {
  getForgeClient().close();
});

const signedIn = (user = "user-1", extra: ForgeClientOptions = {}) =>
  configureForge({ baseUrl: fx.url, token: () => token(user), ...extra });

const connection = { subscribe: (run: (s: ConnectionState) => void) => getForgeClient().connection.subscribe(run) };
const unique = (p: string) => `${p}-${Math.random().toString(36).slice(2, 10)}`;

describe("the generated client", () => {
  it("is what `client-fixture generate` writes now (--check)", () => {
    const out = spawnSync(fixtureBin(), ["generate", "--out", "packages/svelte/test/integration/generated", "--check"], {
      cwd: fileURLToPath(new URL("../../../../", import.meta.url)),
      encoding: "utf8",
    });
    expect(out.stderr + out.stdout).toContain("up to date");
    expect(out.status).toBe(0);
  });
});

describe("jobs", () => {
  it("start-and-follow sees every progress update and completes with the output", async () => {
    signedIn();
    const job = trackCountSteps({ steps: 5, delayMs: 60, label: "five" });
    const rec = record<JobState<StepsDone>>(job);
    const done = await until(job, (s) => s.status === "completed");
    expect(done).toMatchObject({ output: { steps: 5, label: "five" }, progress: 100, loading: false, error: null });
    expect(done.jobId).toMatch(/^[0-9a-f-]{36}$/);
    const progress = rec.states.filter((s) => s.status === "running" && s.progress !== null).map((s) => s.progress);
    expect(progress).toEqual([20, 40, 60, 80, 100]);
    expect(rec.states.filter((s) => s.message).map((s) => s.message)).toContain("step 5 of 5");
    expect(rec.states[0]!.loading).toBe(true);
    const statuses = [...new Set(rec.states.map((s) => s.status))];
    expect(statuses[0]).toBe("pending");
    expect(statuses.at(-1)).toBe("completed");
    rec.stop();

    // After a page reload: follow the same job by id, which is over.
    const again = followCountSteps(done.jobId);
    const followed = await until(again, (s) => !s.loading);
    expect(followed).toMatchObject({ status: "completed", output: { steps: 5, label: "five" } });
  });

  it("a failing job ends failed with its message", async () => {
    signedIn();
    const job = trackFailingJob({ reason: "the disk is full" });
    const failed = await until(job, (s) => s.status === "failed" || s.status === "dead_letter");
    expect(failed.status).toBe("failed");
    expect(failed.error).toContain("the disk is full");
    expect(failed.requestError).toBeNull();
  });

  it("cancel() stops a running job", async () => {
    signedIn();
    const job = trackGatedJob({ gate: unique("never") });
    await until(job, (s) => s.status === "running" && s.message !== null);
    await job.cancel();
    const end = await until(job, (s) => s.status === "cancelled");
    expect(end.requestError).toBeNull();
    // Cancelling again: the server refuses (409), the store says so, nothing throws.
    await job.cancel();
  });

  it("bad arguments end the store in an error state naming the field", async () => {
    signedIn();
    const job = startJob<unknown, StepsDone>("count_steps", { steps: "many", delayMs: 1, label: "x" });
    const s = await until(job, (s) => !s.loading);
    expect(s.status).toBe("failed");
    expect(s.requestError).toMatchObject({ code: "invalid_args", status: 400, field: "steps" });
    expect(s.error).toBe(s.requestError!.message);
    expect(job.jobId).toBeNull();
  });

  it("without a token, starting ends in an error state (401), as does a live query", async () => {
    configureForge({ baseUrl: fx.url });
    const job = trackCountSteps({ steps: 1, delayMs: 1, label: "x" });
    const s = await until(job, (s) => !s.loading);
    expect(s).toMatchObject({ status: "failed" });
    expect(s.requestError).toMatchObject({ code: "unauthenticated", status: 401 });
    const q = liveListNotes({ topic: "t" });
    const qs = await until(q, (s) => !s.loading);
    expect(qs.error).toMatchObject({ code: "unauthenticated", status: 401 });
    await expect(listNotes({ topic: "t" })).rejects.toMatchObject({ code: "unauthenticated" });
  });

  it("an expired token that cannot be refreshed makes the connection say unauthorized", async () => {
    configureForge({ baseUrl: fx.url, token: () => token("user-1", -3600) });
    const job = trackCountSteps({ steps: 1, delayMs: 1, label: "x" });
    const s = await until(job, (s) => !s.loading);
    expect(s.status).toBe("failed");
    expect(getForgeClient().connection.state.status).toBe("unauthorized");
  });

  it("a 64-bit integer beyond 2^53 - 1 is refused loudly, not rounded", async () => {
    signedIn();
    await expect(bigNumber()).rejects.toMatchObject({ code: "precision_loss" });
  });
});

describe("workflows", () => {
  it("steps, waiting for an event, then completed with the output", async () => {
    signedIn("alice");
    const wf = trackApproval({ title: "budget" });
    const rec = record(wf);
    const waiting = await until(wf, (s) => s.status === "waiting");
    expect(waiting.steps.map((s) => s.name)).toEqual(["prepare", "approved", "finish"]);
    expect(waiting.steps[0]!.status).toBe("completed");
    expect(waiting.waitingFor).toContain("approved");
    await approve({ workflowId: wf.workflowId! });
    const done = await until(wf, (s) => s.status === "completed");
    expect(done.output).toEqual({ title: "budget", approvedBy: "alice" });
    expect(done.steps.map((s) => s.status)).toEqual(["completed", "completed", "completed"]);
    expect(rec.states[0]!.loading).toBe(true);
    rec.stop();
  });
});

describe("live queries", () => {
  it("update after a mutation", async () => {
    signedIn();
    const topic = unique("topic");
    const q = liveListNotes({ topic });
    const rec = record(q);
    expect((await until(q, (s) => !s.loading)).data).toEqual([]);
    const note = await addNote({ topic, text: "hello" });
    const after = await until(q, (s) => (s.data?.length ?? 0) === 1);
    expect(after.data).toEqual([note]);
    await expect(addNote({ topic, text: "" })).rejects.toMatchObject({ code: "invalid_args", field: "text" });
    rec.stop();
  });
});

describe("connection loss", () => {
  it("the stream cut server-side mid-job: the store reconnects, goes on, and completes", async () => {
    signedIn("user-1", { backoff: { initialMs: 50, maxMs: 500 } });
    const gate = unique("gate");
    const job = trackGatedJob({ gate });
    const rec = record(job);
    await until(job, (s) => s.status === "running" && s.message !== null);
    const opens: string[] = [];
    const stopWatch = connection.subscribe((s) => opens.push(s.status));
    expect(await fx.cutStreams()).toBeGreaterThanOrEqual(1);
    await until(connection, (s) => s.status === "reconnecting");
    await until(connection, (s) => s.status === "open");
    // Updates keep coming on the new stream.
    const before = rec.states.length;
    await until(job, () => rec.states.length > before + 1);
    await openGate({ name: gate });
    const done = await until(job, (s) => s.status === "completed");
    expect(done.output).toBe(`passed ${gate}`);
    stopWatch();
    rec.stop();
  });

  it("a terminal status reached while disconnected is caught up after reconnecting", async () => {
    // A backoff so long that the client reconnects only when told to.
    signedIn("user-1", { backoff: { initialMs: 600_000, maxMs: 600_000, jitter: 0 } });
    const gate = unique("gate");
    const job = trackGatedJob({ gate });
    const rec = record(job);
    await until(job, (s) => s.status === "running");
    await fx.cutStreams();
    await until(connection, (s) => s.status === "reconnecting");
    await openGate({ name: gate });
    // Another client watches the job end.
    const other = createForgeClient({ baseUrl: fx.url, token: () => token("user-1") });
    try {
      await until(other.followJob(job.jobId!), (s) => s.status === "completed");
    } finally {
      other.close();
    }
    expect(job.current.status).toBe("running");
    getForgeClient().reconnect();
    const done = await until(job, (s) => s.status === "completed");
    expect(done.output).toBe(`passed ${gate}`);
    rec.stop();
  });

  it("the server restarted: the store reconnects to the new process and still completes", async () => {
    signedIn("bob", { backoff: { initialMs: 100, maxMs: 1000 } });
    const wf = trackApproval({ title: "restart" });
    // Held throughout, so the store never stops (a new subscriber would subscribe afresh).
    const rec = record(wf);
    await until(wf, (s) => s.status === "waiting");
    await fx.kill();
    await until(connection, (s) => s.status === "reconnecting");
    await fx.restart();
    await until(connection, (s) => s.status === "open", 30_000);
    await approve({ workflowId: wf.workflowId! });
    const done = await until(wf, (s) => s.status === "completed", 30_000);
    expect(done.output).toEqual({ title: "restart", approvedBy: "bob" });
    rec.stop();
  });
});
