// `/examples.html`: the documentation's examples, written in plain JavaScript (one in legacy
// Svelte syntax, one in runes), mounted from TypeScript as a user's page would. The browser
// tests drive them; `?example=report[&alwaysFail]` picks the report, else the export
// (`?format=json`, `?key=...`). Sign in on the main page first.
import { mount } from "svelte";
import type { ExportFormat } from "$lib/forge/api";
import ExportDownload from "$lib/examples/ExportDownload.svelte";
import SendReport from "$lib/examples/SendReport.svelte";
import { startPage } from "$lib/session";
import "./app.css";

const params = new URLSearchParams(location.search);
const target = document.getElementById("app")!;

if (!startPage()) {
  target.textContent = "Sign in on the demo's page first.";
} else if (params.get("example") === "report") {
  mount(SendReport, { target, props: { alwaysFail: params.has("alwaysFail") } });
} else {
  const format: ExportFormat = params.get("format") === "json" ? "json" : "csv";
  mount(ExportDownload, { target, props: { format, key: params.get("key") ?? undefined } });
}
