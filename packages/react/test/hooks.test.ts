// @vitest-environment happy-dom
// The hooks in a real React render (react-dom in a DOM), StrictMode included: it renders twice
// and mounts, unmounts and mounts again, which must neither start a job twice nor leave a
// subscription behind.
import { act, createElement as h, StrictMode, type ReactNode } from "react";
import { createRoot, type Root } from "react-dom/client";
import { afterEach, describe, expect, it } from "vitest";
import {
  configureForge,
  createForgeClient,
  ForgeProvider,
  useFollowJob,
  useFollowWorkflow,
  useLiveQuery,
  useTrackJob,
  useTrackWorkflow,
  type ForgeClient,
} from "../src/index.js";
import { FakeServer, jobState, ok, settle, workflowState } from "../../client/test/fake.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanup.splice(0).reverse()) c();
});

function gateway() {
  const server = new FakeServer()
    .on("/_api/rpc", (r) =>
      r.body.fn === "verify"
        ? ok({ workflowId: "w-1", state: workflowState("w-1", "created") })
        : ok({ jobId: "j-1", state: jobState("j-1", "pending") }),
    )
    .on("/_api/subscribe-job", (r) => ok(jobState(r.body.jobId, "running", { progress: 10 })))
    .on("/_api/subscribe-workflow", (r) => ok(workflowState(r.body.workflowId, "waiting", { waitingFor: "email" })))
    .on("/_api/subscribe", (r) => ok({ limit: r.body.args.limit }))
    .on("/_api/unsubscribe", () => ok(true));
  const client = createForgeClient({ fetch: server.fetch, token: () => "tok" });
  cleanup.push(() => client.close());
  return { server, client };
}

/** Renders `node` in StrictMode into a fresh element; `html()` is what the page shows. */
async function mount(node: ReactNode) {
  const element = document.createElement("div");
  document.body.append(element);
  const root: Root = createRoot(element);
  await act(async () => root.render(h(StrictMode, null, node)));
  const unmount = () => act(async () => root.unmount());
  cleanup.push(() => element.remove());
  return {
    element,
    root,
    html: () => element.innerHTML,
    rerender: (next: ReactNode) => act(async () => root.render(h(StrictMode, null, next))),
    unmount,
  };
}

/** Opens the client's stream with session `id`, letting React render what follows. */
async function openSession(server: FakeServer, id = "s1") {
  await act(async () => {
    await settle();
    server.stream.session(id);
    await settle();
  });
}

const sendEvent = (server: FakeServer, kind: string, payload: unknown) =>
  act(async () => {
    server.stream.send(kind, payload);
    await settle();
  });

function ExportButton() {
  const exp = useTrackJob<{ format: string }, { rows: number }>("export_users");
  return h(
    "div",
    null,
    h("button", { onClick: () => exp.start({ format: "csv" }) }, "export"),
    h("p", null, exp.state ? `${exp.state.status} ${exp.state.progress ?? "-"} ${exp.state.output?.rows ?? ""}` : "idle"),
  );
}

describe("@forge/react", () => {
  it("useTrackJob starts one job per click, also in StrictMode, and follows it to its end", async () => {
    const { server, client } = gateway();
    const page = await mount(h(ForgeProvider, { client }, h(ExportButton)));
    expect(page.html()).toContain("<p>idle</p>");
    await act(async () => page.element.querySelector("button")!.click());
    await openSession(server);
    expect(server.to("/_api/rpc")).toHaveLength(1);
    expect(server.to("/_api/rpc")[0]!.body).toMatchObject({ fn: "export_users", args: { format: "csv" } });
    expect(page.html()).toContain("<p>pending - </p>");

    const subscriptionId = server.to("/_api/rpc")[0]!.body.follow.subscriptionId;
    await sendEvent(server, "job", { subscriptionId, state: jobState("j-1", "running", { progress: 50 }) });
    expect(page.html()).toContain("<p>running 50 </p>");
    await sendEvent(server, "job", { subscriptionId, state: jobState("j-1", "completed", { progress: 100, output: { rows: 7 } }) });
    expect(page.html()).toContain("<p>completed 100 7</p>");
    expect(server.to("/_api/rpc")).toHaveLength(1);
    await page.unmount();
  });

  it("a job still running when its component leaves stops being followed, on the server too", async () => {
    const { server, client } = gateway();
    const page = await mount(h(ForgeProvider, { client }, h(ExportButton)));
    await act(async () => page.element.querySelector("button")!.click());
    await openSession(server);
    expect(server.to("/_api/unsubscribe")).toHaveLength(0);
    await page.unmount();
    await settle();
    const subscriptionId = server.to("/_api/rpc")[0]!.body.follow.subscriptionId;
    expect(server.to("/_api/unsubscribe").map((r) => r.body.subscriptionId)).toEqual([subscriptionId]);
  });

  it("useFollowJob subscribes once despite StrictMode's double mount, and lets go on unmount", async () => {
    const { server, client } = gateway();
    function Follow(props: { id: string | null }) {
      const job = useFollowJob<unknown>(props.id);
      return h("p", null, job ? `${job.jobId} ${job.status} ${job.loading}` : "none");
    }
    const page = await mount(h(ForgeProvider, { client }, h(Follow, { id: "j-7" })));
    await openSession(server);
    expect(server.to("/_api/subscribe-job").map((r) => r.body.jobId)).toEqual(["j-7"]);
    expect(page.html()).toBe("<p>j-7 running false</p>");

    await page.rerender(h(ForgeProvider, { client }, h(Follow, { id: null })));
    await settle();
    expect(page.html()).toBe("<p>none</p>");
    expect(server.to("/_api/unsubscribe")).toHaveLength(1);
    await page.unmount();
    expect(server.to("/_api/subscribe-job")).toHaveLength(1);
  });

  it("useTrackWorkflow and useFollowWorkflow show a workflow's state", async () => {
    const { server, client } = gateway();
    function Verify() {
      const verify = useTrackWorkflow<{ userId: string }, void>("verify");
      const followed = useFollowWorkflow<void>("w-9");
      return h(
        "div",
        null,
        h("button", { onClick: () => verify.start({ userId: "u" }) }),
        h("p", null, verify.state ? `${verify.tracker!.workflowId} ${verify.state.status}` : "idle"),
        h("p", null, followed ? `${followed.status} ${followed.waitingFor}` : "none"),
      );
    }
    const page = await mount(h(ForgeProvider, { client }, h(Verify)));
    await act(async () => page.element.querySelector("button")!.click());
    await openSession(server);
    expect(page.html()).toContain("<p>w-1 created</p><p>waiting email</p>");
    expect(server.to("/_api/rpc")).toHaveLength(1);
    await page.unmount();
  });

  it("useLiveQuery runs on the provider's client, once per distinct arguments", async () => {
    const { server, client } = gateway();
    // The default client must not be the one used.
    const unused = new FakeServer();
    configureForge({ fetch: unused.fetch });
    cleanup.push(() => configureForge({ fetch: unused.fetch }).close());
    function Count(props: { limit: number }) {
      const q = useLiveQuery<{ limit: number }, { limit: number }>("recent_jobs", { limit: props.limit });
      return h("p", null, q.loading ? "loading" : `limit ${q.data?.limit}`);
    }
    const app = (limit: number, c: ForgeClient) => h(ForgeProvider, { client: c }, h(Count, { limit }));
    const page = await mount(app(5, client));
    expect(page.html()).toBe("<p>loading</p>");
    await openSession(server);
    expect(page.html()).toBe("<p>limit 5</p>");
    // A new render with equal arguments (a new object) keeps the query.
    await page.rerender(app(5, client));
    await settle();
    expect(server.to("/_api/subscribe")).toHaveLength(1);
    await page.rerender(app(8, client));
    await act(() => settle());
    expect(page.html()).toBe("<p>limit 8</p>");
    expect(server.to("/_api/subscribe").map((r) => r.body.args)).toEqual([{ limit: 5 }, { limit: 8 }]);
    expect(server.to("/_api/unsubscribe")).toHaveLength(1);
    await page.unmount();
    await settle();
    expect(server.to("/_api/unsubscribe")).toHaveLength(2);
    expect(unused.fetch).not.toHaveBeenCalled();
  });
});
