// Reload-safe tracking: which job or workflow a `track…(args, { key })` started, per browser tab
// session. sessionStorage (not localStorage) because a key names a run of this tab's session:
// a reload keeps it, a new tab or a new browser session does not reuse it by accident. Two tabs
// starting under one key at once are kept to one run by the server's idempotency key, not here.

const PREFIX = "forge:track";

const storage = (): Storage | null => {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage;
  } catch {
    // Storage can be refused (sandboxed frames, privacy settings): the server's key still holds.
    return null;
  }
};

const name = (noun: string, fn: string, key: string) => `${PREFIX}:${noun}:${fn}:${key}`;

/** The id started under `key`, if this tab session started one. */
export function keptRun(noun: string, fn: string, key: string): string | null {
  return storage()?.getItem(name(noun, fn, key)) ?? null;
}

export function keepRun(noun: string, fn: string, key: string, id: string): void {
  try {
    storage()?.setItem(name(noun, fn, key), id);
  } catch {
    // A full storage only costs the shortcut: the next start under the key finds the run anyway.
  }
}

export function forgetRun(noun: string, fn: string, key: string): void {
  storage()?.removeItem(name(noun, fn, key));
}
