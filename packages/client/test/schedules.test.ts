import { describe, expect, it } from "vitest";
import { createForgeClient, createSchedule, deleteSchedule, ForgeError, listSchedules, pauseSchedule } from "../src/index.js";
import { fail, FakeServer, ok } from "./fake.js";

describe("schedules", () => {
  it("posts to the schedule routes with the token and answers data", async () => {
    const schedule = { id: "s1", name: "digest", paused: false, nextTicks: ["2026-01-05T08:00:00Z"] };
    const server = new FakeServer()
      .on("/_api/schedules/create", (r) => ok({ ...schedule, function: r.body.function }))
      .on("/_api/schedules/list", () => ok([schedule]))
      .on("/_api/schedules/pause", (r) => ok({ ...schedule, id: r.body.scheduleId, paused: true, nextTicks: [] }))
      .on("/_api/schedules/delete", () => ok(null));
    const client = createForgeClient({ baseUrl: "http://api/", fetch: server.fetch, token: () => "t1" });
    const created = await createSchedule({ function: "digest", args: { to: "a" }, cron: "0 9 * * MON" }, client);
    expect(created.function).toBe("digest");
    expect(server.requests[0]!.body).toEqual({ function: "digest", args: { to: "a" }, cron: "0 9 * * MON" });
    expect(server.requests[0]!.headers.authorization).toBe("Bearer t1");
    expect(await listSchedules(client)).toEqual([schedule]);
    expect((await pauseSchedule("s1", client)).paused).toBe(true);
    expect(server.requests[2]!.body).toEqual({ scheduleId: "s1" });
    await deleteSchedule("s1", client);
    expect(server.fetch.mock.calls.map((c) => c[0])).toEqual([
      "http://api/_api/schedules/create",
      "http://api/_api/schedules/list",
      "http://api/_api/schedules/pause",
      "http://api/_api/schedules/delete",
    ]);
  });

  it("rejects with the field the server names", async () => {
    const server = new FakeServer().on("/_api/schedules/create", () =>
      fail(400, "invalid_args", "invalid `cron`", { field: "cron" }),
    );
    const client = createForgeClient({ fetch: server.fetch });
    const e = (await createSchedule({ function: "f", cron: "x" }, client).catch((e) => e)) as ForgeError;
    expect([e.code, e.field]).toEqual(["invalid_args", "cron"]);
  });
});
