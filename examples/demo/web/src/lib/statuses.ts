import type { JobStatus, StepStatus, WorkflowStatus } from "@forge/svelte";

/** Every job status, in the order a job usually meets them, with what it means. */
export const JOB_STATUSES: { status: JobStatus; meaning: string }[] = [
  { status: "pending", meaning: "Queued, waiting for a worker" },
  { status: "claimed", meaning: "A worker took it and is about to start" },
  { status: "running", meaning: "Running, reporting progress" },
  { status: "retry", meaning: "Failed, will run again after a backoff" },
  { status: "completed", meaning: "Finished with a result" },
  { status: "failed", meaning: "Failed with no retry left" },
  { status: "dead_letter", meaning: "Failed on every attempt, set aside" },
  { status: "cancel_requested", meaning: "Stopping at its next check" },
  { status: "cancelled", meaning: "Stopped on request" },
  { status: "not_found", meaning: "No such job (or not yours)" },
];

const LABELS: Record<string, string> = {
  dead_letter: "dead letter",
  cancel_requested: "cancelling",
  not_found: "not found",
};

export function label(status: JobStatus | WorkflowStatus | StepStatus | string): string {
  return LABELS[status] ?? status;
}

const ACTIVE_JOB: ReadonlySet<string> = new Set(["pending", "claimed", "running", "retry"]);

/** The job can still be cancelled. */
export const isActiveJob = (status: string) => ACTIVE_JOB.has(status);

const TERMINAL_JOB: ReadonlySet<string> = new Set([
  "completed",
  "failed",
  "dead_letter",
  "cancelled",
  "not_found",
]);
export const isTerminalJob = (status: string) => TERMINAL_JOB.has(status);

const TERMINAL_WORKFLOW: ReadonlySet<string> = new Set([
  "completed",
  "compensated",
  "failed",
  "not_found",
]);
export const isTerminalWorkflow = (status: string) => TERMINAL_WORKFLOW.has(status);
