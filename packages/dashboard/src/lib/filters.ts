// A view's query parameters as the runs API's filters.
import type { JobFilter, JobStatus, WorkflowFilter, WorkflowStatus } from "@forge/client";

export const JOB_STATUSES: readonly JobStatus[] = [
  "pending",
  "claimed",
  "running",
  "retry",
  "completed",
  "failed",
  "dead_letter",
  "cancel_requested",
  "cancelled",
];

export const WORKFLOW_STATUSES: readonly WorkflowStatus[] = [
  "created",
  "running",
  "waiting",
  "compensating",
  "completed",
  "compensated",
  "failed",
];

function common(q: URLSearchParams): { owner?: string; queue?: string } {
  const f: { owner?: string; queue?: string } = {};
  const owner = q.get("owner");
  const queue = q.get("queue");
  if (owner) f.owner = owner;
  if (queue) f.queue = queue;
  return f;
}

function statuses<S extends string>(q: URLSearchParams, known: readonly S[]): S[] {
  return (q.get("status") ?? "").split(",").filter((s): s is S => (known as readonly string[]).includes(s));
}

export function jobFilter(q: URLSearchParams, only?: JobStatus[]): JobFilter {
  const f: JobFilter = common(q);
  const fn = q.get("function");
  if (fn) f.function = fn;
  const status = statuses(q, only ?? JOB_STATUSES);
  if (status.length) f.status = status;
  else if (only) f.status = only;
  return f;
}

export function workflowFilter(q: URLSearchParams): WorkflowFilter {
  const f: WorkflowFilter = common(q);
  const name = q.get("name");
  if (name) f.name = name;
  const status = statuses(q, WORKFLOW_STATUSES);
  if (status.length) f.status = status;
  return f;
}
