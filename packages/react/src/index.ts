// React over the framework-free core: every hook reads a core tracker (a store: `subscribe`
// returns the stopper, `current` is the state) through `useSyncExternalStore`, on the client of
// the nearest `ForgeProvider`, else the default one (`configureForge`).
//
// Nothing starts during render: React may render twice (StrictMode) or throw a render away, so
// a job starts in `start(args)`, called from an event handler, and a follow or a live query
// subscribes from the commit, and stops when the component leaves.
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useMemo,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import {
  getForgeClient,
  type ForgeClient,
  type JobState,
  type JobTracker,
  type QueryState,
  type QueryTracker,
  type Subscribable,
  type WorkflowState,
  type WorkflowTracker,
} from "@forge/client";

export * from "@forge/client";

const ClientContext = createContext<ForgeClient | null>(null);

/** Gives the components inside it `client` (as TanStack Query's `QueryClientProvider`). */
export function ForgeProvider(props: { client: ForgeClient; children?: ReactNode }): ReactNode {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/** The client of the nearest {@link ForgeProvider}, else the default one. */
export function useForgeClient(): ForgeClient {
  return useContext(ClientContext) ?? getForgeClient();
}

const noStore = (): (() => void) => () => {};
const nothing = (): null => null;

/**
 * The state of `store` (a core tracker), kept current; `null` while `store` is. The component
 * subscribes after its commit and unsubscribes when it leaves or the store changes; the
 * tracker stops (and tells the server) when its last subscriber leaves.
 */
export function useStore<S>(store: (Subscribable<S> & { readonly current: S }) | null): S | null {
  const subscribe = useCallback((onChange: () => void) => (store ? store.subscribe(onChange) : noStore()), [store]);
  const snapshot = useCallback(() => (store ? store.current : null), [store]);
  return useSyncExternalStore(subscribe, store ? snapshot : nothing, store ? snapshot : nothing);
}

/** What {@link useTrackJob} and {@link useTrackWorkflow} give. */
export interface Track<A, T, S> {
  /** Starts it with `args` (from an event handler); a later start replaces the tracker. */
  start(args: A): T;
  /** The tracker of the last start, for `cancel()` and its id; null before. */
  tracker: T | null;
  /** Its state; null before the first start. */
  state: S | null;
}

/** Start-and-follow of job `fn`: `start(args)` starts it, `state` follows the last one started. */
export function useTrackJob<A, O>(fn: string): Track<A, JobTracker<O>, JobState<O>> {
  const client = useForgeClient();
  const [tracker, setTracker] = useState<JobTracker<O> | null>(null);
  const start = useCallback(
    (args: A) => {
      const job = client.startJob<O>(fn, args);
      setTracker(job);
      return job;
    },
    [client, fn],
  );
  return { start, tracker, state: useStore(tracker) };
}

/** Start-and-follow of workflow `fn`; as {@link useTrackJob}. */
export function useTrackWorkflow<A, O>(fn: string): Track<A, WorkflowTracker<O>, WorkflowState<O>> {
  const client = useForgeClient();
  const [tracker, setTracker] = useState<WorkflowTracker<O> | null>(null);
  const start = useCallback(
    (args: A) => {
      const workflow = client.startWorkflow<O>(fn, args);
      setTracker(workflow);
      return workflow;
    },
    [client, fn],
  );
  return { start, tracker, state: useStore(tracker) };
}

// Trackers made in render are inert until subscribed (`followJob` asks the server nothing
// before), so one that React throws away costs nothing.

/** The state of the existing job `jobId` (e.g. kept across a reload); null while `jobId` is. */
export function useFollowJob<O>(jobId: string | null): JobState<O> | null {
  const client = useForgeClient();
  const job = useMemo(() => (jobId === null ? null : client.followJob<O>(jobId)), [client, jobId]);
  return useStore(job);
}

/** The state of the existing workflow `workflowId`; null while `workflowId` is. */
export function useFollowWorkflow<O>(workflowId: string | null): WorkflowState<O> | null {
  const client = useForgeClient();
  const workflow = useMemo(
    () => (workflowId === null ? null : client.followWorkflow<O>(workflowId)),
    [client, workflowId],
  );
  return useStore(workflow);
}

/**
 * Query `fn` with `args`, kept current while the component is mounted. A new query starts when
 * `args` change by value (compared as JSON), not on every render's new object.
 */
export function useLiveQuery<A, O>(fn: string, args: A): QueryState<O> {
  const client = useForgeClient();
  const key = JSON.stringify(args ?? {});
  // `key` stands for `args`: same JSON, same query.
  const query: QueryTracker<O> = useMemo(() => client.liveQuery<O>(fn, JSON.parse(key)), [client, fn, key]);
  return useStore(query)!;
}
