import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_HF_MODEL_DIR, BUNDLED_MODEL_DIR } from "@strata/model";
import { allPartitions } from "@strata/planner";
import { LocalCluster } from "@strata/coordinator";
import { GREEDY, loadGreedyOracle, useNats } from "./support/cluster.ts";

const oracle = loadGreedyOracle();
const generatedIds = oracle.token_ids.slice(oracle.prompt_token_ids.length);
const nats = useNats();
beforeAll(nats.start);
afterAll(nats.stop);

// greedy.json: 64 forward passes counting the prompt's, so 64 - (prompt - 1) new tokens.
const maxTokens = oracle.steps - oracle.prompt_token_ids.length + 1;

async function generateThrough(modelDir: string, partition: Array<[number, number]>, kvDtype?: "int8" | "fp8"): Promise<number[]> {
  const cluster = await LocalCluster.start({ modelDir, workers: partition.length, partition, natsUrl: nats.url(), inProcessWorkers: true, kvDtype });
  try {
    const result = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens, sampling: GREEDY });
    expect(await cluster.waitForBlocksFreed()).toEqual(partition.map(() => 0));
    return result.tokenIds;
  } finally {
    await cluster.stop();
  }
}

describe("stories260K greedy oracle through the pipeline", () => {
  const partitions = [1, 2, 3, 5].flatMap((workers) => allPartitions(5, workers));
  it.each(partitions.map((p) => [p.map(([a, b]) => `${a}-${b}`).join(","), p] as const))(
    "llama2.c checkpoint, partition %s",
    async (_name, partition) => {
      expect(await generateThrough(BUNDLED_MODEL_DIR, partition as Array<[number, number]>)).toEqual(generatedIds);
    },
  );

  it.each([[[[0, 5]]], [[[0, 2], [2, 5]]], [[[0, 1], [1, 3], [3, 5]]]] as Array<[Array<[number, number]>]>)(
    "Hugging Face folder, partition %j",
    async (partition) => {
      expect(await generateThrough(BUNDLED_HF_MODEL_DIR, partition)).toEqual(generatedIds);
    },
  );

  // Each stage quantizes its own layers' K/V; packages/compute's kv-dtype-greedy test has the error figures.
  it.each([
    ["int8", [[0, 2], [2, 5]]],
    ["fp8", [[0, 2], [2, 5]]],
    ["fp8", [[0, 1], [1, 3], [3, 5]]],
  ] as Array<["int8" | "fp8", Array<[number, number]>]>)("%s KV cache, partition %j", async (kvDtype, partition) => {
    expect(await generateThrough(BUNDLED_MODEL_DIR, partition, kvDtype)).toEqual(generatedIds);
  });

  it("3 worker processes (not in-process servers) reproduce it too", async () => {
    const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url() });
    try {
      const result = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens, sampling: GREEDY });
      expect(result.tokenIds).toEqual(generatedIds);
      expect(cluster.partition).toEqual([[0, 2], [2, 4], [4, 5]]);
      expect(await cluster.waitForBlocksFreed()).toEqual([0, 0, 0]);
    } finally {
      await cluster.stop();
    }
  });
});
