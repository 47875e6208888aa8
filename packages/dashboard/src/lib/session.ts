// The operator's token. The dashboard is a page like any other: it calls the gateway with a
// bearer token (a JWT whose `roles` hold `auth.admin_role`), kept in sessionStorage so that it
// lasts as long as the tab and no longer. An application can hand its signed-in admin over
// with a link to `<dashboard_path>#token=<jwt>`: the fragment never reaches a server, and it is
// dropped from the address (and the history entry) as soon as it is read.
import { createForgeClient, type ForgeClient } from "@forge/client";

const KEY = "forge-dashboard:token";

/** Takes a token handed over in the fragment, else the one this tab kept. */
export function loadToken(): string | null {
  const handed = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (handed) {
    const token = decodeURIComponent(handed[1]!);
    sessionStorage.setItem(KEY, token);
    history.replaceState(null, "", location.pathname + location.search + "#/");
    return token;
  }
  return sessionStorage.getItem(KEY);
}

export function saveToken(token: string): void {
  sessionStorage.setItem(KEY, token);
}

export function clearToken(): void {
  sessionStorage.removeItem(KEY);
}

/** The user a JWT names (`sub`) and its roles, read without verifying it (the server does). */
export function describeToken(token: string): { user: string; roles: string[]; expiresAt: Date | null } {
  try {
    const payload = JSON.parse(atob(token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/"))) as {
      sub?: unknown;
      roles?: unknown;
      exp?: unknown;
    };
    return {
      user: typeof payload.sub === "string" ? payload.sub : "?",
      roles: Array.isArray(payload.roles) ? payload.roles.filter((r): r is string => typeof r === "string") : [],
      expiresAt: typeof payload.exp === "number" ? new Date(payload.exp * 1000) : null,
    };
  } catch {
    return { user: "?", roles: [], expiresAt: null };
  }
}

/** A client on this origin (the gateway that served the dashboard) with `token`. */
export function clientFor(token: string): ForgeClient {
  return createForgeClient({ token: () => token });
}
