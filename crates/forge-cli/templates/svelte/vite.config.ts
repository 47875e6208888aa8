import { fileURLToPath } from "node:url";
import { svelte } from "@sveltejs/vite-plugin-svelte";
import { defineConfig } from "vite";

// `npm run dev` starts the Rust server on a port of its own and says where in FORGE_API; the
// page's calls to `/_api` (and its event stream) go there, so the page and the API share one
// origin, as they do when the Rust server serves the built page.
const api = process.env.FORGE_API ?? "http://127.0.0.1:8080";

export default defineConfig({
  root: fileURLToPath(new URL("./web", import.meta.url)),
  // Svelte 5's defaults (TypeScript needs no preprocessor): no svelte.config.js to look for.
  plugins: [svelte({ configFile: false })],
  resolve: {
    alias: { $lib: fileURLToPath(new URL("./web/src/lib", import.meta.url)) },
  },
  server: {
    proxy: { "/_api": { target: api } },
  },
  build: {
    // `web/dist`: where the Rust server looks for the page (WEB_DIR).
    outDir: "dist",
    emptyOutDir: true,
  },
});
