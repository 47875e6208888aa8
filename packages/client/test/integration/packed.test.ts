// The packages as a user gets them: `npm pack` each one (which builds it), install the
// tarballs into a plain Node project in a temporary folder, and run a tracked job against the
// real server with `node`: no TypeScript loader, no workspace, only the built ESM and its
// declarations.
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startFixture, token, type Fixture } from "../../../svelte/test/integration/fixture.js";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
const PACKAGES = ["@forge/client", "@forge/svelte", "@forge/react"];

const run = (cmd: string, args: string[], cwd: string) =>
  execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

// What a user writes: plain JavaScript, importing the packages by name.
const SCRIPT = `
import { createForgeClient, startJob, ForgeError } from "@forge/client";
import { connectionStatus, getForgeClientContext } from "@forge/svelte";
import { ForgeProvider, useTrackJob } from "@forge/react";

const [url, token] = process.argv.slice(2);
const client = createForgeClient({ baseUrl: url, token: () => token });
const job = startJob("count_steps", { steps: 3, delayMs: 20, label: "packed" }, client);
const statuses = [];
const done = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no end within 20 s: " + statuses.join(", "))), 20_000);
  const stop = job.subscribe((s) => {
    statuses.push(s.status);
    if (!s.loading && (s.status === "completed" || s.status === "failed")) {
      clearTimeout(timer);
      queueMicrotask(() => stop());
      resolve(s);
    }
  });
});
client.close();
const exported = [ForgeError, connectionStatus.subscribe, getForgeClientContext, ForgeProvider, useTrackJob];
console.log(JSON.stringify({ done, statuses, exported: exported.map((f) => typeof f) }));
`;

// What a TypeScript user writes, checked against the declarations in the tarballs.
const TYPED = `
import { startJob, type JobState } from "@forge/client";
import type { JobStore } from "@forge/svelte";
import type { Track } from "@forge/react";

const job: JobStore<{ steps: number }> = startJob<{ steps: number }, { steps: number }>("count_steps", { steps: 1 });
const steps: number | undefined = job.current.output?.steps;
const track: Track<{ steps: number }, typeof job, JobState<{ steps: number }>> | null = null;
// @ts-expect-error: the state has no such field
job.current.nope;
export { steps, track };
`;

let fx: Fixture;
let dir: string;
beforeAll(async () => {
  fx = await startFixture();
  dir = await mkdtemp(join(tmpdir(), "forge-packed-"));
});
afterAll(async () => {
  await fx?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the packed packages", () => {
  it("install into a plain Node project and run a tracked job against the server", async () => {
    const packed = JSON.parse(
      run("npm", ["pack", "--json", "--pack-destination", dir, ...PACKAGES.flatMap((p) => ["-w", p])], ROOT),
    ) as { name: string; filename: string; files: { path: string }[] }[];
    expect(packed.map((p) => p.name)).toEqual(PACKAGES);
    for (const p of packed) {
      const files = p.files.map((f) => f.path);
      expect(files).toContain("dist/index.js");
      expect(files).toContain("dist/index.d.ts");
      expect(files.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))).toEqual([]);
    }

    const project = join(dir, "app");
    await mkdir(project);
    await writeFile(join(project, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    // The peers (svelte, react) come from npm's cache when it has them.
    run(
      "npm",
      ["install", "--no-audit", "--no-fund", "--prefer-offline", ...packed.map((p) => join(dir, p.filename))],
      project,
    );
    const manifest = JSON.parse(await readFile(join(project, "node_modules/@forge/client/package.json"), "utf8"));
    expect(manifest.exports["."].default).toBe("./dist/index.js");

    await writeFile(join(project, "main.mjs"), SCRIPT);
    const out = JSON.parse(run("node", ["main.mjs", fx.url, token("packed-user")], project));
    expect(out.done).toMatchObject({ status: "completed", progress: 100, output: { steps: 3, label: "packed" } });
    expect(out.statuses.at(-1)).toBe("completed");
    expect(out.exported).toEqual(["function", "function", "function", "function", "function"]);

    await writeFile(join(project, "typed.ts"), TYPED);
    await writeFile(
      join(project, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          skipLibCheck: true,
          types: [],
        },
        files: ["typed.ts"],
      }),
    );
    run("node", [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], project);
  });
});
