// A fake gateway for unit tests: answers the client's fetch calls from per-route handlers and
// gives each `GET /_api/events` a stream the test writes to.
import { vi } from "vitest";

export interface Request {
  path: string;
  body: any;
  headers: Record<string, string>;
}

type Handler = (req: Request) => Response | Promise<Response>;

export const ok = (data: unknown): Response =>
  new Response(JSON.stringify({ data }), { status: 200, headers: { "content-type": "application/json" } });

export const fail = (status: number, code: string, message: string, details?: unknown): Response =>
  new Response(JSON.stringify({ error: { code, message, details } }), {
    status,
    headers: { "content-type": "application/json" },
  });

export class FakeStream {
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #encoder = new TextEncoder();
  closed = false;
  readonly body: ReadableStream<Uint8Array>;

  constructor(readonly headers: Record<string, string>) {
    this.body = new ReadableStream({
      start: (c) => {
        this.#controller = c;
      },
      cancel: () => {
        this.closed = true;
      },
    });
  }

  write(text: string): void {
    this.#controller.enqueue(this.#encoder.encode(text));
  }

  send(event: string, data: unknown): void {
    this.write(`event: ${event}\ndata: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
  }

  session(sessionId: string, sessionSecret = `secret-${sessionId}`): void {
    this.send("session", { sessionId, sessionSecret });
  }

  /** The server ends the stream. */
  end(): void {
    this.closed = true;
    this.#controller.close();
  }

  /** The connection breaks. */
  break(): void {
    this.closed = true;
    this.#controller.error(new TypeError("network error"));
  }
}

export class FakeServer {
  readonly requests: Request[] = [];
  readonly streams: FakeStream[] = [];
  readonly routes = new Map<string, Handler>();
  /** The answer to `GET /_api/events`: a status, or 200 with a new stream. */
  eventsStatus: (headers: Record<string, string>) => number = () => 200;

  readonly fetch = vi.fn(async (url: string, init: RequestInit = {}): Promise<Response> => {
    const path = new URL(url, "http://fake").pathname;
    const headers = { ...(init.headers as Record<string, string>) };
    if (path === "/_api/events") {
      const status = this.eventsStatus(headers);
      if (status !== 200) return fail(status, status === 401 ? "unauthenticated" : "unavailable", `HTTP ${status}`);
      const stream = new FakeStream(headers);
      this.streams.push(stream);
      init.signal?.addEventListener("abort", () => {
        stream.closed = true;
      });
      return new Response(stream.body, { status: 200, headers: { "content-type": "text/event-stream" } });
    }
    const req: Request = { path, body: init.body ? JSON.parse(String(init.body)) : undefined, headers };
    this.requests.push(req);
    const handler = this.routes.get(path);
    if (!handler) return fail(404, "not_found", `unknown route ${path}`);
    return handler(req);
  });

  on(path: string, handler: Handler): this {
    this.routes.set(path, handler);
    return this;
  }

  to(path: string): Request[] {
    return this.requests.filter((r) => r.path === path);
  }

  get stream(): FakeStream {
    const s = this.streams.at(-1);
    if (!s) throw new Error("no event stream was opened");
    return s;
  }
}

/** Lets pending promises and stream reads run (fake timers leave setImmediate real: see
 * `useFakeTime`). */
export async function settle(times = 20): Promise<void> {
  for (let i = 0; i < times; i++) await new Promise((r) => setImmediate(r));
}

export function useFakeTime(): void {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] });
}

export const jobState = (jobId: string, status: string, extra: Record<string, unknown> = {}) => ({
  jobId,
  status,
  progress: null,
  message: null,
  output: null,
  error: null,
  ...extra,
});

export const workflowState = (workflowId: string, status: string, extra: Record<string, unknown> = {}) => ({
  workflowId,
  status,
  step: null,
  waitingFor: null,
  steps: [],
  output: null,
  error: null,
  ...extra,
});

/** `tracker` with a subscriber that ignores it: following starts with the first subscriber. */
export function live<T extends { subscribe(run: (s: any) => void): unknown }>(tracker: T): T {
  tracker.subscribe(() => {});
  return tracker;
}
