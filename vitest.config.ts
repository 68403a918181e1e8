import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["packages/*/test/**/*.test.ts", "services/*/test/**/*.test.ts", "test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Cluster tests spawn worker processes; two cores cannot run many at once.
    fileParallelism: false,
    // A test checks that weight arrays are collected; v8.setFlagsFromString("--expose-gc") after
    // start-up, which it used before, is undefined behaviour by Node's own account.
    execArgv: ["--expose-gc"],
  },
});
