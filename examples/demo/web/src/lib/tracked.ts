// The ids of the jobs and the workflow the page follows, per user, so that a reload picks them
// up again with `follow…(id)` instead of losing them.
export type Slot = "export" | "report" | "verification";

const key = (user: string, slot: Slot) => `forge-demo:${user}:${slot}`;

export function remember(user: string, slot: Slot, id: string): void {
  localStorage.setItem(key(user, slot), id);
}

export function recall(user: string, slot: Slot): string | null {
  return localStorage.getItem(key(user, slot));
}

export function forget(user: string, slot: Slot): void {
  localStorage.removeItem(key(user, slot));
}
