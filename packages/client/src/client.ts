import { resolveBackoff, type BackoffOptions } from "./backoff.js";
import { Connection, type ConnectionState, type EventSourceLike, type Session } from "./connection.js";
import { ForgeError } from "./errors.js";
import { Http, type FetchLike, type TokenProvider } from "./http.js";
import { parseJson } from "./json.js";
import { JobTracker, QueryTracker, WorkflowTracker, type Core, type Registration } from "./trackers.js";

export interface ForgeClientOptions {
  /** Where the gateway is: `""` (default) for the page's own origin, or e.g. `http://localhost:8080`. */
  baseUrl?: string;
  /** The bearer token; see {@link TokenProvider}. Without one, every call is anonymous. */
  token?: TokenProvider;
  /** Default: the global `fetch`. */
  fetch?: FetchLike;
  /**
   * Read the event stream with this `EventSource` instead of `fetch` (the token then goes in
   * the URL, and a refused token cannot be told from a network failure). Default: fetch.
   */
  EventSource?: EventSourceLike;
  backoff?: BackoffOptions;
}

/** One call of a batch; make it with {@link rpc} to keep its output type. */
export interface BatchCall<O = unknown> {
  fn: string;
  args?: unknown;
  /** Type only: the call's output. */
  readonly __output?: O;
}

export type BatchResult<O> = { ok: true; data: O } | { ok: false; error: ForgeError };

export type BatchResults<T extends readonly BatchCall[]> = {
  -readonly [K in keyof T]: T[K] extends BatchCall<infer O> ? BatchResult<O> : never;
};

/** A typed call for {@link ForgeClient.batch}. */
export function rpc<O = unknown, A = unknown>(fn: string, args?: A): BatchCall<O> {
  return { fn, args: args ?? {} };
}

/**
 * A Forge client: RPC calls, and one event stream (opened when the first subscription needs
 * it) carrying every job, workflow and query this client follows. Framework-free: trackers
 * are stores in the Svelte sense (`subscribe(run)` returns the stopper), which React's
 * `useSyncExternalStore` or plain callbacks use as they are.
 */
export class ForgeClient implements Core {
  readonly #http: Http;
  readonly #connection: Connection;
  readonly #registrations = new Map<string, Registration>();
  #counter = 0;
  readonly #onOnline = () => {
    const s = this.#connection.state.status;
    if (s === "gave_up" || s === "reconnecting") this.#connection.reconnect();
  };

  constructor(options: ForgeClientOptions = {}) {
    const fetchFn = options.fetch ?? ((input: string, init?: RequestInit) => globalThis.fetch(input, init));
    this.#http = new Http((options.baseUrl ?? "").replace(/\/+$/, ""), fetchFn, options.token);
    this.#connection = new Connection(
      this.#http,
      resolveBackoff(options.backoff),
      {
        onSession: (s) => this.#attachAll(s),
        onEvent: (name, data) => this.#event(name, data),
        onLost: (e) => {
          for (const r of [...this.#registrations.values()]) r.onConnectionLost(e);
        },
      },
      options.EventSource,
    );
    globalThis.addEventListener?.("online", this.#onOnline);
  }

  /** The event stream's state, observable: `client.connection.subscribe(s => ...)`. */
  get connection(): Pick<Connection, "state" | "subscribe"> {
    return this.#connection;
  }

  /** Calls a query or mutation (or starts a job or workflow, answering `{ jobId, state }`). */
  call<O = unknown>(fn: string, args?: unknown): Promise<O> {
    return this.#http.post(`/_api/rpc/${encodeURIComponent(fn)}`, args ?? {}) as Promise<O>;
  }

  /**
   * Several calls in one request, one result each, in order (docs/protocol.md: consecutive
   * queries run side by side, other calls alone in order). A failing call fails alone; only a
   * failure of the whole request (network, a bad token) rejects.
   */
  async batch<const T extends readonly BatchCall[]>(calls: T): Promise<BatchResults<T>> {
    const body = calls.map((c) => ({ fn: c.fn, args: c.args ?? {} }));
    const answer = (await this.#http.post("/_api/rpc/batch", body, true)) as { results?: unknown };
    if (!Array.isArray(answer?.results) || answer.results.length !== calls.length) {
      throw new ForgeError("bad_response", "the batch answer does not hold one result per call");
    }
    return answer.results.map((r: { data?: unknown; error?: unknown }) =>
      r && "error" in r && r.error !== undefined
        ? { ok: false, error: ForgeError.fromEnvelope(r.error) }
        : { ok: true, data: r?.data },
    ) as BatchResults<T>;
  }

  /**
   * Starts job `fn` and follows it, in one request: no update can be missed. With `key`, see
   * {@link TrackOptions.key}.
   */
  startJob<O = unknown>(fn: string, args?: unknown, key?: string): JobTracker<O> {
    return JobTracker.start<O>(this, fn, args, key);
  }

  /** Follows the existing job `jobId` (e.g. after a page reload). */
  followJob<O = unknown>(jobId: string): JobTracker<O> {
    return JobTracker.follow<O>(this, jobId);
  }

  startWorkflow<O = unknown>(fn: string, args?: unknown, key?: string): WorkflowTracker<O> {
    return WorkflowTracker.start<O>(this, fn, args, key);
  }

  followWorkflow<O = unknown>(workflowId: string): WorkflowTracker<O> {
    return WorkflowTracker.follow<O>(this, workflowId);
  }

  /** A live query; subscribed from its first subscriber to its last. */
  liveQuery<O = unknown>(fn: string, args?: unknown): QueryTracker<O> {
    return new QueryTracker<O>(this, fn, args);
  }

  /** Connects the event stream again now (after `gave_up` or `unauthorized`, or to skip a wait). */
  reconnect(): void {
    this.#connection.reconnect();
    if (this.#registrations.size > 0) this.#connection.ensureOpen();
  }

  /** Closes the stream for good; trackers keep their last state. */
  close(): void {
    globalThis.removeEventListener?.("online", this.#onOnline);
    this.#connection.close();
  }

  // Core, for the trackers.

  /** @internal */
  post(path: string, body: unknown): Promise<unknown> {
    return this.#http.post(path, body);
  }

  /** @internal */
  nextId(prefix: string): string {
    return `${prefix}${++this.#counter}`;
  }

  /** @internal */
  register(reg: Registration): void {
    this.#registrations.set(reg.subscriptionId, reg);
    const status = this.#connection.state.status;
    if (status === "closed" || status === "unauthorized" || status === "gave_up") {
      reg.onConnectionLost(this.#connection.state.error ?? new ForgeError("closed", "the client was closed"));
      return;
    }
    const session = this.#connection.session;
    if (session) reg.attach(session);
    else this.#connection.ensureOpen();
  }

  /** @internal */
  unregister(reg: Registration, session: Session | null): void {
    if (this.#registrations.get(reg.subscriptionId) === reg) this.#registrations.delete(reg.subscriptionId);
    if (session && session === this.#connection.session) {
      this.#http
        .post("/_api/unsubscribe", { ...session, subscriptionId: reg.subscriptionId })
        // The session may have ended meanwhile, which ended the subscription too.
        .catch(() => {});
    }
  }

  /** @internal */
  sessionGone(session: Session): void {
    this.#connection.invalidate(session);
  }

  #attachAll(session: Session): void {
    for (const r of [...this.#registrations.values()]) {
      if (this.#connection.session !== session) return;
      r.attach(session);
    }
  }

  #event(name: string, data: string): void {
    let payload: Record<string, unknown>;
    try {
      payload = parseJson(data) as Record<string, unknown>;
    } catch (e) {
      // Tell the subscription it was for, found without the 64-bit check.
      try {
        const id = (JSON.parse(data) as { subscriptionId?: unknown }).subscriptionId;
        if (typeof id === "string") this.#registrations.get(id)?.onBadEvent(e as ForgeError);
      } catch {
        // Not JSON at all: there is nobody to tell.
      }
      return;
    }
    const id = payload?.subscriptionId;
    if (typeof id === "string") this.#registrations.get(id)?.onEvent(name, payload);
  }
}

export type { ConnectionState };

export function createForgeClient(options: ForgeClientOptions = {}): ForgeClient {
  return new ForgeClient(options);
}

let defaultClient: ForgeClient | null = null;

/**
 * Sets the client the generated code and the stores use. A client configured before is
 * closed (its stream with its token); stores made on it keep their last state.
 */
export function configureForge(options: ForgeClientOptions | ForgeClient = {}): ForgeClient {
  defaultClient?.close();
  defaultClient = options instanceof ForgeClient ? options : new ForgeClient(options);
  return defaultClient;
}

/** The default client; made on first use for the page's own origin, without a token. */
export function getForgeClient(): ForgeClient {
  defaultClient ??= new ForgeClient();
  return defaultClient;
}

// The entry points of the generated code: each takes an explicit client last, for pages with
// more than one (or a client from a framework's context), and uses the default otherwise.

/** The second argument of a generated `track…` function: a client, or these options. */
export interface TrackOptions {
  /**
   * Makes the start reload-safe: one run per key. The first call under a key starts the job or
   * workflow and keeps its id in this tab's sessionStorage; a later call under the same key
   * (after a reload, say) follows that run instead of starting another, and shows its state as
   * it is now. The key also goes to the server as the start's idempotency key, kept per user
   * and function and never forgotten there: two tabs starting under one key at once get the
   * same run, and a key used again in a later session gets its earlier run back. Use a key per
   * run you mean (`export-${reportId}`), not one for every run. Without a key every call
   * starts a new run.
   */
  key?: string;
  /** The client to use (default: the one `configureForge` set). */
  client?: ForgeClient;
}

function trackOptions(options: ForgeClient | TrackOptions | undefined): { client: ForgeClient; key?: string } {
  if (options instanceof ForgeClient) return { client: options };
  return { client: options?.client ?? getForgeClient(), key: options?.key };
}

/** Starts job `fn` with `args` and follows it, in one request. */
export function startJob<A, O>(fn: string, args: A, options?: ForgeClient | TrackOptions): JobTracker<O> {
  const { client, key } = trackOptions(options);
  return client.startJob<O>(fn, args, key);
}

/** Follows the existing job `jobId` (e.g. kept across a page reload); starts nothing. */
export function followJob<O>(jobId: string, client: ForgeClient = getForgeClient()): JobTracker<O> {
  return client.followJob<O>(jobId);
}

/** Starts workflow `fn` with `args` and follows it, in one request; `options` as for jobs. */
export function startWorkflow<A, O>(fn: string, args: A, options?: ForgeClient | TrackOptions): WorkflowTracker<O> {
  const { client, key } = trackOptions(options);
  return client.startWorkflow<O>(fn, args, key);
}

/** Follows the existing workflow `workflowId`; starts nothing. */
export function followWorkflow<O>(workflowId: string, client: ForgeClient = getForgeClient()): WorkflowTracker<O> {
  return client.followWorkflow<O>(workflowId);
}

/** Query `fn` with `args`, kept current: it runs again on the server when what it read changes. */
export function liveQuery<A, O>(fn: string, args: A, client: ForgeClient = getForgeClient()): QueryTracker<O> {
  return client.liveQuery<O>(fn, args);
}

/** Calls a query or mutation once. Rejects with a {@link ForgeError}. */
export function callFunction<A, O>(fn: string, args: A, client: ForgeClient = getForgeClient()): Promise<O> {
  return client.call<O>(fn, args);
}
