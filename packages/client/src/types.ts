// The states of docs/protocol.md, used exactly: the server
// sends them whole in every update; `loading` is the client's own.

export type JobStatus =
  | "pending"
  | "claimed"
  | "running"
  | "completed"
  | "retry"
  | "failed"
  | "dead_letter"
  | "cancel_requested"
  | "cancelled"
  | "not_found";

export type WorkflowStatus =
  | "created"
  | "running"
  | "waiting"
  | "completed"
  | "compensating"
  | "compensated"
  | "failed"
  | "not_found";

export type StepStatus = "pending" | "running" | "completed" | "failed" | "compensated" | "skipped";

export interface WorkflowStep {
  name: string;
  status: StepStatus;
  error: string | null;
}

/** A job's state as the server sends it. */
export interface JobSnapshot<O = unknown> {
  jobId: string;
  status: JobStatus;
  progress: number | null;
  message: string | null;
  output: O | null;
  error: string | null;
}

/** A workflow's state as the server sends it. */
export interface WorkflowSnapshot<O = unknown> {
  workflowId: string;
  status: WorkflowStatus;
  step: string | null;
  waitingFor: string | null;
  steps: WorkflowStep[];
  output: O | null;
  error: string | null;
}

/**
 * What a job store holds. `jobId` is `""` until the server has created the job; `loading`
 * is true until then (or, when following an existing job, until its state is known).
 * `requestError` keeps the full error of the last request the store made for you (a start that
 * failed, a refused cancel): its `code` and `details` (e.g. `details.field` of `invalid_args`).
 */
export interface JobState<O = unknown> extends JobSnapshot<O> {
  loading: boolean;
  requestError: import("./errors.js").ForgeError | null;
}

/** What a workflow store holds; as {@link JobState}. */
export interface WorkflowState<O = unknown> extends WorkflowSnapshot<O> {
  loading: boolean;
  requestError: import("./errors.js").ForgeError | null;
}

/**
 * What a live query holds: its latest result, or the error of its latest run (the previous
 * `data` is kept then: a later change may fix the query).
 */
export interface QueryState<O = unknown> {
  data: O | null;
  error: import("./errors.js").ForgeError | null;
  loading: boolean;
}

/** Statuses after which nothing changes. */
export const TERMINAL_JOB_STATUSES: ReadonlySet<JobStatus> = new Set<JobStatus>([
  "completed",
  "failed",
  "dead_letter",
  "cancelled",
  "not_found",
]);

export const TERMINAL_WORKFLOW_STATUSES: ReadonlySet<WorkflowStatus> = new Set<WorkflowStatus>([
  "completed",
  "compensated",
  "failed",
  "not_found",
]);

export const isTerminalJobStatus = (s: JobStatus): boolean => TERMINAL_JOB_STATUSES.has(s);
export const isTerminalWorkflowStatus = (s: WorkflowStatus): boolean =>
  TERMINAL_WORKFLOW_STATUSES.has(s);

/** A store in the Svelte sense, which the core's trackers already are. */
export interface Subscribable<S> {
  /** Calls `run` at once with the current state and on every change; returns the stopper. */
  subscribe(run: (state: S) => void): () => void;
}
