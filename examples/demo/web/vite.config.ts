import { fileURLToPath } from "node:url";
import { svelte } from "@sveltejs/vite-plugin-svelte";
import { defaultClientConditions, defineConfig } from "vite";

// `npm run dev -w @forge/demo-web` serves the page with hot reload and sends the API to a
// running demo (`cargo run -p demo`, port 8080 unless DEMO_API says otherwise).
const api = process.env.DEMO_API ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [svelte()],
  resolve: {
    alias: { $lib: fileURLToPath(new URL("./src/lib", import.meta.url)) },
    // The Forge packages from their sources (this repository's), not their built `dist/`.
    conditions: ["@forge/source", ...defaultClientConditions],
  },
  server: {
    proxy: {
      "/_api": { target: api, changeOrigin: false },
      "/downloads": { target: api },
    },
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // The page, and the documentation's examples that the browser tests run (`examples.html`).
    rollupOptions: {
      input: {
        main: fileURLToPath(new URL("./index.html", import.meta.url)),
        examples: fileURLToPath(new URL("./examples.html", import.meta.url)),
      },
    },
  },
});
