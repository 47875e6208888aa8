/** How the event stream is reconnected after it dropped. */
export interface BackoffOptions {
  /** Delay before the first retry, in ms (before jitter). Default 500. */
  initialMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
  /** The longest delay, in ms. Default 30 000. */
  maxMs?: number;
  /**
   * The part of each delay that is random, 0..1: a delay lies in `[d * (1 - jitter), d]`, so
   * that clients dropped together (a server restart) do not all come back in the same
   * instant. Default 0.5.
   */
  jitter?: number;
  /**
   * Failed attempts in a row after which the client gives up (status `gave_up`, until
   * `reconnect()`). Default 20 (some 8 minutes with the other defaults); `Infinity`: never.
   */
  maxAttempts?: number;
  /** The random source, 0 <= x < 1 (tests pass their own). Default Math.random. */
  random?: () => number;
}

export type ResolvedBackoff = Required<BackoffOptions>;

export function resolveBackoff(o: BackoffOptions = {}): ResolvedBackoff {
  const r: ResolvedBackoff = {
    initialMs: o.initialMs ?? 500,
    factor: o.factor ?? 2,
    maxMs: o.maxMs ?? 30_000,
    jitter: o.jitter ?? 0.5,
    maxAttempts: o.maxAttempts ?? 20,
    random: o.random ?? Math.random,
  };
  if (!(r.initialMs >= 0) || !(r.maxMs >= r.initialMs) || !(r.factor >= 1)) {
    throw new RangeError("backoff: expected 0 <= initialMs <= maxMs and factor >= 1");
  }
  if (!(r.jitter >= 0 && r.jitter <= 1)) throw new RangeError("backoff: jitter is within 0..1");
  return r;
}

/** The delay before retry number `attempt` (0 = the first retry), in ms. */
export function backoffDelay(attempt: number, o: ResolvedBackoff): number {
  const base = Math.min(o.maxMs, o.initialMs * o.factor ** attempt);
  return Math.round(base * (1 - o.jitter * o.random()));
}
