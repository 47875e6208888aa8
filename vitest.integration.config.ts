import { defineConfig } from "vitest/config";
import { sources } from "./vitest.config.js";

// The TypeScript client against the real Rust server (examples/client-fixture), over real
// HTTP and SSE. Needs the fixture built (`cargo build -p client-fixture`) and PostgreSQL.
export default defineConfig({
  ...sources,
  test: {
    include: ["packages/*/test/integration/**/*.test.ts"],
    environment: "node",
    // One fixture process and database per file; files one at a time (2 cores).
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 90_000,
  },
});
