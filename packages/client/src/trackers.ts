import type { Session } from "./connection.js";
import { ForgeError, isSessionGone, toForgeError } from "./errors.js";
import {
  isTerminalJobStatus,
  isTerminalWorkflowStatus,
  type JobSnapshot,
  type JobStatus,
  type QueryState,
  type WorkflowSnapshot,
  type WorkflowStatus,
} from "./types.js";
import { forgetRun, keepRun, keptRun } from "./keys.js";

/** A start a tracker makes: `key` (optional) is its idempotency key (see `TrackOptions`). */
interface Start {
  fn: string;
  args: unknown;
  key?: string | undefined;
}

/** What a tracker needs from its client. */
export interface Core {
  post(path: string, body: unknown): Promise<unknown>;
  /** Keeps `reg` registered: attached to the current session and to every later one. */
  register(reg: Registration): void;
  /** Forgets `reg`; tells the server when `session` is still the current one. */
  unregister(reg: Registration, session: Session | null): void;
  /** The server answered that `session` is gone: a new stream is needed. */
  sessionGone(session: Session): void;
  nextId(prefix: string): string;
}

/** A subscription of the client's stream, kept across reconnects. */
export interface Registration {
  readonly subscriptionId: string;
  /** Subscribe (again) on `session`, which just opened or was current when registering. */
  attach(session: Session): void;
  /** An event of the current session for this subscription. */
  onEvent(kind: string, payload: Record<string, unknown>): void;
  /** A JSON of the stream for this subscription could not be read (e.g. `precision_loss`). */
  onBadEvent(error: ForgeError): void;
  /** The stream is gone for good (`unauthorized`, `gave_up`, `closed`). */
  onConnectionLost(error: ForgeError): void;
}

/** Svelte's store contract, and what a React `useSyncExternalStore` needs. */
abstract class Observable<S> {
  protected abstract state: S;
  #listeners = new Set<(s: S) => void>();
  #hadListener = false;

  constructor() {
    // Svelte's contract allows calling `subscribe` detached from its store.
    this.subscribe = this.subscribe.bind(this);
  }

  /** The current state. */
  get current(): S {
    return this.state;
  }

  /** Calls `run` at once and on every change; the returned function stops it. When the last
   * subscriber leaves, the tracker stops listening (and tells the server); a new subscriber
   * starts it again. */
  subscribe(run: (state: S) => void): () => void {
    this.#listeners.add(run);
    if (!this.#hadListener || this.#listeners.size === 1) this.firstListener();
    this.#hadListener = true;
    run(this.state);
    let active = true;
    return () => {
      if (!active) return;
      active = false;
      this.#listeners.delete(run);
      if (this.#listeners.size === 0) this.stop();
    };
  }

  protected set(next: S): void {
    this.state = next;
    for (const l of [...this.#listeners]) l(next);
  }

  protected abstract firstListener(): void;
  protected abstract stop(): void;
}

interface Kind<W, St extends string> {
  idField: "jobId" | "workflowId";
  noun: string;
  event: string;
  subscribeRoute: string;
  cancelRoute: string;
  isTerminal(status: St): boolean;
  blank(id: string): W;
}

const JOB: Kind<JobSnapshot, JobStatus> = {
  idField: "jobId",
  noun: "job",
  event: "job",
  subscribeRoute: "/_api/subscribe-job",
  cancelRoute: "/_api/cancel-job",
  isTerminal: isTerminalJobStatus,
  blank: (jobId) => ({ jobId, status: "pending", progress: null, message: null, output: null, error: null }),
};

const WORKFLOW: Kind<WorkflowSnapshot, WorkflowStatus> = {
  idField: "workflowId",
  noun: "workflow",
  event: "workflow",
  subscribeRoute: "/_api/subscribe-workflow",
  cancelRoute: "/_api/cancel-workflow",
  isTerminal: isTerminalWorkflowStatus,
  blank: (workflowId) => ({
    workflowId,
    status: "created",
    step: null,
    waitingFor: null,
    steps: [],
    output: null,
    error: null,
  }),
};

type Loaded<W> = W & { loading: boolean; requestError: ForgeError | null };

/**
 * A job or workflow followed on the stream: started with it in one request (start-and-follow)
 * or followed by id. States only move forward: once terminal, nothing changes any more.
 */
abstract class Tracked<W extends { status: St; error: string | null }, St extends string>
  extends Observable<Loaded<W>>
  implements Registration
{
  readonly subscriptionId: string;
  protected state: Loaded<W>;
  /** `start`: not started yet; `starting`: the start request is out; `follow`: id known;
   * `done`: terminal (or a failed start): nothing more will come. */
  #phase: "start" | "starting" | "follow" | "done";
  #id: string | null;
  /** No subscriber wants updates (yet, when following: it subscribes with its first one). */
  #stopped: boolean;
  #registered = false;
  /** The session this tracker is (being) subscribed on. */
  #session: Session | null = null;
  /** An event arrived on #session since subscribing: it is newer than the subscribe answer. */
  #seen = false;
  #cancelWanted = false;

  protected constructor(
    private readonly core: Core,
    private readonly kind: Kind<W, St>,
    private readonly start: Start | null,
    id: string | null,
  ) {
    super();
    this.subscriptionId = core.nextId(kind.noun[0]!);
    this.#id = id;
    // A keyed start whose run this tab already started follows that run instead.
    this.#phase = start && id === null ? "start" : "follow";
    this.state = { ...kind.blank(id ?? ""), loading: true, requestError: null };
    // A start cannot wait: its caller expects the job to exist. Following waits for a
    // subscriber, so a tracker nobody reads (one a framework made and threw away) costs nothing.
    this.#stopped = !start;
    if (start) this.#register();
  }

  /** The job's or workflow's id once the server has created it. */
  protected get id(): string | null {
    return this.#id;
  }

  /** Stops updates now (e.g. for a tracker made outside a component) and tells the server. */
  unsubscribe(): void {
    this.stop();
  }

  /**
   * Asks the server to cancel (as soon as the id is known). Never rejects: a refusal (e.g. 409
   * for a finished one) goes to `requestError`.
   */
  async cancel(): Promise<void> {
    if (this.#phase === "done") return;
    if (this.#id === null) {
      this.#cancelWanted = true;
      return;
    }
    try {
      await this.core.post(this.kind.cancelRoute, { [this.kind.idField]: this.#id });
    } catch (e) {
      this.set({ ...this.state, requestError: toForgeError(e) });
    }
  }

  protected firstListener(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    if (this.#phase === "follow") this.#register();
  }

  protected stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    // A start already sent still creates the job: its answer unsubscribes (see #started).
    if (this.#phase === "follow") this.#unregister(true);
  }

  #register(): void {
    if (this.#registered) return;
    this.#registered = true;
    this.core.register(this);
  }

  #unregister(tellServer: boolean): void {
    if (!this.#registered) return;
    this.#registered = false;
    const session = this.#session;
    this.#session = null;
    this.core.unregister(this, tellServer ? session : null);
  }

  attach(session: Session): void {
    this.#session = session;
    this.#seen = false;
    if (this.#phase === "start") void this.#start(session);
    else if (this.#phase === "follow") void this.#follow(session);
    // `starting`: the answer of the start subscribes on the newer session (#started).
  }

  onEvent(kind: string, payload: Record<string, unknown>): void {
    if (kind !== this.kind.event || this.#stopped) return;
    this.#seen = true;
    this.#apply(payload.state as W);
  }

  onBadEvent(error: ForgeError): void {
    this.set({ ...this.state, requestError: error });
  }

  onConnectionLost(error: ForgeError): void {
    // Without a state there is nothing to show but the reason; with one, the connection's
    // status tells, and `client.reconnect()` catches up.
    if (this.state.loading) this.#fail(error);
  }

  async #start(session: Session): Promise<void> {
    const start = this.start!;
    this.#phase = "starting";
    let data: Record<string, unknown>;
    try {
      data = (await this.core.post("/_api/rpc", {
        fn: start.fn,
        args: start.args ?? {},
        follow: { sessionId: session.sessionId, sessionSecret: session.sessionSecret, subscriptionId: this.subscriptionId },
        idempotencyKey: start.key,
      })) as Record<string, unknown>;
    } catch (e) {
      if (isSessionGone(e)) {
        // Nothing was started: start again on the next session.
        this.#phase = "start";
        if (this.#session && this.#session !== session) void this.#start(this.#session);
        else this.core.sessionGone(session);
        return;
      }
      this.#fail(toForgeError(e));
      return;
    }
    const id = data?.[this.kind.idField];
    const state = data?.state as W | undefined;
    if (typeof id !== "string" || !state) {
      this.#fail(new ForgeError("bad_response", `\`${start.fn}\` is not a ${this.kind.noun}: its answer has no ${this.kind.idField}`));
      return;
    }
    this.#id = id;
    this.#phase = "follow";
    if (start.key !== undefined) keepRun(this.kind.noun, start.fn, start.key, id);
    if (this.#session !== session || !this.#seen) this.#apply(state);
    if (this.#stopped) {
      // Nobody listens any more: the subscription the start made is not wanted.
      this.#session = session;
      this.#unregister(true);
      return;
    }
    if (this.#cancelWanted) void this.cancel();
    // The stream was replaced while the job was being started: follow it on the new one.
    if (this.#phase === "follow" && this.#session && this.#session !== session) void this.#follow(this.#session);
  }

  async #follow(session: Session): Promise<void> {
    let state: W;
    try {
      state = (await this.core.post(this.kind.subscribeRoute, {
        sessionId: session.sessionId,
        sessionSecret: session.sessionSecret,
        subscriptionId: this.subscriptionId,
        [this.kind.idField]: this.#id,
      })) as W;
    } catch (e) {
      if (this.#session !== session) return;
      if (isSessionGone(e)) this.core.sessionGone(session);
      else if (this.state.loading) this.#fail(toForgeError(e));
      else this.set({ ...this.state, requestError: toForgeError(e) });
      return;
    }
    const start = this.start;
    if (start?.key !== undefined && state?.status === "not_found" && this.#session === session) {
      // The kept run is gone, or another user's (a sign-in in this tab): start under the key.
      forgetRun(this.kind.noun, start.fn, start.key);
      this.#id = null;
      this.#phase = "start";
      void this.#start(session);
      return;
    }
    if (this.#session === session && !this.#seen) this.#apply(state);
  }

  #apply(next: W): void {
    if (this.#phase === "done" || !next || typeof next.status !== "string") return;
    this.set({ ...next, loading: false, requestError: this.state.requestError });
    if (this.kind.isTerminal(next.status)) {
      this.#phase = "done";
      this.#unregister(true);
    }
  }

  #fail(error: ForgeError): void {
    this.#phase = "done";
    this.set({ ...this.state, loading: false, status: "failed" as St, error: error.message, requestError: error });
    this.#unregister(false);
  }
}

/** A job followed live; a Svelte store (`$job`), also usable with plain callbacks. */
export class JobTracker<O = unknown> extends Tracked<JobSnapshot<O>, JobStatus> {
  /** Starts `fn` with `args` and follows it, in one request. */
  static start<O>(core: Core, fn: string, args: unknown, key?: string): JobTracker<O> {
    const kept = key === undefined ? null : keptRun(JOB.noun, fn, key);
    return new JobTracker<O>(core, { fn, args, key }, kept);
  }

  /** Follows the existing job `jobId` (e.g. after a page reload). */
  static follow<O>(core: Core, jobId: string): JobTracker<O> {
    return new JobTracker<O>(core, null, jobId);
  }

  private constructor(core: Core, start: Start | null, id: string | null) {
    super(core, JOB as unknown as Kind<JobSnapshot<O>, JobStatus>, start, id);
  }

  /** The job's id once the server created it, else null. */
  get jobId(): string | null {
    return this.id;
  }
}

/** A workflow followed live; as {@link JobTracker}. */
export class WorkflowTracker<O = unknown> extends Tracked<WorkflowSnapshot<O>, WorkflowStatus> {
  static start<O>(core: Core, fn: string, args: unknown, key?: string): WorkflowTracker<O> {
    const kept = key === undefined ? null : keptRun(WORKFLOW.noun, fn, key);
    return new WorkflowTracker<O>(core, { fn, args, key }, kept);
  }

  static follow<O>(core: Core, workflowId: string): WorkflowTracker<O> {
    return new WorkflowTracker<O>(core, null, workflowId);
  }

  private constructor(core: Core, start: Start | null, id: string | null) {
    super(core, WORKFLOW as unknown as Kind<WorkflowSnapshot<O>, WorkflowStatus>, start, id);
  }

  get workflowId(): string | null {
    return this.id;
  }
}

/**
 * A live query: subscribed when its first subscriber comes, unsubscribed (on the server too)
 * when the last one leaves. Re-subscribed after every reconnect, which brings the current
 * result.
 */
export class QueryTracker<O = unknown> extends Observable<QueryState<O>> implements Registration {
  readonly subscriptionId: string;
  protected state: QueryState<O> = { data: null, error: null, loading: true };
  #session: Session | null = null;
  #seen = false;
  #registered = false;

  constructor(
    private readonly core: Core,
    private readonly fn: string,
    private readonly args: unknown,
  ) {
    super();
    this.subscriptionId = core.nextId("q");
  }

  /** Stops updates now and tells the server. */
  unsubscribe(): void {
    this.stop();
  }

  protected firstListener(): void {
    if (this.#registered) return;
    this.#registered = true;
    this.core.register(this);
  }

  protected stop(): void {
    if (!this.#registered) return;
    this.#registered = false;
    const session = this.#session;
    this.#session = null;
    this.core.unregister(this, session);
  }

  attach(session: Session): void {
    this.#session = session;
    this.#seen = false;
    void this.#subscribe(session);
  }

  async #subscribe(session: Session): Promise<void> {
    let data: O;
    try {
      data = (await this.core.post("/_api/subscribe", {
        sessionId: session.sessionId,
        sessionSecret: session.sessionSecret,
        subscriptionId: this.subscriptionId,
        fn: this.fn,
        args: this.args ?? {},
      })) as O;
    } catch (e) {
      if (this.#session !== session) return;
      if (isSessionGone(e)) this.core.sessionGone(session);
      else this.set({ ...this.state, error: toForgeError(e), loading: false });
      return;
    }
    if (this.#session === session && !this.#seen) this.set({ data, error: null, loading: false });
  }

  onEvent(kind: string, payload: Record<string, unknown>): void {
    if (kind !== "query" || !this.#registered) return;
    this.#seen = true;
    if (payload.error !== undefined) {
      this.set({ ...this.state, error: ForgeError.fromEnvelope(payload.error), loading: false });
    } else {
      this.set({ data: payload.data as O, error: null, loading: false });
    }
  }

  onBadEvent(error: ForgeError): void {
    this.set({ ...this.state, error, loading: false });
  }

  onConnectionLost(error: ForgeError): void {
    if (this.state.loading) this.set({ ...this.state, error, loading: false });
  }
}
