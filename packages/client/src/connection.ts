import { backoffDelay, type ResolvedBackoff } from "./backoff.js";
import { ForgeError } from "./errors.js";
import type { Http } from "./http.js";
import { SseParser } from "./sse.js";

/**
 * The event stream's state:
 * - `idle`: not needed yet (nothing subscribed),
 * - `connecting`: the first connection is being made,
 * - `open`: connected, subscriptions are live,
 * - `reconnecting`: the stream dropped; waiting (`nextRetryAt`) or connecting again,
 * - `unauthorized`: the server refused the token, also after asking for a fresh one,
 * - `gave_up`: `maxAttempts` connections in a row failed,
 * - `closed`: `client.close()` was called.
 *
 * From `unauthorized` and `gave_up` the client only comes back with `client.reconnect()` (a
 * browser coming back online does it by itself).
 */
export type ConnectionStatus =
  | "idle"
  | "connecting"
  | "open"
  | "reconnecting"
  | "unauthorized"
  | "gave_up"
  | "closed";

export interface ConnectionState {
  status: ConnectionStatus;
  /** Failed connection attempts in a row. */
  attempt: number;
  /** When the next attempt starts (ms since the epoch), while waiting to reconnect. */
  nextRetryAt: number | null;
  /** Why the last connection failed or ended, if it did. */
  error: ForgeError | null;
}

/** The session proof of one stream (docs/protocol.md, "Realtime"). */
export interface Session {
  sessionId: string;
  sessionSecret: string;
}

/** How the stream is read: `fetch` (default; sends the token as a header) or `EventSource`. */
export type EventSourceLike = new (url: string) => {
  addEventListener(type: string, listener: (e: { data?: unknown }) => void): void;
  onopen: ((e: unknown) => void) | null;
  onerror: ((e: unknown) => void) | null;
  close(): void;
};

interface Hooks {
  onSession(session: Session): void;
  onEvent(name: string, data: string): void;
  /** The stream will not come back by itself (`unauthorized`, `gave_up`, `closed`). */
  onLost(error: ForgeError): void;
}

type Outcome =
  | { kind: "ended"; opened: boolean; error?: ForgeError }
  | { kind: "refused"; status: number };

const SSE_EVENTS = ["session", "job", "workflow", "query"];

/** One client's event stream: opened on demand, reconnected with backoff, observable. */
export class Connection {
  #state: ConnectionState = { status: "idle", attempt: 0, nextRetryAt: null, error: null };
  #listeners = new Set<(s: ConnectionState) => void>();
  #session: Session | null = null;
  #running = false;
  #everOpened = false;
  #abort: AbortController | null = null;
  #wake: (() => void) | null = null;

  constructor(
    private readonly http: Http,
    private readonly backoff: ResolvedBackoff,
    private readonly hooks: Hooks,
    private readonly eventSource?: EventSourceLike,
  ) {}

  get state(): ConnectionState {
    return this.#state;
  }

  get session(): Session | null {
    return this.#session;
  }

  /** Store contract: `run` is called at once and on every change. */
  subscribe(run: (s: ConnectionState) => void): () => void {
    this.#listeners.add(run);
    run(this.#state);
    return () => {
      this.#listeners.delete(run);
    };
  }

  /** Opens the stream if it is not open or being opened, unless it was given up or closed. */
  ensureOpen(): void {
    const s = this.#state.status;
    if (this.#running || s === "unauthorized" || s === "gave_up" || s === "closed") return;
    void this.#run();
  }

  /** Connects again now: after `gave_up` or `unauthorized` (e.g. signed in again), or to skip a wait. */
  reconnect(): void {
    if (this.#state.status === "closed") return;
    if (this.#running) {
      this.#abort?.abort();
      this.#wake?.();
      return;
    }
    this.#set({ attempt: 0 });
    void this.#run();
  }

  /** The server no longer knows `session` (a call was answered 404 for it): open a new one. */
  invalidate(session: Session): void {
    if (this.#session === session) this.#abort?.abort();
  }

  close(): void {
    if (this.#state.status === "closed") return;
    this.#set({ status: "closed", nextRetryAt: null });
    this.#session = null;
    this.#abort?.abort();
    this.#wake?.();
  }

  #set(patch: Partial<ConnectionState>): void {
    this.#state = { ...this.#state, ...patch };
    for (const l of [...this.#listeners]) l(this.#state);
  }

  #closed(): boolean {
    return this.#state.status === "closed";
  }

  async #run(): Promise<void> {
    this.#running = true;
    let refreshed = false;
    try {
      while (!this.#closed()) {
        const first = !this.#everOpened && this.#state.attempt === 0;
        this.#set({ status: first ? "connecting" : "reconnecting", nextRetryAt: null });
        const abort = new AbortController();
        this.#abort = abort;
        let outcome: Outcome;
        try {
          const token = await this.http.token(refreshed);
          outcome = await this.#stream(token, abort.signal);
        } catch (e) {
          outcome = { kind: "ended", opened: false, error: streamError(e) };
        }
        this.#session = null;
        this.#abort = null;
        if (this.#closed()) break;
        if (outcome.kind === "refused" && outcome.status === 401) {
          if (!refreshed) {
            refreshed = true;
            continue;
          }
          const error = new ForgeError("unauthenticated", "the event stream refused the token", { status: 401 });
          this.#set({ status: "unauthorized", error, nextRetryAt: null });
          this.hooks.onLost(error);
          return;
        }
        let error: ForgeError | null;
        if (outcome.kind === "refused") {
          error = new ForgeError("unavailable", `the event stream answered HTTP ${outcome.status}`, {
            status: outcome.status,
          });
        } else {
          error = outcome.error ?? null;
          if (outcome.opened) refreshed = false;
        }
        const attempt = this.#state.attempt;
        if (attempt >= this.backoff.maxAttempts) {
          const lost = new ForgeError(
            "connection_lost",
            `gave up reconnecting the event stream after ${attempt} attempts${error ? `: ${error.message}` : ""}`,
            { cause: error ?? undefined },
          );
          this.#set({ status: "gave_up", error: lost, nextRetryAt: null });
          this.hooks.onLost(lost);
          return;
        }
        const delay = backoffDelay(attempt, this.backoff);
        this.#set({ status: "reconnecting", attempt: attempt + 1, error, nextRetryAt: Date.now() + delay });
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, delay);
          this.#wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.#wake = null;
      }
    } finally {
      this.#running = false;
    }
    if (this.#closed()) this.hooks.onLost(new ForgeError("closed", "the client was closed"));
  }

  #opened(data: string): void {
    let session: Session;
    try {
      session = JSON.parse(data) as Session;
    } catch {
      return;
    }
    if (typeof session?.sessionId !== "string" || typeof session.sessionSecret !== "string") return;
    this.#session = session;
    this.#everOpened = true;
    this.#set({ status: "open", attempt: 0, nextRetryAt: null, error: null });
    this.hooks.onSession(session);
  }

  #dispatch = (name: string, data: string): void => {
    if (name === "session") this.#opened(data);
    else if (this.#session) this.hooks.onEvent(name, data);
  };

  #stream(token: string | null, signal: AbortSignal): Promise<Outcome> {
    const url = this.http.url("/_api/events");
    return this.eventSource
      ? eventSourceStream(this.eventSource, url, token, signal, this.#dispatch)
      : fetchStream(this.http, url, token, signal, this.#dispatch);
  }
}

function streamError(e: unknown): ForgeError {
  if (e instanceof ForgeError) return e;
  return new ForgeError("network", `the event stream broke off: ${(e as Error)?.message ?? e}`, { cause: e });
}

/** Reads the stream with fetch, so the token goes in the `Authorization` header. */
async function fetchStream(
  http: Http,
  url: string,
  token: string | null,
  signal: AbortSignal,
  dispatch: (name: string, data: string) => void,
): Promise<Outcome> {
  const headers: Record<string, string> = { accept: "text/event-stream" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await http.fetch(url, { headers, signal, cache: "no-store" });
  if (!res.ok || !res.body) {
    await res.body?.cancel().catch(() => {});
    return { kind: "refused", status: res.status };
  }
  let opened = false;
  const parser = new SseParser((e) => {
    if (e.event === "session") opened = true;
    dispatch(e.event, e.data);
  });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const onAbort = () => void reader.cancel().catch(() => {});
  signal.addEventListener("abort", onAbort);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { kind: "ended", opened };
      parser.feed(value);
    }
  } catch (e) {
    return { kind: "ended", opened, error: signal.aborted ? undefined : streamError(e) };
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

/**
 * Reads the stream with an `EventSource`, which cannot send headers: the token goes as
 * `?token=` (see docs/protocol.md on keeping such tokens short-lived). EventSource does not
 * tell a refusal from a network failure, so an unauthorized stream ends as `gave_up` here.
 */
function eventSourceStream(
  ES: EventSourceLike,
  url: string,
  token: string | null,
  signal: AbortSignal,
  dispatch: (name: string, data: string) => void,
): Promise<Outcome> {
  return new Promise((resolve) => {
    const es = new ES(token ? `${url}?token=${encodeURIComponent(token)}` : url);
    let opened = false;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      // EventSource would reconnect by itself, without backoff and with the old token.
      es.close();
      signal.removeEventListener("abort", finish);
      resolve({ kind: "ended", opened });
    };
    es.onerror = finish;
    signal.addEventListener("abort", finish);
    for (const name of SSE_EVENTS) {
      es.addEventListener(name, (e) => {
        if (finished) return;
        if (name === "session") opened = true;
        dispatch(name, String(e.data));
      });
    }
  });
}
