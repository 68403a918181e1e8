import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NO_BLOCK } from "@strata/kv";
import { openModel, referenceGenerateGreedy, writeSyntheticModel } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { GREEDY, useNats } from "./support/cluster.ts";

const nats = useNats();
let dir: string;
beforeAll(async () => {
  await nats.start();
  dir = mkdtempSync(join(tmpdir(), "strata-window-"));
  await writeSyntheticModel(
    dir,
    { hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: 128, maxPositionEmbeddings: 256, slidingWindow: 20 },
    9,
  );
});
afterAll(async () => {
  await nats.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe("sliding window", () => {
  it("frees blocks outside the window on every stage as the sequence advances, output unchanged", async () => {
    const cluster = await LocalCluster.start({ modelDir: dir, workers: 2, natsUrl: nats.url(), inProcessWorkers: true, blockSizeTokens: 8 });
    try {
      const prompt = [1, ...Array.from({ length: 29 }, (_, i) => 5 + ((i * 7) % 100))];
      let generated = 0;
      let described: Promise<number[][]> | undefined;
      const result = await cluster.engine.generate({
        promptIds: prompt,
        maxTokens: 90,
        sampling: GREEDY,
        stopTokenIds: [],
        onToken: () => {
          if (++generated === 60) {
            const [seqId] = cluster.engine.liveSequenceIds();
            described = Promise.all(cluster.partition.map((_, i) => cluster.pipeline.describe(i, [seqId]))).then((d) =>
              d.map((stage) => stage.blockTables[0].blockIds),
            );
          }
        },
      });
      // 90 positions in, a 20-token window needs at most 4 blocks of 8; the rest were given back.
      const tables = await described!;
      expect(tables).toHaveLength(2);
      for (const table of tables) {
        expect(table.filter((b) => b !== NO_BLOCK).length).toBeLessThanOrEqual(4);
        expect(table.slice(0, 6).every((b) => b === NO_BLOCK)).toBe(true);
      }
      const source = await openModel(dir);
      const weights = await source.loadStage({ layerStart: 0, layerEnd: 2, withEmbedding: true, withHead: true });
      await source.close();
      const reference = referenceGenerateGreedy(source.config, weights, prompt, prompt.length + 90 - 1);
      expect(result.tokenIds).toEqual(reference.slice(prompt.length));
      expect(await cluster.waitForBlocksFreed()).toEqual([0, 0]);
    } finally {
      await cluster.stop();
    }
  });
});
