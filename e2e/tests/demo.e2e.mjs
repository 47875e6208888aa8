// The demo in a real browser: the list, one test each, against one demo process with
// a database of its own. Each test keeps a screenshot of its main states; a failing one keeps
// the page's console log too (see e2e/screenshots/).
import assert from "node:assert/strict";
import { readFileSync, rmSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import {
  freshDatabase,
  keepEvidence as keepPageEvidence,
  psql,
  launchBrowser,
  newPage,
  screenshot,
  startDemo,
  tempDir,
  waitFor,
} from "../lib/harness.mjs";

const TEST_TIMEOUT = 120_000;

let db;
let dataDir;
let demo;
let browser;
/** Alice's page: most tests run there, one after the other. */
let alice;
const pages = () => [alice].filter(Boolean);

before(async () => {
  db = freshDatabase();
  dataDir = tempDir("forge-e2e-demo-");
  demo = await startDemo({ databaseUrl: db.url, dataDir });
  browser = await launchBrowser();
  alice = await newPage(browser, demo.url);
  await alice.page.goto("/");
  await alice.page.locator("[data-testid=signin-alice]").waitFor();
  await screenshot(alice.page, "00-sign-in");
  await signIn(alice.page, "alice");
});

after(async () => {
  await browser?.close();
  await demo?.stop();
  db?.drop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

// ---- helpers ------------------------------------------------------------------------------

/**
 * As the harness's `keepEvidence`, keeping the server's side too on failure: the demo's log
 * and the newest jobs and workflows as the database has them.
 */
function keepEvidence(name, pagesOf, fn) {
  return keepPageEvidence(name, pagesOf, fn, () => {
    const rows = (sql) => {
      try {
        return psql(db.url, sql);
      } catch (e) {
        return e.message;
      }
    };
    return [
      "== demo output",
      demo.output(),
      "== newest jobs",
      rows(
        "SELECT id, function_name, status, attempts, worker_id, run_at, created_at, started_at, finished_at, error FROM forge.jobs ORDER BY id DESC LIMIT 20",
      ),
      "== newest workflows",
      rows("SELECT id, name, status, created_at, error FROM forge.workflows ORDER BY id DESC LIMIT 5"),
      "",
    ].join("\n");
  });
}

async function signIn(page, username) {
  await page.goto("/");
  await page.click(`[data-testid=signin-${username}]`);
  await page.waitForSelector("[data-testid=who]");
  await waitFor("the event stream to open", async () => (await attr(page, "connection", "data-status")) === "open");
}

/** An attribute of the element with this test id, or null when there is none. */
async function attr(page, testid, name) {
  const el = page.locator(`[data-testid=${testid}]`);
  return (await el.count()) ? el.first().getAttribute(name) : null;
}

const status = (page, testid) => attr(page, testid, "data-status");

async function text(page, testid) {
  const el = page.locator(`[data-testid=${testid}]`);
  return (await el.count()) ? (await el.first().textContent()).trim() : null;
}

/** The export bar's width, in percent (its style, not its animated size). */
async function barWidth(page) {
  const bar = page.locator("[data-testid=export-bar]");
  if (!(await bar.count())) return null;
  return bar.evaluate((el) => parseFloat(el.style.width) || 0);
}

async function untilStatus(page, testid, wanted, timeout = 30_000) {
  const wants = [wanted].flat();
  await waitFor(`${testid} to be ${wants.join(" or ")}`, async () => wants.includes(await status(page, testid)), {
    timeout,
  });
}

async function untilBarAbove(page, pct, timeout = 30_000) {
  await waitFor(`the export bar past ${pct}%`, async () => (await barWidth(page)) > pct, { timeout });
}

/** Calls a function over HTTP as the holder of `token`: `{ status, data }`. */
async function rpc(fn, args, token) {
  const res = await fetch(`${demo.url}/_api/rpc/${fn}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(args),
  });
  return { status: res.status, data: (await res.json()).data };
}

const session = (page) => page.evaluate(() => JSON.parse(localStorage.getItem("forge-demo:session")));

/** Starts an export on the page; resolves to its id once the page has kept it. */
async function startExport(page, format = "csv") {
  const kept = () => page.evaluate(() => localStorage.getItem("forge-demo:alice:export"));
  const before = await kept();
  await page.click(`[data-testid=export-format-${format}]`);
  await page.click("[data-testid=export-start]");
  return waitFor("the new export's id to be kept", async () => {
    const id = await kept();
    return id !== before && id;
  });
}

// ---- tests --------------------------------------------------------------------------------

describe("the demo page", { timeout: 10 * 60_000 }, () => {
  it("renders every job status distinctly", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("statuses", pages, async () => {
      const badges = alice.page.locator("[data-testid=status-legend] [data-status]");
      const looks = await badges.evaluateAll((els) =>
        els.map((el) => {
          const s = getComputedStyle(el);
          return { status: el.dataset.status, look: `${s.backgroundColor}|${s.color}|${s.borderStyle}|${s.textDecorationLine}` };
        }),
      );
      assert.deepEqual(
        looks.map((l) => l.status),
        ["pending", "claimed", "running", "retry", "completed", "failed", "dead_letter", "cancel_requested", "cancelled", "not_found"],
      );
      assert.equal(new Set(looks.map((l) => l.look)).size, looks.length, `two statuses look alike: ${JSON.stringify(looks)}`);
      await screenshot(alice.page, "01-signed-in");
    });
  });

  it("exports 20,000 users with a moving progress bar and downloads the file", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("export", pages, async () => {
      const { page } = alice;
      await startExport(page, "csv");
      const widths = [];
      const messages = new Set();
      let shot = false;
      await waitFor(
        "the export to complete",
        async () => {
          const w = await barWidth(page);
          if (w !== null && w !== widths.at(-1)) widths.push(w);
          const m = await text(page, "export-message");
          if (m?.startsWith("Processing row")) messages.add(m);
          if (!shot && w > 30 && w < 100) {
            shot = true;
            await screenshot(page, "02-export-running");
          }
          return (await status(page, "export-status")) === "completed";
        },
        { timeout: 60_000, every: 40 },
      );
      const growths = widths.filter((w, i) => i > 0 && w > widths[i - 1]).length;
      assert.ok(growths >= 2, `the bar grew ${growths} times: ${widths.join(", ")}`);
      assert.ok(messages.size >= 2, `messages seen: ${[...messages].join(" | ")}`);
      assert.equal(await barWidth(page), 100);

      const link = page.locator("[data-testid=export-download]");
      await link.waitFor();
      await screenshot(page, "03-export-completed");
      const [download] = await Promise.all([page.waitForEvent("download"), link.click()]);
      const file = readFileSync(await download.path(), "utf8");
      const lines = file.trimEnd().split("\n");
      assert.equal(lines[0], "id,name,email,country,plan,signed_up");
      assert.equal(lines.length, 20_001, "20,000 rows and a header");
      assert.match(lines[20_000], /^20000,/);
    });
  });

  it("cancels an export mid-way", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("cancel", pages, async () => {
      const { page } = alice;
      await startExport(page, "json");
      await untilBarAbove(page, 5);
      await page.click("[data-testid=export-cancel]");
      await untilStatus(page, "export-status", "cancelled");
      const w = await barWidth(page);
      assert.ok(w > 0 && w < 100, `stopped mid-way, at ${w}%`);
      assert.match(await text(page, "export-error"), /cancelled/i);
      assert.equal(await page.locator("[data-testid=export-download]").count(), 0);
      await screenshot(page, "04-export-cancelled");
    });
  });

  it("re-attaches to a running export after a reload", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("reload", pages, async () => {
      const { page } = alice;
      const id = await startExport(page);
      await untilBarAbove(page, 10);
      await page.reload();
      await page.waitForSelector("[data-testid=who]");
      // Tracking resumes where the job is, not from zero, and follows it to the end.
      await waitFor("the resumed export to show progress", async () => (await barWidth(page)) > 10, { timeout: 10_000 });
      await screenshot(page, "05-export-resumed");
      await untilStatus(page, "export-status", "completed", 60_000);
      await page.locator("[data-testid=export-download]").waitFor();
      assert.equal(await page.evaluate(() => localStorage.getItem("forge-demo:alice:export")), id);
    });
  });

  it("reconnects after the server restarts mid-export and still sees it complete", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("restart", pages, async () => {
      const { page } = alice;
      await startExport(page);
      await untilBarAbove(page, 10);
      const port = demo.port;
      await demo.kill();
      await waitFor("the page to notice the dropped stream", async () => (await attr(page, "connection", "data-status")) !== "open", {
        timeout: 15_000,
      });
      await screenshot(page, "06-server-down");
      demo = await startDemo({ databaseUrl: db.url, dataDir, port });
      await waitFor("the page to reconnect", async () => (await attr(page, "connection", "data-status")) === "open", {
        timeout: 30_000,
      });
      // The killed worker's lease runs out, the new process takes the job over and finishes it.
      await untilStatus(page, "export-status", "completed", 90_000);
      await page.locator("[data-testid=export-download]").waitFor();
      await screenshot(page, "07-export-completed-after-restart");
    });
  });

  it("runs the verification workflow: steps advance, it waits for the email, confirming completes it", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("workflow", pages, async () => {
      const { page } = alice;
      await page.selectOption("[data-testid=wf-fail-select]", "");
      await page.click("[data-testid=wf-start]");
      await untilStatus(page, "wf-step-validate_user", "completed");
      await untilStatus(page, "wf-step-send_verification_email", "completed");
      await untilStatus(page, "wf-status", "waiting");
      assert.match(await text(page, "wf-waiting"), /email_confirmed/);
      assert.equal(await status(page, "wf-step-activate_account"), "pending");
      await page.locator("[data-testid=inbox-mail]").first().waitFor();
      await screenshot(page, "08-workflow-waiting");
      await page.click("[data-testid=wf-confirm]");
      await untilStatus(page, "wf-status", "completed");
      for (const step of ["validate_user", "send_verification_email", "email_confirmed", "activate_account"]) {
        assert.equal(await status(page, `wf-step-${step}`), "completed", step);
      }
      await waitFor("the account to show active", async () => (await text(page, "account-status")) === "active");
      await screenshot(page, "09-workflow-completed");
    });
  });

  it("shows the failed, compensated and skipped steps when the failure switch is on", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("workflow-failure", pages, async () => {
      const { page } = alice;
      await page.selectOption("[data-testid=wf-fail-select]", "send_verification_email");
      await page.click("[data-testid=wf-start]");
      await untilStatus(page, "wf-status", "compensated");
      assert.equal(await status(page, "wf-step-validate_user"), "compensated");
      assert.equal(await status(page, "wf-step-send_verification_email"), "failed");
      assert.equal(await status(page, "wf-step-email_confirmed"), "skipped");
      assert.equal(await status(page, "wf-step-activate_account"), "skipped");
      assert.match(await text(page, "wf-error"), /failure switch/);
      await screenshot(page, "10-workflow-compensated");

      // Failing the last step undoes the email that was sent (the inbox shows it recalled).
      await page.selectOption("[data-testid=wf-fail-select]", "activate_account");
      await page.click("[data-testid=wf-start]");
      await untilStatus(page, "wf-status", "waiting");
      await page.click("[data-testid=wf-confirm]");
      await untilStatus(page, "wf-status", "compensated");
      assert.equal(await status(page, "wf-step-activate_account"), "failed");
      assert.equal(await status(page, "wf-step-send_verification_email"), "compensated");
      assert.equal(await status(page, "wf-step-validate_user"), "compensated");
      await waitFor("the inbox to show the email recalled", async () =>
        (await text(page, "inbox-mail"))?.includes("recalled"),
      );
      await screenshot(page, "11-workflow-compensated-after-email");
    });
  });

  it("shows send_report retrying, then dead_letter when it always fails", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("report", pages, async () => {
      const { page } = alice;
      await page.click("[data-testid=report-start]");
      await untilStatus(page, "report-status", "completed");
      assert.equal(await page.locator("[data-testid=report-timeline] [data-status=retry]").count(), 1);
      await screenshot(page, "12-report-retried");

      await page.check("[data-testid=report-always-fail]");
      await page.click("[data-testid=report-start]");
      await untilStatus(page, "report-status", "retry");
      await untilStatus(page, "report-status", "dead_letter");
      assert.ok((await page.locator("[data-testid=report-timeline] [data-status=retry]").count()) >= 2);
      assert.match(await text(page, "report-error"), /451/);
      await screenshot(page, "13-report-dead-letter");
    });
  });

  it("updates the live recent-jobs list by itself", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("live-query", pages, async () => {
      const { page } = alice;
      // A job started elsewhere (here, straight through the API): the page does nothing.
      const { token } = await session(page);
      const res = await fetch(`${demo.url}/_api/rpc/send_report`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ reportId: "q4-2024" }),
      });
      assert.equal(res.status, 200);
      const { data } = await res.json();
      const row = page.locator(`[data-testid=recent-job][data-job-id="${data.jobId}"]`);
      await row.waitFor({ timeout: 10_000 });
      await waitFor("the new job to complete in the list", async () => (await row.getAttribute("data-status")) === "completed", {
        timeout: 30_000,
      });
      await screenshot(page, "14-live-recent-jobs");
    });
  });

  it("keeps a user's export from another signed-in user", { timeout: TEST_TIMEOUT }, async () => {
    let bob;
    await keepEvidence("ownership", () => [alice, bob].filter(Boolean), async () => {
      const exportId = await alice.page.evaluate(() => localStorage.getItem("forge-demo:alice:export"));
      const aliceToken = (await session(alice.page)).token;
      const path = `/downloads/${exportId}.csv`;

      bob = await newPage(browser, demo.url);
      await signIn(bob.page, "bob");
      // Bob's list has loaded (empty, or holding his own digest runs, which the demo's
      // every-minute schedule starts for him), and Alice's export is not in it.
      await bob.page.locator("[data-testid=recent-empty], [data-testid=recent-job]").first().waitFor();
      assert.equal(await bob.page.locator(`[data-job-id="${exportId}"]`).count(), 0);

      // Bob's page asked to follow Alice's export: the server says there is no such job.
      await bob.page.evaluate((id) => localStorage.setItem("forge-demo:bob:export", id), exportId);
      await bob.page.reload();
      await untilStatus(bob.page, "export-status", "not_found", 10_000);
      await screenshot(bob.page, "15-second-user-not-found");

      const bobToken = (await session(bob.page)).token;
      const get = async (url, token) =>
        (await fetch(`${demo.url}${url}`, { headers: token ? { authorization: `Bearer ${token}` } : {} })).status;
      assert.equal(await get(path, bobToken), 404);
      assert.equal(await get(path, aliceToken), 200);
      assert.equal(await get(path), 401);
      // The browsers' download cookies: Alice's opens her file, Bob's does not; no script sees it.
      assert.equal((await alice.context.request.get(path)).status(), 200);
      assert.equal((await bob.context.request.get(path)).status(), 404);
      assert.equal(await alice.page.evaluate(() => document.cookie), "");
    });
    await bob?.context.close();
  });

  it("runs the documentation's JS-only export component: the plain link downloads for its owner only", { timeout: TEST_TIMEOUT }, async () => {
    let bob;
    await keepEvidence("doc-export", () => [alice, bob].filter(Boolean), async () => {
      const { page } = alice;
      await page.goto("/examples.html");
      await waitFor("the export to complete", async () => (await status(page, "doc-export")) === "completed", { timeout: 60_000 });
      const link = page.locator("[data-testid=doc-export-download]");
      const href = await link.getAttribute("href");
      assert.doesNotMatch(href, /token|\?/, `no token in the link: ${href}`);
      await screenshot(page, "16-doc-export-completed");
      const [download] = await Promise.all([page.waitForEvent("download"), link.click()]);
      const lines = readFileSync(await download.path(), "utf8").trimEnd().split("\n");
      assert.equal(lines.length, 20_001, "20,000 rows and a header");

      // The same link in Bob's browser (his own download cookie) gets nothing.
      bob = await newPage(browser, demo.url);
      await signIn(bob.page, "bob");
      const res = await bob.context.request.get(href);
      assert.equal(res.status(), 404);
      assert.doesNotMatch(await res.text(), /^id,name/);
    });
    await bob?.context.close();
  });

  it("runs the documentation's JS-only report component: completed, or retry then dead_letter", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("doc-report", pages, async () => {
      const { page } = alice;
      await page.goto("/examples.html?example=report");
      await page.click("[data-testid=doc-report-start]");
      await untilStatus(page, "doc-report-status", "completed");
      assert.match(await attr(page, "doc-report-status", "data-seen"), /\bretry\b.*\bcompleted$/);
      assert.match(await page.locator("[data-testid=doc-report]").textContent(), /Send report q4-2024/);

      await page.goto("/examples.html?example=report&alwaysFail");
      await page.click("[data-testid=doc-report-start]");
      await untilStatus(page, "doc-report-status", "dead_letter");
      assert.match(await attr(page, "doc-report-status", "data-seen"), /\bretry\b.*\bdead_letter$/);
      await screenshot(page, "17-doc-report-dead-letter");
    });
  });

  it("re-attaches a keyed export to the same job after a reload, and a second tab too", { timeout: TEST_TIMEOUT }, async () => {
    await keepEvidence("doc-reload", pages, async () => {
      const { page, context } = alice;
      const url = "/examples.html?key=reload-test";
      await page.goto(url);
      const id = await waitFor("the keyed export's id", async () => attr(page, "doc-export", "data-job-id"));
      const percent = async (p) => Number(await attr(p, "doc-export-percent", "data-percent"));
      await waitFor("the keyed export past 10%", async () => (await percent(page)) > 10, { timeout: 30_000 });
      const before = await percent(page);
      await page.reload();
      await waitFor("the reloaded page to show progress", async () => (await percent(page)) >= before, { timeout: 10_000 });
      assert.equal(await attr(page, "doc-export", "data-job-id"), id, "the reload follows the same job");
      await screenshot(page, "18-doc-export-reattached");

      // A second tab has no sessionStorage of its own: the server's idempotency key gives it
      // the same job.
      const tab = await context.newPage();
      await tab.goto(url);
      await waitFor("the second tab's job id", async () => attr(tab, "doc-export", "data-job-id"));
      assert.equal(await attr(tab, "doc-export", "data-job-id"), id);
      await tab.close();

      await waitFor("the keyed export to complete", async () => (await status(page, "doc-export")) === "completed", {
        timeout: 60_000,
      });
      assert.equal(await attr(page, "doc-export", "data-job-id"), id);
      const { token } = await session(page);
      const exports = (await rpc("recent_jobs", { limit: 50 }, token)).data.filter((j) => j.id === id);
      assert.equal(exports.length, 1);
    });
  });
});
