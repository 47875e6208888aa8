import { describe, expect, it, vi } from "vitest";
import { createForgeClient, ForgeError, rpc } from "../src/index.js";
import { fail, FakeServer, ok } from "./fake.js";

describe("RPC", () => {
  it("posts the arguments to /_api/rpc/{fn} with the token and answers data", async () => {
    const server = new FakeServer().on("/_api/rpc/add", (r) => ok(r.body.a + r.body.b));
    const client = createForgeClient({ baseUrl: "http://api/", fetch: server.fetch, token: () => "t1" });
    expect(await client.call<number>("add", { a: 1, b: 2 })).toBe(3);
    expect(server.fetch.mock.calls[0]![0]).toBe("http://api/_api/rpc/add");
    expect(server.requests[0]!.headers.authorization).toBe("Bearer t1");
    expect(server.requests[0]!.headers["content-type"]).toBe("application/json");
  });

  it("sends {} for a function without arguments and no header without a token", async () => {
    const server = new FakeServer().on("/_api/rpc/now", () => ok("x"));
    const client = createForgeClient({ fetch: server.fetch, token: () => null });
    await client.call("now");
    expect(server.requests[0]!.body).toEqual({});
    expect(server.requests[0]!.headers.authorization).toBeUndefined();
  });

  it("rejects with the server's code, message, status and details", async () => {
    const server = new FakeServer().on("/_api/rpc/f", () =>
      fail(400, "invalid_args", "limit: must be at most 100", { field: "limit" }),
    );
    const client = createForgeClient({ fetch: server.fetch });
    const e = (await client.call("f", { limit: 500 }).catch((e) => e)) as ForgeError;
    expect(e).toBeInstanceOf(ForgeError);
    expect([e.code, e.message, e.status, e.field]).toEqual(["invalid_args", "limit: must be at most 100", 400, "limit"]);
  });

  it("turns a missing answer into `network` and a non-envelope answer into a status error", async () => {
    const down = createForgeClient({ fetch: () => Promise.reject(new TypeError("fetch failed")) });
    expect(await down.call("f").catch((e) => e.code)).toBe("network");
    const proxy = createForgeClient({ fetch: async () => new Response("<h1>Bad gateway</h1>", { status: 502 }) });
    expect(await proxy.call("f").catch((e) => [e.code, e.status])).toEqual(["unavailable", 502]);
  });

  it("refuses an answer with an integer beyond 2^53 - 1", async () => {
    const client = createForgeClient({
      fetch: async () => new Response('{"data": {"rows": 12345678901234567890}}', { status: 200 }),
    });
    expect(await client.call("f").catch((e) => e.code)).toBe("precision_loss");
  });

  it("on 401 asks the token provider once more, with refresh, and retries once", async () => {
    const server = new FakeServer().on("/_api/rpc/me", (r) =>
      r.headers.authorization === "Bearer fresh" ? ok("me") : fail(401, "unauthenticated", "token expired"),
    );
    const token = vi.fn(({ refresh }: { refresh: boolean }) => (refresh ? "fresh" : "stale"));
    const client = createForgeClient({ fetch: server.fetch, token });
    expect(await client.call("me")).toBe("me");
    expect(token.mock.calls.map((c) => c[0])).toEqual([{ refresh: false }, { refresh: true }]);
    expect(server.to("/_api/rpc/me")).toHaveLength(2);
  });

  it("gives up after the one refresh, with the server's 401", async () => {
    const server = new FakeServer().on("/_api/rpc/me", () => fail(401, "unauthenticated", "bad signature"));
    let n = 0;
    const token = vi.fn(async () => `token-${++n}`);
    const client = createForgeClient({ fetch: server.fetch, token });
    const e = (await client.call("me").catch((e) => e)) as ForgeError;
    expect([e.code, e.message, e.status]).toEqual(["unauthenticated", "bad signature", 401]);
    expect(token).toHaveBeenCalledTimes(2);
    expect(server.to("/_api/rpc/me")).toHaveLength(2);
  });

  it("does not retry when the refresh gives the same token or none", async () => {
    const server = new FakeServer().on("/_api/rpc/me", () => fail(401, "unauthenticated", "expired"));
    const client = createForgeClient({ fetch: server.fetch, token: () => "same" });
    expect(await client.call("me").catch((e) => e.code)).toBe("unauthenticated");
    expect(server.to("/_api/rpc/me")).toHaveLength(1);
  });

  it("batches typed calls, one result each, a failure failing alone", async () => {
    const server = new FakeServer().on("/_api/rpc/batch", (r) => {
      expect(r.body).toEqual([
        { fn: "count", args: {} },
        { fn: "rename", args: { name: "" } },
      ]);
      return new Response(
        JSON.stringify({ results: [{ data: 3 }, { error: { code: "invalid_args", message: "name: empty", details: { field: "name" } } }] }),
        { status: 200 },
      );
    });
    const client = createForgeClient({ fetch: server.fetch });
    const [count, rename] = await client.batch([rpc<number>("count"), rpc<void>("rename", { name: "" })]);
    expect(count).toEqual({ ok: true, data: 3 });
    if (count.ok) {
      const n: number = count.data;
      expect(n).toBe(3);
    }
    expect(rename.ok).toBe(false);
    if (!rename.ok) expect([rename.error.code, rename.error.field]).toEqual(["invalid_args", "name"]);
  });
});
