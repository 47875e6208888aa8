import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createForgeClient, startJob, type ForgeClient, type JobState, type WorkflowState } from "../src/index.js";
import { fail, FakeServer, jobState, live, ok, settle, workflowState } from "./fake.js";

const clients: ForgeClient[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function setup(token: () => string | null = () => "tok") {
  const server = new FakeServer();
  const client = createForgeClient({ fetch: server.fetch, token, backoff: { initialMs: 1, maxMs: 5, jitter: 0 } });
  clients.push(client);
  return { server, client };
}

/** Starting `job`: answers the start with `state`, remembering the follow it came with. */
function startAnswers(server: FakeServer, jobId: string, state = jobState(jobId, "pending")) {
  server.on("/_api/rpc", (r) => {
    if (r.body.fn === "boom") return fail(400, "invalid_args", "rows: must be positive", { field: "rows" });
    return ok({ jobId, state });
  });
}

/** Waits for the client's stream, then opens its session `id`. */
async function openSession(server: FakeServer, id: string) {
  await settle();
  server.stream.session(id);
  await settle();
}

function record<S>(store: { subscribe(run: (s: S) => void): () => void }) {
  const seen: S[] = [];
  const stop = store.subscribe((s) => seen.push(s));
  return { seen, stop, last: () => seen.at(-1)! };
}

describe("job tracker", () => {
  it("starts and follows in one request once the stream has a session, then moves with events", async () => {
    const { server, client } = setup();
    startAnswers(server, "j-1");
    server.on("/_api/unsubscribe", () => ok(true));
    const job = client.startJob<{ rows: number }>("export", { rows: 3 });
    const rec = record<JobState<{ rows: number }>>(job);
    expect(rec.last()).toMatchObject({ loading: true, jobId: "", status: "pending" });
    await settle();
    expect(server.to("/_api/rpc")).toHaveLength(0); // no session yet
    await openSession(server, "s1");
    await settle();
    const [start] = server.to("/_api/rpc");
    expect(start!.body).toEqual({
      fn: "export",
      args: { rows: 3 },
      follow: { sessionId: "s1", sessionSecret: "secret-s1", subscriptionId: job.subscriptionId },
    });
    expect(start!.headers.authorization).toBe("Bearer tok");
    expect(rec.last()).toMatchObject({ loading: false, jobId: "j-1", status: "pending" });
    expect(job.jobId).toBe("j-1");

    const sid = job.subscriptionId;
    server.stream.send("job", { subscriptionId: sid, state: jobState("j-1", "running", { progress: 50, message: "half" }) });
    server.stream.send("job", { subscriptionId: sid, state: jobState("j-1", "completed", { progress: 100, output: { rows: 3 } }) });
    // Nothing follows a terminal status; if something did, it would not count.
    server.stream.send("job", { subscriptionId: sid, state: jobState("j-1", "running", { progress: 10 }) });
    await settle();
    expect(rec.seen.map((s) => s.status)).toEqual(["pending", "pending", "running", "completed"]);
    expect(rec.last()).toMatchObject({ status: "completed", output: { rows: 3 }, progress: 100, loading: false });
    // Terminal: the server subscription is let go.
    expect(server.to("/_api/unsubscribe").map((r) => r.body.subscriptionId)).toEqual([sid]);
  });

  it("keeps an event that arrives before the start's answer (the answer is older)", async () => {
    const { server, client } = setup();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    server.on("/_api/rpc", async (r) => {
      await held;
      return ok({ jobId: "j-2", state: jobState("j-2", "pending") });
    });
    const job = client.startJob("export", {});
    const rec = record<JobState>(job);
    await openSession(server, "s1");
    await settle();
    server.stream.send("job", { subscriptionId: job.subscriptionId, state: jobState("j-2", "running", { progress: 5 }) });
    await settle();
    release();
    await settle();
    expect(rec.last()).toMatchObject({ status: "running", progress: 5, loading: false });
  });

  it("shows a failed start as an error state with the server's message and field", async () => {
    const { server, client } = setup();
    startAnswers(server, "x");
    const job = client.startJob("boom", { rows: -1 });
    const rec = record<JobState>(job);
    await openSession(server, "s1");
    await settle();
    expect(rec.last()).toMatchObject({ loading: false, status: "failed", error: "rows: must be positive", jobId: "" });
    expect(rec.last().requestError).toMatchObject({ code: "invalid_args", field: "rows", status: 400 });
    expect(job.jobId).toBeNull();
  });

  it("fails the start when the stream is refused, never leaving it loading", async () => {
    const { server, client } = setup();
    server.eventsStatus = () => 401;
    const job = client.startJob("export", {});
    const rec = record<JobState>(job);
    await settle();
    expect(client.connection.state.status).toBe("unauthorized");
    expect(rec.last()).toMatchObject({ loading: false, status: "failed" });
    expect(rec.last().requestError?.code).toBe("unauthenticated");
    expect(server.to("/_api/rpc")).toHaveLength(0);
  });

  it("follows an existing job by id without starting anything", async () => {
    const { server, client } = setup();
    server.on("/_api/subscribe-job", (r) => ok(jobState(r.body.jobId, "running", { progress: 40 })));
    const job = live(client.followJob("j-9"));
    expect(job.current).toMatchObject({ jobId: "j-9", loading: true });
    await openSession(server, "s1");
    await settle();
    expect(server.to("/_api/rpc")).toHaveLength(0);
    expect(server.to("/_api/subscribe-job")[0]!.body).toEqual({
      sessionId: "s1",
      sessionSecret: "secret-s1",
      subscriptionId: job.subscriptionId,
      jobId: "j-9",
    });
    expect(job.current).toMatchObject({ status: "running", progress: 40, loading: false });
  });

  it("following asks nothing before the first subscriber (a tracker thrown away costs nothing)", async () => {
    const { server, client } = setup();
    server.on("/_api/subscribe-job", (r) => ok(jobState(r.body.jobId, "running")));
    const job = client.followJob("j-5");
    client.followWorkflow("w-5");
    await settle();
    expect(server.streams).toHaveLength(0);
    expect(client.connection.state.status).toBe("idle");
    live(job);
    await openSession(server, "s1");
    await settle();
    expect(server.to("/_api/subscribe-job").map((r) => r.body.jobId)).toEqual(["j-5"]);
    expect(server.to("/_api/subscribe-workflow")).toHaveLength(0);
  });

  it("unsubscribe() tells the server and ignores later events", async () => {
    const { server, client } = setup();
    server.on("/_api/subscribe-job", () => ok(jobState("j-3", "running")));
    server.on("/_api/unsubscribe", () => ok(true));
    const job = client.followJob("j-3");
    const rec = record<JobState>(job);
    await openSession(server, "s1");
    await settle();
    job.unsubscribe();
    await settle();
    expect(server.to("/_api/unsubscribe").map((r) => r.body)).toEqual([
      { sessionId: "s1", sessionSecret: "secret-s1", subscriptionId: job.subscriptionId },
    ]);
    server.stream.send("job", { subscriptionId: job.subscriptionId, state: jobState("j-3", "completed") });
    await settle();
    expect(rec.last().status).toBe("running");
  });

  it("stops when the last subscriber leaves, and follows again for a new one", async () => {
    const { server, client } = setup();
    let status = "running";
    server.on("/_api/subscribe-job", () => ok(jobState("j-4", status)));
    server.on("/_api/unsubscribe", () => ok(true));
    const job = client.followJob("j-4");
    const a = record<JobState>(job);
    const b = record<JobState>(job);
    await openSession(server, "s1");
    await settle();
    a.stop();
    a.stop(); // a second call of the same stopper changes nothing
    await settle();
    expect(server.to("/_api/unsubscribe")).toHaveLength(0);
    b.stop();
    await settle();
    expect(server.to("/_api/unsubscribe")).toHaveLength(1);
    status = "completed";
    const c = record<JobState>(job);
    await settle();
    expect(server.to("/_api/subscribe-job")).toHaveLength(2);
    expect(c.last().status).toBe("completed");
  });

  it("a start whose last subscriber left before its answer still starts, then lets go", async () => {
    const { server, client } = setup();
    startAnswers(server, "j-5");
    server.on("/_api/unsubscribe", () => ok(true));
    const job = client.startJob("export", {});
    record<JobState>(job).stop();
    await openSession(server, "s1");
    await settle();
    expect(server.to("/_api/rpc")).toHaveLength(1);
    expect(server.to("/_api/unsubscribe").map((r) => r.body.subscriptionId)).toEqual([job.subscriptionId]);
    expect(job.current).toMatchObject({ jobId: "j-5", loading: false });
  });

  it("cancel() waits for the id, then asks; a refusal goes to requestError, never a rejection", async () => {
    const { server, client } = setup();
    startAnswers(server, "j-6");
    let refuse = false;
    server.on("/_api/cancel-job", () =>
      refuse ? fail(409, "conflict", "job already completed", { field: "jobId" }) : ok({ status: "cancel_requested" }),
    );
    const job = client.startJob("export", {});
    await job.cancel();
    await openSession(server, "s1");
    await settle();
    expect(server.to("/_api/cancel-job").map((r) => r.body)).toEqual([{ jobId: "j-6" }]);
    refuse = true;
    await job.cancel();
    expect(job.current.requestError).toMatchObject({ code: "conflict", message: "job already completed" });
  });

  it("re-registers after a reconnect and catches up to a terminal status it missed", async () => {
    const { server, client } = setup();
    startAnswers(server, "j-7");
    server.on("/_api/subscribe-job", () => ok(jobState("j-7", "completed", { output: 42 })));
    const query = client.liveQuery<number>("count", { min: 1 });
    let n = 0;
    server.on("/_api/subscribe", () => ok(++n));
    const q = record(query);
    const job = client.startJob<number>("export", {});
    const rec = record<JobState<number>>(job);
    await openSession(server, "s1");
    await settle();
    expect(rec.last().status).toBe("pending");
    expect(q.last()).toMatchObject({ data: 1, loading: false });

    server.stream.end(); // e.g. the token expired, or the node went away
    await settle();
    expect(client.connection.state.status).toBe("reconnecting");
    await new Promise((r) => setTimeout(r, 10));
    await settle();
    expect(server.streams).toHaveLength(2);
    await openSession(server, "s2");
    await settle();
    expect(client.connection.state.status).toBe("open");
    expect(server.to("/_api/rpc")).toHaveLength(1); // not started twice
    expect(server.to("/_api/subscribe-job")[0]!.body).toMatchObject({ sessionId: "s2", jobId: "j-7", subscriptionId: job.subscriptionId });
    expect(rec.last()).toMatchObject({ status: "completed", output: 42 });
    expect(server.to("/_api/subscribe").map((r) => r.body.sessionId)).toEqual(["s1", "s2"]);
    expect(q.last().data).toBe(2);
  });

  it("a start answered `session gone` is made again on a new stream, not lost", async () => {
    const { server, client } = setup();
    server.on("/_api/rpc", (r) =>
      r.body.follow.sessionId === "s1"
        ? fail(404, "not_found", "unknown session", { field: "follow.sessionId" })
        : ok({ jobId: "j-8", state: jobState("j-8", "pending") }),
    );
    const job = client.startJob("export", {});
    await openSession(server, "s1");
    await settle();
    expect(server.streams[0]!.closed).toBe(true);
    await new Promise((r) => setTimeout(r, 10));
    await settle();
    await openSession(server, "s2");
    await settle();
    expect(server.to("/_api/rpc").map((r) => r.body.follow.sessionId)).toEqual(["s1", "s2"]);
    expect(job.current).toMatchObject({ jobId: "j-8", loading: false, status: "pending" });
  });

  it("a start in flight while the stream drops follows the job on the next session", async () => {
    const { server, client } = setup();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    server.on("/_api/rpc", async () => {
      await held;
      return ok({ jobId: "j-10", state: jobState("j-10", "pending") });
    });
    server.on("/_api/subscribe-job", () => ok(jobState("j-10", "running", { progress: 70 })));
    const job = client.startJob("export", {});
    await openSession(server, "s1");
    await settle();
    server.stream.break();
    await new Promise((r) => setTimeout(r, 10));
    await settle();
    await openSession(server, "s2");
    await settle();
    expect(server.to("/_api/subscribe-job")).toHaveLength(0);
    release();
    await settle();
    expect(server.to("/_api/subscribe-job").map((r) => r.body.sessionId)).toEqual(["s2"]);
    expect(job.current).toMatchObject({ status: "running", progress: 70 });
  });

  it("reports an event with an integer beyond 2^53 - 1 on its subscription", async () => {
    const { server, client } = setup();
    server.on("/_api/subscribe-job", () => ok(jobState("j-11", "running")));
    const job = live(client.followJob("j-11"));
    await openSession(server, "s1");
    await settle();
    server.stream.send(
      "job",
      `{"subscriptionId":"${job.subscriptionId}","state":{"jobId":"j-11","status":"completed","progress":null,"message":null,"output":{"n":9007199254740993},"error":null}}`,
    );
    await settle();
    expect(job.current.status).toBe("running");
    expect(job.current.requestError?.code).toBe("precision_loss");
  });
});

describe("workflow tracker", () => {
  it("starts and follows, steps and waiting included, to completed", async () => {
    const { server, client } = setup();
    const steps = (a: string, b: string) => [
      { name: "validate", status: a, error: null },
      { name: "confirmed", status: b, error: null },
    ];
    server.on("/_api/rpc", () =>
      ok({ workflowId: "w-1", state: workflowState("w-1", "created", { steps: steps("pending", "pending") }) }),
    );
    const wf = client.startWorkflow<void>("verify", { userId: "u" });
    const rec = record<WorkflowState<void>>(wf);
    await openSession(server, "s1");
    await settle();
    expect(rec.last()).toMatchObject({ workflowId: "w-1", status: "created", loading: false });
    const sid = wf.subscriptionId;
    server.stream.send("workflow", {
      subscriptionId: sid,
      state: workflowState("w-1", "waiting", { step: "confirmed", waitingFor: "event email_confirmed", steps: steps("completed", "running") }),
    });
    server.stream.send("workflow", { subscriptionId: sid, state: workflowState("w-1", "completed", { steps: steps("completed", "completed") }) });
    server.stream.send("workflow", { subscriptionId: sid, state: workflowState("w-1", "compensating") });
    await settle();
    expect(rec.seen.map((s) => s.status)).toEqual(["created", "created", "waiting", "completed"]);
    expect(rec.seen[2]).toMatchObject({ waitingFor: "event email_confirmed", step: "confirmed" });
    expect(rec.last().steps.map((s) => s.status)).toEqual(["completed", "completed"]);
  });

  it("follows by id through /_api/subscribe-workflow and cancels through /_api/cancel-workflow", async () => {
    const { server, client } = setup();
    server.on("/_api/subscribe-workflow", (r) => ok(workflowState(r.body.workflowId, "waiting")));
    server.on("/_api/cancel-workflow", () => ok({ status: "compensating" }));
    const wf = live(client.followWorkflow("w-2"));
    await openSession(server, "s1");
    await settle();
    expect(wf.current).toMatchObject({ workflowId: "w-2", status: "waiting", loading: false });
    await wf.cancel();
    expect(server.to("/_api/cancel-workflow").map((r) => r.body)).toEqual([{ workflowId: "w-2" }]);
    expect(wf.workflowId).toBe("w-2");
  });

  it("an unknown id ends as not_found", async () => {
    const { server, client } = setup();
    server.on("/_api/subscribe-workflow", (r) => ok(workflowState(r.body.workflowId, "not_found")));
    const wf = live(client.followWorkflow("w-3"));
    await openSession(server, "s1");
    await settle();
    expect(wf.current).toMatchObject({ status: "not_found", loading: false });
  });
});

describe("query tracker", () => {
  it("subscribes with the first subscriber, updates from events, keeps data on a failed re-run", async () => {
    const { server, client } = setup();
    server.on("/_api/subscribe", () => ok([1]));
    server.on("/_api/unsubscribe", () => ok(true));
    const q = client.liveQuery<number[]>("list", { limit: 5 });
    await settle();
    expect(server.streams).toHaveLength(0);
    const rec = record(q);
    await settle();
    await openSession(server, "s1");
    await settle();
    expect(server.to("/_api/subscribe")[0]!.body).toEqual({
      sessionId: "s1",
      sessionSecret: "secret-s1",
      subscriptionId: q.subscriptionId,
      fn: "list",
      args: { limit: 5 },
    });
    server.stream.send("query", { subscriptionId: q.subscriptionId, data: [1, 2] });
    server.stream.send("query", { subscriptionId: q.subscriptionId, error: { code: "timeout", message: "too slow" } });
    await settle();
    expect(rec.seen.map((s) => s.data)).toEqual([null, [1], [1, 2], [1, 2]]);
    expect(rec.last().error).toMatchObject({ code: "timeout", message: "too slow" });
    rec.stop();
    await settle();
    expect(server.to("/_api/unsubscribe").map((r) => r.body.subscriptionId)).toEqual([q.subscriptionId]);
  });

  it("shows a refused subscription (e.g. bad arguments) as its error", async () => {
    const { server, client } = setup();
    server.on("/_api/subscribe", () => fail(400, "invalid_args", "limit: expected an integer", { field: "limit" }));
    const q = client.liveQuery("list", { limit: "x" });
    const rec = record(q);
    await settle();
    await openSession(server, "s1");
    await settle();
    expect(rec.last()).toMatchObject({ loading: false, data: null });
    expect(rec.last().error).toMatchObject({ code: "invalid_args", field: "limit" });
  });
});

describe("reload-safe tracking (a start with a key)", () => {
  const stored = new Map<string, string>();
  const fakeStorage = {
    getItem: (k: string) => stored.get(k) ?? null,
    setItem: (k: string, v: string) => void stored.set(k, v),
    removeItem: (k: string) => void stored.delete(k),
  };
  beforeEach(() => {
    stored.clear();
    (globalThis as { sessionStorage?: unknown }).sessionStorage = fakeStorage;
  });
  afterEach(() => {
    delete (globalThis as { sessionStorage?: unknown }).sessionStorage;
  });

  it("starts with the key as idempotency key and keeps the id; the next call follows it", async () => {
    const { server, client } = setup();
    startAnswers(server, "j-1");
    server.on("/_api/subscribe-job", (r) => ok(jobState(r.body.jobId, "running", { progress: 40 })));
    const first = live(startJob("export", { rows: 3 }, { key: "k1", client }));
    await openSession(server, "s1");
    await settle();
    expect(server.to("/_api/rpc")[0]!.body).toMatchObject({ fn: "export", idempotencyKey: "k1" });
    expect(stored.get("forge:track:job:export:k1")).toBe("j-1");
    expect(first.current).toMatchObject({ jobId: "j-1", loading: false });

    // As after a reload: the same call follows the kept job and starts nothing.
    const again = live(startJob("export", { rows: 3 }, { key: "k1", client }));
    await settle();
    expect(server.to("/_api/rpc")).toHaveLength(1);
    expect(server.to("/_api/subscribe-job")[0]!.body).toMatchObject({ jobId: "j-1" });
    expect(again.current).toMatchObject({ jobId: "j-1", status: "running", progress: 40, loading: false });
  });

  it("a kept id that is not_found (another user in this tab) starts under the key instead", async () => {
    const { server, client } = setup();
    stored.set("forge:track:job:export:k2", "j-old");
    startAnswers(server, "j-2");
    server.on("/_api/subscribe-job", (r) => ok(jobState(r.body.jobId, "not_found")));
    const job = live(startJob("export", {}, { key: "k2", client }));
    await openSession(server, "s1");
    await settle();
    expect(server.to("/_api/rpc")[0]!.body).toMatchObject({ idempotencyKey: "k2" });
    expect(job.current).toMatchObject({ jobId: "j-2", status: "pending", loading: false });
    expect(stored.get("forge:track:job:export:k2")).toBe("j-2");
  });

  it("without a key nothing is kept and the start carries no key", async () => {
    const { server, client } = setup();
    startAnswers(server, "j-3");
    live(startJob("export", {}, client));
    await openSession(server, "s1");
    await settle();
    expect(server.to("/_api/rpc")[0]!.body.idempotencyKey).toBeUndefined();
    expect(stored.size).toBe(0);
  });
});
