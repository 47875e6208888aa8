// How times, durations and ids are shown.

export function shortId(id: string): string {
  // The end of a UUIDv7 is random; its start is the creation time, shared by runs made together.
  return id.slice(-8);
}

export function time(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

/** Milliseconds as `850 ms`, `4.2 s`, `3 min 5 s`. */
export function ms(value: number | null | undefined): string {
  if (value === null || value === undefined) return "—";
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60_000) return `${(value / 1000).toFixed(1)} s`;
  const minutes = Math.floor(value / 60_000);
  return `${minutes} min ${Math.round((value % 60_000) / 1000)} s`;
}

export function between(from: string | null, to: string | null): string {
  if (!from) return "—";
  const end = to ? Date.parse(to) : Date.now();
  return ms(end - Date.parse(from));
}

export function json(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

/** A workflow's `waitingFor` (`event:email_confirmed`, `timer:<time>`) in words. */
export function waiting(waitingFor: string | null): string {
  if (!waitingFor) return "—";
  if (waitingFor.startsWith("event:")) return `the event “${waitingFor.slice(6)}”`;
  if (waitingFor.startsWith("timer:")) return `a timer (${time(waitingFor.slice(6))})`;
  return waitingFor;
}

/** The event a workflow waits for, if it waits for one. */
export function awaitedEvent(waitingFor: string | null): string | null {
  return waitingFor?.startsWith("event:") ? waitingFor.slice(6) : null;
}
