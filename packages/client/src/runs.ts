// The runs API (docs/runs.md): lists and details of jobs and workflows, and the admin role's
// actions on them. Reads answer the caller's own runs; the admin role sees every user's.
import { getForgeClient, type ForgeClient } from "./client.js";
import type { JobSnapshot, JobStatus, StepStatus, WorkflowSnapshot, WorkflowStatus } from "./types.js";

/** Which jobs: every field given narrows the set. */
export interface JobFilter {
  /** The user who started them. Other than the caller's own id, only for the admin role (else 403). */
  owner?: string;
  /** The job's function (`export_users`). */
  function?: string;
  /** Any of these statuses. */
  status?: JobStatus[];
  queue?: string;
  /** Created at or after this time (RFC 3339). */
  createdAfter?: string;
  /** Created before this time (RFC 3339). */
  createdBefore?: string;
}

/** Which workflows: every field given narrows the set. */
export interface WorkflowFilter {
  /** As {@link JobFilter.owner}. */
  owner?: string;
  /** The workflow's name (`account_verification`). */
  name?: string;
  /** Any of these statuses. */
  status?: WorkflowStatus[];
  queue?: string;
  createdAfter?: string;
  createdBefore?: string;
}

/** A filter and a page: `cursor` is the `nextCursor` of the page before, `limit` 1 to 100 (default 50). */
export interface ListOptions<F> {
  filter?: F;
  cursor?: string;
  limit?: number;
}

export type ListJobsOptions = ListOptions<JobFilter>;
export type ListWorkflowsOptions = ListOptions<WorkflowFilter>;

/** A job in a list: the state a job tracker shows, and where the job stands. */
export interface JobSummary<O = unknown> extends JobSnapshot<O> {
  function: string;
  queue: string;
  priority: number;
  owner: string | null;
  /** Attempts started so far. */
  attempts: number;
  maxAttempts: number;
  /** When it is (or was) due. */
  runAt: string;
  createdAt: string;
  /** When its latest attempt started. */
  startedAt: string | null;
  finishedAt: string | null;
}

/** One page of jobs, newest first; `nextCursor` is `null` on the last page. */
export interface JobPage<O = unknown> {
  items: JobSummary<O>[];
  nextCursor: string | null;
}

/** One attempt of a job. */
export interface Attempt {
  attempt: number;
  /** The worker (one per node) that ran it. */
  workerId: string | null;
  /** `null` when it ended before its handler started. */
  startedAt: string | null;
  /** `null` while it runs. */
  endedAt: string | null;
  /** The status the attempt ended with, or the job's status now for the attempt under way. */
  outcome: JobStatus;
  error: string | null;
}

/** One job with its arguments and attempts, oldest first (the latest and the 50 before it). */
export interface JobDetail<O = unknown, A = unknown> extends JobSummary<O> {
  args: A;
  attemptHistory: Attempt[];
}

/** A workflow in a list: the state a workflow tracker shows, and where the workflow stands. */
export interface WorkflowSummary<O = unknown> extends WorkflowSnapshot<O> {
  name: string;
  queue: string;
  owner: string | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

/** One page of workflows, newest first; `nextCursor` is `null` on the last page. */
export interface WorkflowPage<O = unknown> {
  items: WorkflowSummary<O>[];
  nextCursor: string | null;
}

/** A step of a workflow with its timing and attempts. */
export interface StepDetail {
  name: string;
  /** A step, a sleep, or a wait for an event. */
  kind: "step" | "sleep" | "event";
  status: StepStatus;
  error: string | null;
  attempts: number;
  compensationAttempts: number;
  startedAt: string | null;
  finishedAt: string | null;
  compensatedAt: string | null;
  /** A sleep's end, an event wait's deadline, or a failed attempt's next try. */
  wakeAt: string | null;
}

/** An event sent to a workflow. */
export interface ReceivedEvent {
  name: string;
  payload: unknown;
  receivedAt: string;
  /** Whether a wait took it. */
  consumed: boolean;
}

/** One workflow with its arguments, steps in display order and its newest 100 events, oldest first. */
export interface WorkflowDetail<O = unknown, A = unknown> extends WorkflowSummary<O> {
  args: A;
  /** While it sleeps or waits: when its job is due. */
  resumeAt: string | null;
  stepDetails: StepDetail[];
  events: ReceivedEvent[];
}

/**
 * Which jobs an admin action takes: 1 to 1,000 ids, or every job a filter selects
 * (`{ filter: {} }` takes every job).
 */
export type JobSelector = { jobIds: string[]; filter?: never } | { filter: JobFilter; jobIds?: never };

/** A page of jobs, newest first: the caller's own, or every user's for the admin role. */
export function listJobs<O = unknown>(
  options: ListJobsOptions = {},
  client: ForgeClient = getForgeClient(),
): Promise<JobPage<O>> {
  return client.post("/_api/jobs/list", options) as Promise<JobPage<O>>;
}

/** One job with its attempt history; another user's job rejects `not_found`, as a missing one. */
export function getJob<O = unknown, A = unknown>(
  jobId: string,
  client: ForgeClient = getForgeClient(),
): Promise<JobDetail<O, A>> {
  return client.post("/_api/jobs/get", { jobId }) as Promise<JobDetail<O, A>>;
}

/** A page of workflows, newest first: the caller's own, or every user's for the admin role. */
export function listWorkflows<O = unknown>(
  options: ListWorkflowsOptions = {},
  client: ForgeClient = getForgeClient(),
): Promise<WorkflowPage<O>> {
  return client.post("/_api/workflows/list", options) as Promise<WorkflowPage<O>>;
}

/** One workflow with its steps and events; another user's rejects `not_found`, as a missing one. */
export function getWorkflow<O = unknown, A = unknown>(
  workflowId: string,
  client: ForgeClient = getForgeClient(),
): Promise<WorkflowDetail<O, A>> {
  return client.post("/_api/workflows/get", { workflowId }) as Promise<WorkflowDetail<O, A>>;
}

async function act(verb: "retry" | "cancel" | "delete", selector: JobSelector, client: ForgeClient): Promise<number> {
  const answer = (await client.post(`/_api/admin/jobs/${verb}`, selector)) as { count: number };
  return answer.count;
}

/**
 * Admin role: gives `failed` and `dead_letter` jobs a new attempt, due now; resolves to how
 * many changed. With one id, a job that cannot be retried rejects (`not_found`, `conflict`).
 */
export function retryJobs(selector: JobSelector, client: ForgeClient = getForgeClient()): Promise<number> {
  return act("retry", selector, client);
}

/**
 * Admin role: cancels jobs not finished (waiting ones at once, running ones at their next
 * check); resolves to how many changed. With one id, rejects with the reason when it cannot.
 */
export function cancelJobs(selector: JobSelector, client: ForgeClient = getForgeClient()): Promise<number> {
  return act("cancel", selector, client);
}

/**
 * Admin role: deletes finished jobs; resolves to how many were deleted. With one id, rejects
 * with the reason when it cannot (a job that may still run must be cancelled first).
 */
export function deleteJobs(selector: JobSelector, client: ForgeClient = getForgeClient()): Promise<number> {
  return act("delete", selector, client);
}

/**
 * Admin role: starts a finished workflow again from the top, with the same name, arguments and
 * owner (a failed one is not resumed: its compensations have run); resolves to the new id.
 */
export async function replayWorkflow(workflowId: string, client: ForgeClient = getForgeClient()): Promise<string> {
  const answer = (await client.post("/_api/admin/workflows/replay", { workflowId })) as { workflowId: string };
  return answer.workflowId;
}

/**
 * Admin role: sends the event `event` to a workflow, whoever owns it. A wait for that name
 * takes it now, or when the workflow gets there. Rejects `not_found`, or `conflict` when the
 * workflow has finished.
 */
export async function sendWorkflowEvent(
  workflowId: string,
  event: string,
  payload: unknown = null,
  client: ForgeClient = getForgeClient(),
): Promise<void> {
  await client.post("/_api/admin/workflows/send-event", { workflowId, event, payload });
}

/** One queue in {@link Overview}: its unfinished jobs now, and what the window's jobs did. */
export interface QueueOverview {
  queue: string;
  pending: number;
  retry: number;
  claimed: number;
  running: number;
  cancelRequested: number;
  /** Jobs of the sample in this queue. */
  sampled: number;
  completed: number;
  /** `failed` and `dead_letter`. */
  failed: number;
  cancelled: number;
  /** Finished jobs (any outcome) a minute over the window. */
  throughputPerMinute: number;
  /** Due → start of the latest attempt, in milliseconds. */
  waitP50Ms: number | null;
  waitP99Ms: number | null;
  /** Start → end of the latest attempt, in milliseconds. */
  runP50Ms: number | null;
  runP99Ms: number | null;
}

/** Where the installation stands (see docs/runs.md, "Overview"). */
export interface Overview {
  at: string;
  queues: QueueOverview[];
  /** Workflows not finished, by status. */
  workflows: { status: WorkflowStatus; count: number }[];
  /** Jobs of the sample that finished, by minute, oldest first. */
  perMinute: { minute: string; completed: number; failed: number }[];
  /** What the sample covers: the window, or less when it held more than `sampleLimit` jobs. */
  windowSeconds: number;
  sampled: number;
  sampleLimit: number;
}

/** Admin role: each queue's depth, rates and latencies over the last `windowMinutes` (1–60, default 15). */
export function getOverview(
  options: { windowMinutes?: number } = {},
  client: ForgeClient = getForgeClient(),
): Promise<Overview> {
  return client.post("/_api/admin/overview", options) as Promise<Overview>;
}
