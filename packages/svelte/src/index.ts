// Svelte stores over the framework-free core: the core's trackers already follow the Svelte
// store contract, so these are typed entry points on the default client (see
// `configureForge`), usable as `$store` in components and through `fromStore` with runes.
import type { Readable } from "svelte/store";
import {
  getForgeClient,
  type ConnectionState,
  type ForgeError,
  type JobState,
  type QueryState,
  type WorkflowState,
} from "@forge/client";

export * from "@forge/client";

/** A job's live state. Calling `createJobStore` already started the job. */
export interface JobStore<O = unknown> extends Readable<JobState<O>> {
  /** The current state, without subscribing. */
  readonly current: JobState<O>;
  /** The job's id once the server created it (null before, or when the start failed). */
  readonly jobId: string | null;
  /** Asks the server to cancel the job; never rejects (a refusal goes to `requestError`). */
  cancel(): Promise<void>;
  /** Stops the store's updates (and its subscription on the server) now. */
  unsubscribe(): void;
}

/** A workflow's live state; as {@link JobStore}. */
export interface WorkflowStore<O = unknown> extends Readable<WorkflowState<O>> {
  readonly current: WorkflowState<O>;
  readonly workflowId: string | null;
  cancel(): Promise<void>;
  unsubscribe(): void;
}

/** A live query's result: `{ data, error, loading }`. */
export interface QueryStore<O = unknown> extends Readable<QueryState<O>> {
  readonly current: QueryState<O>;
  unsubscribe(): void;
}

/** Starts job `fn` and follows it in one request; the store holds its state from then on. */
export function createJobStore<A, O>(fn: string, args: A): JobStore<O> {
  return getForgeClient().startJob<O>(fn, args);
}

/** Follows the existing job `jobId` (e.g. kept across a page reload); starts nothing. */
export function trackJob<O>(_fn: string, jobId: string): JobStore<O> {
  return getForgeClient().followJob<O>(jobId);
}

/** Starts workflow `fn` and follows it in one request. */
export function createWorkflowStore<A, O>(fn: string, args: A): WorkflowStore<O> {
  return getForgeClient().startWorkflow<O>(fn, args);
}

/** Follows the existing workflow `workflowId`; starts nothing. */
export function trackWorkflow<O>(_fn: string, workflowId: string): WorkflowStore<O> {
  return getForgeClient().followWorkflow<O>(workflowId);
}

/** Query `fn` with `args`, kept current: it runs again on the server when what it read changes. */
export function createQueryStore<A, O>(fn: string, args: A): QueryStore<O> {
  return getForgeClient().liveQuery<O>(fn, args);
}

/** Calls a query or mutation once. Rejects with a {@link ForgeError}. */
export function callFunction<A, O>(fn: string, args: A): Promise<O> {
  return getForgeClient().call<O>(fn, args);
}

/** The default client's event-stream state, as a store (for a "reconnecting…" banner). */
export const connectionStatus: Readable<ConnectionState> = {
  subscribe: (run) => getForgeClient().connection.subscribe(run),
};
