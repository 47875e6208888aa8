export type {
  JobStatus,
  WorkflowStatus,
  StepStatus,
  WorkflowStep,
  JobSnapshot,
  WorkflowSnapshot,
  JobState,
  WorkflowState,
  QueryState,
  Subscribable,
} from "./types.js";
export {
  TERMINAL_JOB_STATUSES,
  TERMINAL_WORKFLOW_STATUSES,
  isTerminalJobStatus,
  isTerminalWorkflowStatus,
} from "./types.js";
export { ForgeError } from "./errors.js";
export { parseJson } from "./json.js";
export { backoffDelay, resolveBackoff, type BackoffOptions } from "./backoff.js";
export type { ConnectionStatus, ConnectionState, Session, EventSourceLike } from "./connection.js";
export type { TokenProvider, FetchLike } from "./http.js";
export { JobTracker, WorkflowTracker, QueryTracker } from "./trackers.js";
export {
  ForgeClient,
  createForgeClient,
  configureForge,
  getForgeClient,
  rpc,
  startJob,
  followJob,
  startWorkflow,
  followWorkflow,
  liveQuery,
  callFunction,
  type ForgeClientOptions,
  type TrackOptions,
  type BatchCall,
  type BatchResult,
  type BatchResults,
} from "./client.js";
export {
  createSchedule,
  listSchedules,
  getSchedule,
  pauseSchedule,
  resumeSchedule,
  deleteSchedule,
  type Schedule,
  type CreateScheduleArgs,
} from "./schedules.js";
export {
  listJobs,
  getJob,
  listWorkflows,
  getWorkflow,
  retryJobs,
  cancelJobs,
  deleteJobs,
  replayWorkflow,
  sendWorkflowEvent,
  getOverview,
  type Overview,
  type QueueOverview,
  type JobFilter,
  type WorkflowFilter,
  type ListOptions,
  type ListJobsOptions,
  type ListWorkflowsOptions,
  type JobSummary,
  type JobPage,
  type Attempt,
  type JobDetail,
  type WorkflowSummary,
  type WorkflowPage,
  type StepDetail,
  type ReceivedEvent,
  type WorkflowDetail,
  type JobSelector,
} from "./runs.js";
