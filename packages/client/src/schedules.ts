import { getForgeClient, type ForgeClient } from "./client.js";

/** A schedule as the server shows it (`ScheduleInfo` in the runtime). */
export interface Schedule {
  id: string;
  name: string;
  /** Declared in code with `#[forge::cron]`; else created at run time. */
  declared: boolean;
  /** The job each tick enqueues. */
  function: string;
  args: unknown;
  cron: string;
  timezone: string;
  missed: "skip" | "latest" | "backfill";
  /** The bound of `backfill`; 0 for the other policies. */
  backfill: number;
  overlap: "allow" | "skip";
  owner: string | null;
  paused: boolean;
  /** The next ticks (ISO 8601, UTC), soonest first; empty while paused. */
  nextTicks: string[];
  createdAt: string;
}

/** What `createSchedule` takes; unset options take the defaults of `docs/schedules.md`. */
export interface CreateScheduleArgs<A = unknown> {
  /** A job's name, as the generated client calls it (`export_users`). */
  function: string;
  args?: A;
  /** Five fields, or six with seconds first: `"0 9 * * MON"`. */
  cron: string;
  /** An IANA time zone name; `"UTC"` when unset. */
  timezone?: string;
  name?: string;
  missed?: "skip" | "latest" | "backfill";
  /** With `missed: "backfill"`: how many missed ticks run, 1 to 1000. */
  backfill?: number;
  overlap?: "allow" | "skip";
}

/** Creates a schedule owned by the signed-in user. */
export function createSchedule<A>(args: CreateScheduleArgs<A>, client: ForgeClient = getForgeClient()): Promise<Schedule> {
  return client.post("/_api/schedules/create", args) as Promise<Schedule>;
}

/** The signed-in user's schedules, oldest first. */
export function listSchedules(client: ForgeClient = getForgeClient()): Promise<Schedule[]> {
  return client.post("/_api/schedules/list", {}) as Promise<Schedule[]>;
}

export function getSchedule(scheduleId: string, client: ForgeClient = getForgeClient()): Promise<Schedule> {
  return client.post("/_api/schedules/get", { scheduleId }) as Promise<Schedule>;
}

/** Stops the schedule's ticks until `resumeSchedule`. */
export function pauseSchedule(scheduleId: string, client: ForgeClient = getForgeClient()): Promise<Schedule> {
  return client.post("/_api/schedules/pause", { scheduleId }) as Promise<Schedule>;
}

/** Resumes at the first tick after now: the ticks of the pause do not run. */
export function resumeSchedule(scheduleId: string, client: ForgeClient = getForgeClient()): Promise<Schedule> {
  return client.post("/_api/schedules/resume", { scheduleId }) as Promise<Schedule>;
}

/** Deletes the schedule; the jobs it enqueued stay. */
export async function deleteSchedule(scheduleId: string, client: ForgeClient = getForgeClient()): Promise<void> {
  await client.post("/_api/schedules/delete", { scheduleId });
}
