// @vitest-environment happy-dom
// A React page against the real server (examples/client-fixture): the hook starts a job from a
// click under StrictMode and the page renders its progress to the end.
import { act, createElement as h, StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createForgeClient, ForgeProvider, useTrackJob } from "../../src/index.js";
import { startFixture, token, type Fixture } from "../../../svelte/test/integration/fixture.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

let fx: Fixture;
beforeAll(async () => {
  fx = await startFixture();
});
afterAll(async () => {
  await fx?.dispose();
});

function Steps() {
  const job = useTrackJob<{ steps: number; delayMs: number; label: string }, { steps: number }>("count_steps");
  const s = job.state;
  return h(
    "div",
    null,
    h("button", { onClick: () => job.start({ steps: 4, delayMs: 30, label: "react" }) }, "go"),
    h("p", null, s ? `${s.status} ${s.progress ?? 0}` : "idle"),
  );
}

describe("@forge/react against the server", () => {
  it("renders a tracked job from its start to completed", async () => {
    // The page is served by the server, as the demo's is (happy-dom applies the browser's
    // same-origin rules).
    (window as unknown as { happyDOM: { setURL(url: string): void } }).happyDOM.setURL(`${fx.url}/`);
    const client = createForgeClient({ token: () => token("react-user") });
    const element = document.createElement("div");
    const root = createRoot(element);
    await act(async () => root.render(h(StrictMode, null, h(ForgeProvider, { client }, h(Steps)))));
    await act(async () => element.querySelector("button")!.click());
    const seen = new Set<string>();
    const deadline = Date.now() + 20_000;
    while (!element.textContent?.includes("completed") && Date.now() < deadline) {
      await act(() => new Promise((r) => setTimeout(r, 20)));
      seen.add(element.querySelector("p")!.textContent!);
    }
    expect(element.querySelector("p")!.textContent).toBe("completed 100");
    expect([...seen].some((s) => s.startsWith("running"))).toBe(true);
    await act(async () => root.unmount());
    client.close();
  });
});
