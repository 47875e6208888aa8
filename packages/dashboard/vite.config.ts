import { fileURLToPath } from "node:url";
import { svelte } from "@sveltejs/vite-plugin-svelte";
import { defaultClientConditions, defineConfig } from "vite";

// The bundle is committed where the gateway embeds it (`include_bytes!`), so a Rust build
// needs no Node; `./dev test` rebuilds it and fails when the committed one is stale. Fixed
// file names (no content hashes) keep that comparison and the gateway's list of files simple;
// the gateway serves them with `no-cache` and an ETag instead.
//
// `npm run dev -w @forge/dashboard` serves it with hot reload against a running node
// (FORGE_API, default the demo on port 8080).
const api = process.env.FORGE_API ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [svelte()],
  // Relative asset URLs: the gateway serves the dashboard under any `dashboard_path`.
  base: "./",
  resolve: {
    conditions: ["@forge/source", ...defaultClientConditions],
  },
  server: { proxy: { "/_api": { target: api } } },
  build: {
    // DASHBOARD_OUT_DIR: where `./dev test` builds a copy to compare with the committed one.
    outDir: process.env.DASHBOARD_OUT_DIR ?? fileURLToPath(new URL("../../crates/forge-gateway/dashboard", import.meta.url)),
    emptyOutDir: true,
    modulePreload: false,
    rollupOptions: {
      output: {
        entryFileNames: "dashboard.js",
        chunkFileNames: "dashboard-[name].js",
        assetFileNames: "dashboard[extname]",
      },
    },
  },
});
