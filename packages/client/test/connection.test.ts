import { afterEach, describe, expect, it, vi } from "vitest";
import { createForgeClient, type ConnectionStatus, type ForgeClient, type JobState } from "../src/index.js";
import { FakeServer, jobState, live, ok, settle, useFakeTime } from "./fake.js";

const clients: ForgeClient[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  vi.useRealTimers();
});

function make(server: FakeServer, extra: Parameters<typeof createForgeClient>[0] = {}) {
  const client = createForgeClient({ fetch: server.fetch, token: () => "tok", ...extra });
  clients.push(client);
  return client;
}

function statuses(client: ForgeClient): ConnectionStatus[] {
  const out: ConnectionStatus[] = [];
  client.connection.subscribe((s) => {
    if (out.at(-1) !== s.status) out.push(s.status);
  });
  return out;
}

describe("connection", () => {
  it("is idle until something needs the stream, then connecting, then open", async () => {
    const server = new FakeServer();
    server.on("/_api/subscribe-job", () => ok(jobState("j", "running")));
    const client = make(server);
    const seen = statuses(client);
    await client.call("x").catch(() => {});
    expect(server.streams).toHaveLength(0);
    live(client.followJob("j"));
    await settle();
    server.stream.session("s1");
    await settle();
    expect(seen).toEqual(["idle", "connecting", "open"]);
    expect(server.stream.headers.authorization).toBe("Bearer tok");
    expect(server.stream.headers.accept).toBe("text/event-stream");
  });

  it("retries on the backoff schedule (growth, jitter within bounds, cap), then gives up", async () => {
    useFakeTime();
    const server = new FakeServer();
    server.eventsStatus = () => 503;
    const random = vi.fn(() => 0.5);
    const client = make(server, {
      backoff: { initialMs: 100, factor: 2, maxMs: 1000, jitter: 0.2, maxAttempts: 6, random },
    });
    const seen = statuses(client);
    const job = live(client.followJob("j"));
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      await settle();
      const { nextRetryAt, status, attempt } = client.connection.state;
      expect(status).toBe("reconnecting");
      expect(attempt).toBe(i + 1);
      const delay = nextRetryAt! - Date.now();
      delays.push(delay);
      await vi.advanceTimersByTimeAsync(delay - 1);
      expect(server.fetch.mock.calls.length).toBe(i + 1); // not a millisecond early
      await vi.advanceTimersByTimeAsync(1);
    }
    // base 100, 200, 400, 800, 1000 (cap), 1000; jitter 0.2 at random 0.5 takes 10% off.
    expect(delays).toEqual([90, 180, 360, 720, 900, 900]);
    await settle();
    expect(server.fetch).toHaveBeenCalledTimes(7);
    expect(client.connection.state.status).toBe("gave_up");
    expect(client.connection.state.error?.code).toBe("connection_lost");
    expect(seen).toEqual(["idle", "connecting", "reconnecting", "gave_up"]);
    // It never stops silently: the waiting store says why.
    expect(job.current).toMatchObject({ loading: false, status: "failed" });
    expect(job.current.requestError?.code).toBe("connection_lost");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(server.fetch).toHaveBeenCalledTimes(7);

    // reconnect() starts over.
    server.eventsStatus = () => 200;
    client.reconnect();
    await settle();
    server.stream.session("s1");
    await settle();
    expect(client.connection.state).toMatchObject({ status: "open", attempt: 0 });
  });

  it("starts the schedule over after a connection that opened", async () => {
    useFakeTime();
    const server = new FakeServer();
    const client = make(server, { backoff: { initialMs: 100, maxMs: 10_000, jitter: 0 } });
    client.liveQuery("q").subscribe(() => {});
    server.on("/_api/subscribe", () => ok(1));
    let fails = 3;
    server.eventsStatus = () => (fails-- > 0 ? 503 : 200);
    for (const wait of [100, 200, 400]) {
      await settle();
      await vi.advanceTimersByTimeAsync(wait);
    }
    await settle();
    server.stream.session("s1");
    await settle();
    expect(client.connection.state).toMatchObject({ status: "open", attempt: 0 });
    server.stream.end();
    await settle();
    expect(client.connection.state.nextRetryAt! - Date.now()).toBe(100);
  });

  it("on a refused token asks for a fresh one once, then says unauthorized", async () => {
    const server = new FakeServer();
    server.eventsStatus = (h) => (h.authorization === "Bearer fresh" ? 200 : 401);
    const token = vi.fn(({ refresh }: { refresh: boolean }) => (refresh ? "fresh" : "old"));
    const client = make(server, { token });
    live(client.followJob("j"));
    await settle();
    expect(server.streams).toHaveLength(1);
    expect(token.mock.calls.map((c) => c[0].refresh)).toEqual([false, true]);

    const refused = new FakeServer();
    refused.eventsStatus = () => 401;
    const t2 = vi.fn(() => "bad");
    const c2 = make(refused, { token: t2 });
    const seen = statuses(c2);
    live(c2.followJob("j"));
    await settle();
    expect(seen).toEqual(["idle", "connecting", "unauthorized"]);
    expect(t2).toHaveBeenCalledTimes(2);
    expect(refused.fetch).toHaveBeenCalledTimes(2);
    // A tracker made afterwards learns at once.
    expect(live(c2.followJob("k")).current).toMatchObject({ status: "failed", loading: false });
  });

  it("reconnects with a fresh token when the server ends the stream (token expiry)", async () => {
    const server = new FakeServer();
    server.on("/_api/subscribe-job", () => ok(jobState("j", "running")));
    let n = 0;
    const client = make(server, { token: () => `t${++n}`, backoff: { initialMs: 1, maxMs: 1 } });
    live(client.followJob("j"));
    await settle();
    server.stream.session("s1");
    await settle();
    server.stream.end();
    await new Promise((r) => setTimeout(r, 5));
    await settle();
    // The provider is asked again for the new stream (and for every call in between).
    expect(server.streams.map((s) => s.headers.authorization)).toEqual(["Bearer t1", `Bearer t${n}`]);
    expect(n).toBeGreaterThan(1);
  });

  it("close() ends the stream and reconnects no more", async () => {
    const server = new FakeServer();
    const client = make(server);
    const job = live(client.followJob<unknown>("j"));
    await settle();
    server.stream.session("s1");
    await settle();
    client.close();
    await settle();
    expect(server.stream.closed).toBe(true);
    expect(client.connection.state.status).toBe("closed");
    await new Promise((r) => setTimeout(r, 20));
    expect(server.streams).toHaveLength(1);
    expect((job.current as JobState).loading).toBe(false);
  });

  it("reads the stream through an EventSource with the token in the URL", async () => {
    class FakeES {
      static last: FakeES;
      listeners = new Map<string, (e: { data: string }) => void>();
      onopen: ((e: unknown) => void) | null = null;
      onerror: ((e: unknown) => void) | null = null;
      closed = false;
      constructor(readonly url: string) {
        FakeES.last = this;
      }
      addEventListener(type: string, l: (e: { data: string }) => void) {
        this.listeners.set(type, l);
      }
      close() {
        this.closed = true;
      }
    }
    const server = new FakeServer();
    server.on("/_api/subscribe-job", () => ok(jobState("j", "running")));
    const client = make(server, { baseUrl: "http://api", EventSource: FakeES, token: () => "a b" });
    const job = live(client.followJob("j"));
    await settle();
    expect(FakeES.last.url).toBe("http://api/_api/events?token=a%20b");
    FakeES.last.listeners.get("session")!({ data: JSON.stringify({ sessionId: "s1", sessionSecret: "x" }) });
    await settle();
    expect(job.current.status).toBe("running");
    FakeES.last.listeners.get("job")!({ data: JSON.stringify({ subscriptionId: job.subscriptionId, state: jobState("j", "completed") }) });
    expect(job.current.status).toBe("completed");
    const first = FakeES.last;
    first.onerror!({});
    await settle();
    expect(first.closed).toBe(true);
    expect(client.connection.state.status).toBe("reconnecting");
  });
});
