import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import { ensureSession } from "./lib/session";
import "./app.css";

const target = document.getElementById("app")!;

// Everything on the page acts as a user, so the session comes first.
ensureSession().then(
  () =>
    createRoot(target).render(
      <StrictMode>
        <App />
      </StrictMode>,
    ),
  (e: unknown) => {
    target.textContent = `Cannot reach the server (${e instanceof Error ? e.message : String(e)}): is it running?`;
  },
);
