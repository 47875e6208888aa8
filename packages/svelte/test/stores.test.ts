import { afterEach, describe, expect, it } from "vitest";
import { derived, fromStore, get } from "svelte/store";
import { compile } from "svelte/compiler";
import { render } from "svelte/server";
import { writeFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import {
  callFunction,
  configureForge,
  connectionStatus,
  createForgeClient,
  followJob,
  followWorkflow,
  ForgeError,
  getForgeClient,
  getForgeClientContext,
  liveQuery,
  setForgeClientContext,
  startJob,
  startWorkflow,
  type JobStore,
} from "../src/index.js";
import { FakeServer, jobState, live, ok, settle, workflowState } from "../../client/test/fake.js";

let server: FakeServer;
function configure() {
  server = new FakeServer()
    .on("/_api/rpc", (r) =>
      r.body.fn === "verify"
        ? ok({ workflowId: "w-1", state: workflowState("w-1", "created") })
        : ok({ jobId: "j-1", state: jobState("j-1", "pending") }),
    )
    .on("/_api/rpc/add", (r) => ok(r.body.a + r.body.b))
    .on("/_api/subscribe-job", (r) => ok(jobState(r.body.jobId, "running", { progress: 30 })))
    .on("/_api/subscribe-workflow", (r) => ok(workflowState(r.body.workflowId, "waiting")))
    .on("/_api/subscribe", () => ok({ n: 1 }))
    .on("/_api/unsubscribe", () => ok(true));
  configureForge({ fetch: server.fetch, token: () => "tok" });
}

afterEach(() => {
  configureForge({ fetch: () => Promise.reject(new Error("no server")) }).close();
});

/** A Svelte 5 component from its source, compiled for server rendering. */
async function compiled(source: string) {
  const { js } = compile(source, { generate: "server", filename: "Component.svelte" });
  const dir = await mkdtemp(join(tmpdir(), "forge-svelte-"));
  try {
    const file = join(dir, "Component.js");
    await writeFile(file, js.code);
    return (await import(pathToFileURL(file).href)).default;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function open() {
  await settle();
  server.stream.session("s1");
  await settle();
}

describe("@forge/svelte stores", () => {
  it("follow the store contract: get(), derived(), detached subscribe", async () => {
    configure();
    const job = startJob<{ format: string }, { url: string }>("export_users", { format: "csv" });
    expect(job.current).toMatchObject({ loading: true });
    await open();
    expect(server.to("/_api/rpc")[0]!.body).toMatchObject({ fn: "export_users", args: { format: "csv" } });
    const pct = derived(job, (s) => s.progress ?? 0);
    const values: number[] = [];
    const stop = pct.subscribe((v) => values.push(v));
    server.stream.send("job", { subscriptionId: (job as any).subscriptionId, state: jobState("j-1", "running", { progress: 60 }) });
    await settle();
    expect(values).toEqual([0, 60]);
    // get() subscribes and leaves at once; another subscriber keeps the store live.
    expect(get(job)).toMatchObject({ status: "running", progress: 60 });
    expect(server.to("/_api/unsubscribe")).toHaveLength(0);
    stop();
    await settle();
    // derived() was the only subscriber: leaving stops the store on the server too.
    expect(server.to("/_api/unsubscribe")).toHaveLength(1);
    const { subscribe } = followJob<unknown>("j-2");
    const seen: string[] = [];
    subscribe((s) => seen.push(s.status))();
    expect(seen).toEqual(["pending"]);
  });

  it("work with runes through fromStore", async () => {
    configure();
    const wf = live(followWorkflow<void>("w-7"));
    await open();
    const current = fromStore(wf);
    expect(current.current).toMatchObject({ workflowId: "w-7", status: "waiting", loading: false });
    const started = startWorkflow<{ userId: string }, void>("verify", { userId: "u" });
    await settle();
    expect(fromStore(started).current).toMatchObject({ workflowId: "w-1", status: "created" });
  });

  it("give a component the client set around it, else the default one", async () => {
    const client = createForgeClient({ fetch: () => Promise.reject(new Error("no server")) });
    const seen: unknown[] = [];
    const source = `<script>
  let { setup } = $props();
  setup();
</script>`;
    const Component = await compiled(source);
    // `body` renders (on first access).
    void render(Component, { props: { setup: () => seen.push(getForgeClientContext()) } }).body;
    void render(Component, {
      props: {
        setup: () => {
          setForgeClientContext(client);
          seen.push(getForgeClientContext());
        },
      },
    }).body;
    expect(seen).toEqual([getForgeClient(), client]);
    client.close();
  });

  it("work with $store in a Svelte 5 component", async () => {
    configure();
    const job: JobStore<{ url: string }> = live(followJob("j-3"));
    await open();
    const source = `<script>
  let { job } = $props();
</script>
{#if $job.status === "running"}<progress value={$job.progress ?? 0} max="100"></progress>{:else}<p>{$job.status}</p>{/if}`;
    const { body } = render(await compiled(source), { props: { job } });
    expect(body).toContain('<progress value="30" max="100"></progress>');
  });

  it("live queries and calls use the configured client", async () => {
    configure();
    expect(await callFunction<{ a: number; b: number }, number>("add", { a: 2, b: 3 })).toBe(5);
    const q = liveQuery<{ limit: number }, { n: number }>("count", { limit: 1 });
    const seen: unknown[] = [];
    const stop = q.subscribe((s) => seen.push(s.data));
    await open();
    expect(seen).toEqual([null, { n: 1 }]);
    stop();
    const statuses: string[] = [];
    connectionStatus.subscribe((s) => statuses.push(s.status))();
    expect(statuses).toEqual(["open"]);
    const e = await callFunction("missing", {}).catch((e) => e);
    expect(e).toBeInstanceOf(ForgeError);
  });
});
