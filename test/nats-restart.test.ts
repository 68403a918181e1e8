import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { GREEDY, loadGreedyOracle, useNats } from "./support/cluster.ts";

// DESIGN.md: no block leaks, even across NATS restarts. Evictions published while the server is
// down are buffered by the client and delivered once it is back.
const oracle = loadGreedyOracle();
const nats = useNats();
beforeAll(nats.start);
afterAll(nats.stop);

describe("NATS restart", () => {
  it("sequences finished while nats-server restarts still free their blocks on every stage", async () => {
    const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), inProcessWorkers: true });
    try {
      let restarted: Promise<void> | undefined;
      let generated = 0;
      const runs = Array.from({ length: 6 }, (_, i) =>
        cluster.engine.generate({
          promptIds: oracle.prompt_token_ids,
          maxTokens: 20 + i * 5,
          sampling: GREEDY,
          stopTokenIds: [],
          onToken: () => {
            if (++generated === 30) restarted = nats.server().restart();
          },
        }),
      );
      const results = await Promise.all(runs);
      await restarted;
      const expected = oracle.token_ids.slice(oracle.prompt_token_ids.length);
      results.forEach((r, i) => expect(r.tokenIds).toEqual(expected.slice(0, 20 + i * 5)));
      expect(await cluster.waitForBlocksFreed(20_000)).toEqual([0, 0]);
      // And the cluster keeps serving after the restart.
      const after = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 10, sampling: GREEDY, stopTokenIds: [] });
      expect(after.tokenIds).toEqual(expected.slice(0, 10));
      expect(await cluster.waitForBlocksFreed(20_000)).toEqual([0, 0]);
    } finally {
      await cluster.stop();
    }
  });
});
