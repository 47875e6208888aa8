import { defaultClientConditions, defaultServerConditions } from "vite";
import { defineConfig } from "vitest/config";

// Unit tests of the TypeScript packages: fake fetch, fake event streams, fake timers. The
// packages are read from their sources (the `@forge/source` export condition), not `dist/`.
export const sources = {
  resolve: { conditions: ["@forge/source", ...defaultClientConditions] },
  ssr: { resolve: { conditions: ["@forge/source", ...defaultServerConditions] } },
};

export default defineConfig({
  ...sources,
  test: {
    include: ["packages/*/test/**/*.test.ts"],
    exclude: ["packages/*/test/integration/**"],
    environment: "node",
  },
});
