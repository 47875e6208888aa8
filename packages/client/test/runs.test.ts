import { describe, expect, it } from "vitest";
import {
  cancelJobs,
  createForgeClient,
  deleteJobs,
  ForgeError,
  getJob,
  getWorkflow,
  listJobs,
  listWorkflows,
  replayWorkflow,
  retryJobs,
} from "../src/index.js";
import { fail, FakeServer, jobState, ok, workflowState } from "./fake.js";

describe("runs", () => {
  it("posts the reads to their routes and answers the data", async () => {
    const job = { ...jobState("j1", "completed"), function: "export_users", owner: "u1", attempts: 1 };
    const page = { items: [job], nextCursor: "c2" };
    const detail = { ...job, args: { format: "csv" }, attemptHistory: [] };
    const workflow = { ...workflowState("w1", "waiting"), name: "verify", owner: "u1" };
    const wDetail = { ...workflow, args: {}, resumeAt: null, stepDetails: [], events: [] };
    const server = new FakeServer()
      .on("/_api/jobs/list", () => ok(page))
      .on("/_api/jobs/get", () => ok(detail))
      .on("/_api/workflows/list", () => ok({ items: [workflow], nextCursor: null }))
      .on("/_api/workflows/get", () => ok(wDetail));
    const client = createForgeClient({ baseUrl: "http://api/", fetch: server.fetch, token: () => "t1" });

    const filter = { status: ["failed" as const, "dead_letter" as const], createdAfter: "2026-01-01T00:00:00Z" };
    expect(await listJobs({ filter, cursor: "c1", limit: 20 }, client)).toEqual(page);
    expect(server.requests[0]!.body).toEqual({ filter, cursor: "c1", limit: 20 });
    expect(server.requests[0]!.headers.authorization).toBe("Bearer t1");
    expect(await getJob("j1", client)).toEqual(detail);
    expect(server.requests[1]!.body).toEqual({ jobId: "j1" });
    expect((await listWorkflows(undefined, client)).items).toEqual([workflow]);
    expect(server.requests[2]!.body).toEqual({});
    expect(await getWorkflow("w1", client)).toEqual(wDetail);
    expect(server.requests[3]!.body).toEqual({ workflowId: "w1" });
    expect(server.fetch.mock.calls.map((c) => c[0])).toEqual([
      "http://api/_api/jobs/list",
      "http://api/_api/jobs/get",
      "http://api/_api/workflows/list",
      "http://api/_api/workflows/get",
    ]);
  });

  it("posts the admin actions with their selector and answers the count or the new id", async () => {
    const server = new FakeServer()
      .on("/_api/admin/jobs/retry", (r) => ok({ count: r.body.jobIds.length }))
      .on("/_api/admin/jobs/cancel", () => ok({ count: 7 }))
      .on("/_api/admin/jobs/delete", () => ok({ count: 0 }))
      .on("/_api/admin/workflows/replay", () => ok({ workflowId: "w2" }));
    const client = createForgeClient({ fetch: server.fetch });

    expect(await retryJobs({ jobIds: ["j1", "j2"] }, client)).toBe(2);
    expect(server.requests[0]!.body).toEqual({ jobIds: ["j1", "j2"] });
    expect(await cancelJobs({ filter: { queue: "mail" } }, client)).toBe(7);
    expect(server.requests[1]!.body).toEqual({ filter: { queue: "mail" } });
    expect(await deleteJobs({ filter: {} }, client)).toBe(0);
    expect(server.requests[2]!.body).toEqual({ filter: {} });
    expect(await replayWorkflow("w1", client)).toBe("w2");
    expect(server.requests[3]!.body).toEqual({ workflowId: "w1" });
    expect(server.requests.map((r) => r.path)).toEqual([
      "/_api/admin/jobs/retry",
      "/_api/admin/jobs/cancel",
      "/_api/admin/jobs/delete",
      "/_api/admin/workflows/replay",
    ]);
  });

  it("rejects with the code and field the server names", async () => {
    const server = new FakeServer()
      .on("/_api/jobs/list", () => fail(403, "forbidden", "only the admin role lists other users' runs", { field: "filter.owner" }))
      .on("/_api/admin/jobs/retry", () => fail(409, "conflict", "job j1 is `completed` and cannot be retried"));
    const client = createForgeClient({ fetch: server.fetch });

    const e = (await listJobs({ filter: { owner: "u2" } }, client).catch((e) => e)) as ForgeError;
    expect(e).toBeInstanceOf(ForgeError);
    expect([e.code, e.field, e.status]).toEqual(["forbidden", "filter.owner", 403]);
    const c = (await retryJobs({ jobIds: ["j1"] }, client).catch((e) => e)) as ForgeError;
    expect([c.code, c.field]).toEqual(["conflict", undefined]);
  });
});
