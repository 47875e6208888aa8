import { defineConfig } from "vitest/config";

// Unit tests of the TypeScript packages: fake fetch, fake event streams, fake timers.
export default defineConfig({
  test: {
    include: ["packages/*/test/**/*.test.ts"],
    exclude: ["packages/*/test/integration/**"],
    environment: "node",
  },
});
