// The signed-in demo user, kept in localStorage so that a reload stays signed in (and can
// re-attach to its running jobs). The Forge client asks `token()` before every call and every
// (re)connection of its event stream.
import { configureForge } from "@forge/svelte";
import type { Session } from "$lib/forge/api";

const KEY = "forge-demo:session";

export function loadSession(): Session | null {
  try {
    const raw = localStorage.getItem(KEY);
    if (!raw) return null;
    const session = JSON.parse(raw) as Session;
    // A token that expires within a minute would only fail the next reconnection.
    return session.expiresAt * 1000 > Date.now() + 60_000 ? session : null;
  } catch {
    return null;
  }
}

/** Keeps the session, and sets the download cookie that makes `output.downloadUrl` a plain link. */
export async function saveSession(session: Session): Promise<void> {
  localStorage.setItem(KEY, JSON.stringify(session));
  await setDownloadCookie(session.token);
}

export async function clearSession(): Promise<void> {
  localStorage.removeItem(KEY);
  await fetch("/downloads/session", { method: "DELETE" }).catch(() => undefined);
}

// The demo server keeps the token in an HttpOnly cookie sent only to `/downloads`: a link
// cannot send `Authorization`, and a token in the URL would end up in history and logs.
async function setDownloadCookie(token: string): Promise<void> {
  await fetch("/downloads/session", { method: "POST", headers: { authorization: `Bearer ${token}` } }).catch(
    () => undefined,
  );
}

// The session is fixed for the life of the page: signing in or out reloads it, so that the
// client's event stream never carries a previous user's token.
let current: Session | null = null;

/** Loads the saved session (if any) and points the client at this origin with its token. */
export function startPage(): Session | null {
  current = loadSession();
  connect(current);
  // A session kept from before the server learnt it (a restart with a new data folder keeps
  // the cookie's secret, but a browser may have dropped the cookie): set it again.
  if (current) void setDownloadCookie(current.token);
  return current;
}

/** The signed-in session; the signed-in parts of the page are shown only with one. */
export function signedIn(): Session {
  if (!current) throw new Error("not signed in");
  return current;
}

function connect(session: Session | null): void {
  // A local demo restarts in a second: retry the event stream often, and never give up.
  configureForge({
    token: () => session?.token ?? null,
    backoff: { initialMs: 250, maxMs: 3_000, maxAttempts: Infinity },
  });
}
