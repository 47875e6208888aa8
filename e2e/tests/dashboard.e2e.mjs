// The operators' dashboard (`/_forge/`) in a real browser, against the demo with a database of
// its own. Jobs and workflows are started through the API as the demo's users; the operator
// (`ops`, the admin role) watches and fixes them on the dashboard. Screenshots go to
// e2e/screenshots/dashboard-*.png.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import {
  freshDatabase,
  keepEvidence,
  launchBrowser,
  newPage,
  screenshot,
  startDemo,
  tempDir,
  waitFor,
} from "../lib/harness.mjs";

const TEST_TIMEOUT = 120_000;
const ALICE_ID = "0a11ce00-0000-4000-8000-000000000001";

let db;
let dataDir;
let demo;
let browser;
/** The operator's dashboard. */
let ops;
const tokens = {};
const pages = () => [ops].filter(Boolean);

before(async () => {
  db = freshDatabase();
  dataDir = tempDir("forge-e2e-dashboard-");
  demo = await startDemo({ databaseUrl: db.url, dataDir });
  browser = await launchBrowser();
  for (const user of ["alice", "bob", "ops"]) {
    const { status, data } = await call("/_api/rpc/sign_in", { username: user });
    assert.equal(status, 200);
    tokens[user] = data.token;
  }
  ops = await newPage(browser, demo.url);
});

after(async () => {
  await browser?.close();
  await demo?.stop();
  db?.drop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** POSTs `body` to `path` with `token` (if any): `{ status, data, error }`. */
async function call(path, body, token) {
  const res = await fetch(`${demo.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  return { status: res.status, data: json.data, error: json };
}

/** Opens the dashboard at `route` (`/jobs`) signed in as the operator, as the demo's link does. */
async function openDashboard(route = "/") {
  const { page } = ops;
  const url = new URL(page.url() === "about:blank" ? demo.url : page.url());
  if (!url.pathname.startsWith("/_forge/")) {
    // The demo's own link, as the operator sees it: the token rides in the fragment once.
    await page.goto("/");
    await page.click("[data-testid=signin-ops]");
    await page.click("[data-testid=dashboard-link]");
    await page.locator("header.top nav").waitFor();
    assert.ok(!page.url().includes("token="), `the token stays out of the address: ${page.url()}`);
  }
  await page.goto(`/_forge/#${route}`);
  await page.locator("main h1").waitFor();
}

describe("the operators' dashboard", () => {
  it("shows a running job's row and progress bar moving live", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("dashboard-live", pages, async () => {
      await openDashboard("/jobs");
      const { page } = ops;
      const { data } = await call("/_api/rpc/export_users", { format: "csv" }, tokens.alice);
      const row = page.locator(`tr[data-job-id="${data.jobId}"]`);
      await row.waitFor({ timeout: 10_000 });
      // Sampled far more often than the list is read again (every 3 s): values between two
      // reads can only have come over the event stream.
      const seen = new Set();
      let shot = false;
      await waitFor(
        "the export to complete on the dashboard",
        async () => {
          const value = await row.getAttribute("data-progress");
          if (value) seen.add(Number(value));
          if (!shot && seen.size >= 3) {
            shot = true;
            await screenshot(page, "dashboard-jobs-live");
          }
          return (await row.getAttribute("data-status")) === "completed";
        },
        { timeout: 60_000, every: 40 },
      );
      const moving = [...seen].filter((v) => v > 0 && v < 100);
      assert.ok(moving.length >= 5, `the bar moved through ${[...seen].join(", ")}`);
      assert.ok([...seen].every((v, i, all) => i === 0 || v >= all[i - 1]), "never backwards");

      // The job's page: arguments, output, attempts.
      await row.locator("a").first().click();
      await page.locator("h1", { hasText: "export_users" }).waitFor();
      await page.locator("ol.timeline li", { hasText: "Attempt 1" }).waitFor();
      assert.match(await page.locator("pre").first().textContent(), /"format": "csv"/);
    });
  });

  it("retries a dead-lettered job from the dead letters, and it completes", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("dashboard-dead-letters", pages, async () => {
      const { data } = await call("/_api/rpc/send_report", { reportId: "q4-2024", alwaysFail: true }, tokens.alice);
      const id = data.jobId;
      await openDashboard("/dead-letters");
      const { page } = ops;
      const row = page.locator(`tr[data-job-id="${id}"]`);
      // Three attempts a second or two apart, then `dead_letter`; the view reads every 3 s.
      await row.waitFor({ timeout: 30_000 });
      assert.equal(await row.getAttribute("data-status"), "dead_letter");
      await row.locator("input[type=checkbox]").check();
      await screenshot(page, "dashboard-dead-letters");
      await page.getByRole("button", { name: "Retry selected (1)" }).click();
      await page.locator(".notice", { hasText: "1 job retried" }).waitFor();

      await page.goto(`/_forge/#/jobs/${id}`);
      await waitFor(
        "the retried job to complete",
        async () => (await page.locator(".facts .badge").first().textContent()) === "completed",
        { timeout: 30_000 },
      );
      const attempts = await page.locator("ol.timeline li").allTextContents();
      assert.equal(attempts.length, 4, attempts.join(" | "));
      assert.match(attempts[2], /dead letter/);
      assert.match(attempts[3], /completed/);
    });
  });

  it("sends a waiting workflow its event from its page, and it completes", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("dashboard-workflow", pages, async () => {
      const { status, data } = await call("/_api/rpc/account_verification", { userId: ALICE_ID }, tokens.alice);
      assert.equal(status, 200);
      await openDashboard(`/workflows/${data.workflowId}`);
      const { page } = ops;
      await waitFor(
        "the workflow to wait for its event",
        async () => (await page.locator("[data-testid=workflow-waiting]").textContent()).includes("email_confirmed"),
        { timeout: 20_000 },
      );
      assert.equal(await page.locator("input[name=event]").inputValue(), "email_confirmed");
      await screenshot(page, "dashboard-workflow-waiting");
      await page.getByRole("button", { name: "Send event" }).click();
      await waitFor(
        "the workflow to complete",
        async () => (await page.locator("[data-testid=workflow-status]").textContent()).trim() === "completed",
        { timeout: 20_000 },
      );
      const steps = await page.locator("ol.steps li").allTextContents();
      assert.equal(steps.length, 4, steps.join(" | "));
      assert.ok(steps.every((s) => s.includes("completed")), steps.join(" | "));
      await page.locator("ul.timeline li", { hasText: "taken by a wait" }).waitFor();
      await screenshot(page, "dashboard-workflow-completed");
    });
  });

  it("shows queues on the overview, and fits a phone's screen", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("dashboard-overview", pages, async () => {
      await openDashboard("/");
      const { page } = ops;
      const row = page.locator("tr[data-queue=default]");
      await row.waitFor();
      await screenshot(page, "dashboard-overview");
      await page.setViewportSize({ width: 390, height: 844 });
      for (const route of ["/", "/jobs", "/dead-letters", "/workflows"]) {
        await page.goto(`/_forge/#${route}`);
        await page.locator("main h1").waitFor();
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        assert.ok(overflow <= 0, `${route} is ${overflow}px wider than the screen`);
      }
      await screenshot(page, "dashboard-phone");
      await page.setViewportSize({ width: 1280, height: 900 });
    });
  });

  it("gives a non-admin no dashboard, and refuses every admin call", { timeout: TEST_TIMEOUT }, async () => {
    const bob = await newPage(browser, demo.url);
    await keepEvidence("dashboard-non-admin", () => [bob], async () => {
      // The demo shows no link to bob, and the dashboard shows him nothing but the refusal.
      await bob.page.goto("/");
      await bob.page.click("[data-testid=signin-bob]");
      await bob.page.waitForSelector("[data-testid=who]");
      assert.equal(await bob.page.locator("[data-testid=dashboard-link]").count(), 0);
      await bob.page.goto(`/_forge/#token=${encodeURIComponent(tokens.bob)}`);
      await bob.page.locator("h1", { hasText: "Not for this account" }).waitFor();
      assert.equal(await bob.page.locator("header.top nav").count(), 0);
      assert.equal(await bob.page.locator("table").count(), 0);
      await screenshot(bob.page, "dashboard-non-admin");

      // Without a token, the sign-in form only.
      const anon = await newPage(browser, demo.url);
      await anon.page.goto("/_forge/");
      await anon.page.locator("textarea[name=token]").waitFor();
      await anon.context.close();

      const someJob = (await call("/_api/rpc/send_report", { reportId: "x" }, tokens.bob)).data.jobId;
      const admin = [
        ["/_api/admin/overview", {}],
        ["/_api/admin/jobs/retry", { jobIds: [someJob] }],
        ["/_api/admin/jobs/cancel", { jobIds: [someJob] }],
        ["/_api/admin/jobs/delete", { filter: {} }],
        ["/_api/admin/workflows/replay", { workflowId: someJob }],
        ["/_api/admin/workflows/send-event", { workflowId: someJob, event: "x" }],
      ];
      for (const [path, body] of admin) {
        assert.equal((await call(path, body, tokens.bob)).status, 403, `${path} as bob`);
        assert.equal((await call(path, body)).status, 401, `${path} without a token`);
      }
      // Reads answer bob's own runs only, never alice's.
      const { data } = await call("/_api/jobs/list", { filter: { owner: "alice" } }, tokens.bob).catch(() => ({}));
      assert.equal(data, undefined);
      const mine = await call("/_api/jobs/list", {}, tokens.bob);
      assert.ok(mine.data.items.length > 0 && mine.data.items.every((j) => j.owner === "bob"));
    });
    await bob.context.close();
  });
});
