// Svelte over the framework-free core: the core's trackers already follow the Svelte store
// contract (`$job` in components, `fromStore(job)` with runes), so this package adds the store
// types under Svelte's names, the connection as a store, and a client in a component context.
import { getContext, setContext } from "svelte";
import type { Readable } from "svelte/store";
import {
  getForgeClient,
  type ConnectionState,
  type ForgeClient,
  type JobTracker,
  type QueryTracker,
  type WorkflowTracker,
} from "@forge/client";

export * from "@forge/client";

/** A job's live state (what `trackExportUsers(args)` and `followJob(id)` give), as a store. */
export type JobStore<O = unknown> = JobTracker<O>;

/** A workflow's live state; as {@link JobStore}. */
export type WorkflowStore<O = unknown> = WorkflowTracker<O>;

/** A live query's result, `{ data, error, loading }`, as a store. */
export type QueryStore<O = unknown> = QueryTracker<O>;

const CLIENT = Symbol.for("@forge/svelte client");

/**
 * Makes `client` the one {@link getForgeClientContext} gives in this component and the ones
 * inside it (call it while the component initialises, as any `setContext`).
 */
export function setForgeClientContext(client: ForgeClient): ForgeClient {
  return setContext(CLIENT, client);
}

/**
 * The client set by {@link setForgeClientContext} in this component or one around it, else the
 * default one (`configureForge`). Call it while the component initialises; pass the client to
 * the generated functions: `trackExportUsers(args, client)`.
 */
export function getForgeClientContext(): ForgeClient {
  return getContext<ForgeClient | undefined>(CLIENT) ?? getForgeClient();
}

/** The default client's event-stream state, as a store (for a "reconnecting…" banner). */
export const connectionStatus: Readable<ConnectionState> = {
  subscribe: (run) => getForgeClient().connection.subscribe(run),
};
