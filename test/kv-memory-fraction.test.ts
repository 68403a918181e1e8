import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { GREEDY, loadGreedyOracle, useNats } from "./support/cluster.ts";

// --kv-memory-fraction: each worker sizes its KV cache from the memory its host has available
// once its weights are loaded, in blocks of its own layers, and the scheduler admits against the
// tightest stage. Real worker processes.

const oracle = loadGreedyOracle();
const nats = useNats();
beforeAll(nats.start);
afterAll(nats.stop);

describe("a KV budget as a fraction of available memory", () => {
  it("gives a 1-layer stage about 4x the blocks of a 4-layer one, admits against the smaller, and serves the oracle", async () => {
    const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, partition: [[0, 1], [1, 5]], kvMemoryFraction: 0.002, natsUrl: nats.url() });
    try {
      const [one, four] = cluster.pipeline.stages.map((s) => s.kv!.blocksTotal);
      // The same host, measured a moment apart: within 10% of 4.
      expect(one / four).toBeGreaterThan(3.6);
      expect(one / four).toBeLessThan(4.4);
      // stories260K: 4 KV heads of 8 floats, 16-token blocks, 4 layers: 16 KiB a block. 0.2% of
      // a host's available memory is megabytes: thousands of blocks.
      expect(four).toBeGreaterThan(100);
      expect(cluster.engine.stats().blocksTotal).toBe(four);
      const result = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: oracle.token_ids.length - oracle.prompt_token_ids.length, sampling: GREEDY, stopTokenIds: [] });
      expect([...oracle.prompt_token_ids, ...result.tokenIds]).toEqual(oracle.token_ids);
    } finally {
      await cluster.stop();
    }
  });

  it("refuses a fraction that buys no block, and a budget given both ways", async () => {
    await expect(LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, kvMemoryFraction: 1e-12, natsUrl: nats.url(), inProcessWorkers: true })).rejects.toThrow(
      /stage \d .*kv_memory_fraction 1e-12 of the host's available memory \(\d+ bytes\) holds no block of 16 tokens/,
    );
    await expect(LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, kvMemoryFraction: 0.01, kvCacheBytes: 1 << 20, natsUrl: nats.url() })).rejects.toThrow(/not both/);
    await expect(LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, kvMemoryFraction: 2, natsUrl: nats.url() })).rejects.toThrow(/at most 1, got 2/);
  });
});
