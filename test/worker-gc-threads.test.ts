import { availableParallelism } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster, gcOnComputeThreads } from "@strata/coordinator";
import { useNats } from "./support/cluster.ts";
import { workersUsing } from "./support/processes.ts";

// Worker processes whose compute threads fill the machine's cores collect garbage on their own
// threads (--single-threaded-gc): V8's helper threads would only take a core another stage
// computes on.

const nats = useNats();
beforeAll(nats.start);
afterAll(nats.stop);

describe("worker processes' garbage collection", () => {
  it("stays on the workers' own threads exactly when their compute threads fill the cores", () => {
    expect(gcOnComputeThreads({ workers: 2 }, 2)).toBe(true);
    expect(gcOnComputeThreads({ workers: 3 }, 2)).toBe(true);
    expect(gcOnComputeThreads({ workers: 1, threadsPerWorker: 2 }, 2)).toBe(true);
    expect(gcOnComputeThreads({ workers: 2 }, 16)).toBe(false);
    expect(gcOnComputeThreads({ workers: 1 }, 2)).toBe(false);
  });

  it("is what the spawned worker processes run with", async () => {
    const cores = availableParallelism();
    for (const workers of [...new Set([cores, Math.max(1, cores - 1)])]) {
      const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: Math.min(workers, 5), natsUrl: nats.url() });
      try {
        const spawned = workersUsing(nats.url());
        expect(spawned).toHaveLength(Math.min(workers, 5));
        for (const p of spawned) expect(p.args.includes("--single-threaded-gc")).toBe(gcOnComputeThreads({ workers: Math.min(workers, 5) }));
      } finally {
        await cluster.stop();
      }
    }
  });
});
