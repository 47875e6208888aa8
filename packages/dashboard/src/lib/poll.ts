// Reads again every `everyMs` while the tab is visible, and at once when it becomes visible:
// lists pick up new runs this way, and a hidden tab costs the server nothing. Live rows come
// from the event stream instead (`live.svelte.ts`). Returns the stop function for `$effect`.
export function poll(read: () => Promise<void>, everyMs: number): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  const tick = async (): Promise<void> => {
    clearTimeout(timer);
    if (stopped) return;
    if (document.visibilityState === "visible") await read().catch(() => undefined);
    if (!stopped) timer = setTimeout(() => void tick(), everyMs);
  };
  const onVisible = (): void => {
    if (document.visibilityState === "visible") void tick();
  };
  document.addEventListener("visibilitychange", onVisible);
  void tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
  };
}
