import { mount } from "svelte";
import App from "./App.svelte";
import { ensureSession } from "$lib/session";
import "./app.css";

const target = document.getElementById("app")!;

// Everything on the page acts as a user, so the session comes first.
ensureSession().then(
  () => mount(App, { target }),
  (e: unknown) => {
    target.textContent = `Cannot reach the server (${e instanceof Error ? e.message : String(e)}): is it running?`;
  },
);
