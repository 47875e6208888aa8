// What every view needs: the signed-in client, and a place to say what an action did.
import { getContext, setContext } from "svelte";
import type { ForgeClient } from "@forge/client";

export interface Dashboard {
  client: ForgeClient;
  /** Shows `text` in the page's live region (announced by screen readers). */
  notify(text: string, kind?: "ok" | "error"): void;
}

const KEY = Symbol("forge-dashboard");

export function provide(d: Dashboard): void {
  setContext(KEY, d);
}

export function dashboard(): Dashboard {
  return getContext<Dashboard>(KEY);
}

/** The message of a failed call, with the field the server named. */
export function describe(e: unknown): string {
  if (e && typeof e === "object" && "message" in e) {
    const err = e as { message: string; field?: string };
    return err.field ? `${err.message} (${err.field})` : err.message;
  }
  return String(e);
}
