// The caller's session. A job belongs to the user who started it and only that user may follow
// it, so the page needs a user before it starts anything: a guest session from the server's
// public `startSession` mutation (`src/session.rs`), kept in localStorage so that after a
// reload the page is the same user, and sees the same notes.
import { configureForge } from "@forge/client";
import { startSession, type Session } from "./forge/api";

const KEY = "{{name}}:session";

let session: Session | null = null;

// The client asks for the token before every call and every (re)connection of its event
// stream, so setting `session` later is enough.
configureForge({
  token: () => session?.token ?? null,
  // `npm run dev` restarts the server after each Rust edit: retry often, and never give up.
  backoff: { initialMs: 250, maxMs: 3_000, maxAttempts: Infinity },
});

/** The saved session, or a new guest session when there is none (or it is about to expire). */
export async function ensureSession(): Promise<Session> {
  session = saved();
  if (!session) {
    session = await startSession();
    localStorage.setItem(KEY, JSON.stringify(session));
  }
  return session;
}

function saved(): Session | null {
  try {
    const raw = localStorage.getItem(KEY);
    const s = raw ? (JSON.parse(raw) as Session) : null;
    // A token that expires within a minute would only fail the next reconnection.
    return s && s.expiresAt * 1000 > Date.now() + 60_000 ? s : null;
  } catch {
    return null;
  }
}
