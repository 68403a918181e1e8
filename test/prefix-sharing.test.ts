import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { GREEDY, useNats } from "./support/cluster.ts";

const nats = useNats();
let cluster: LocalCluster;
beforeAll(async () => {
  await nats.start();
  cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url(), inProcessWorkers: true, blockSizeTokens: 16 });
});
afterAll(async () => {
  await cluster.stop();
  await nats.stop();
});

// 3 full blocks of 16 tokens and a few more.
const prefix = [1, ...Array.from({ length: 47 }, (_, i) => 300 + (i % 200))];

/** Starts a long generation and resolves once it has produced its first token. */
function startGeneration(promptIds: number[], cacheSalt?: string): { firstToken: Promise<void>; done: Promise<unknown> } {
  let started!: () => void;
  const firstToken = new Promise<void>((resolve) => (started = resolve));
  const done = cluster.engine.generate({ promptIds, maxTokens: 40, sampling: GREEDY, stopTokenIds: [], cacheSalt, onToken: () => started() });
  return { firstToken, done };
}

async function blockTablesOnEveryStage(seqIds: number[]): Promise<number[][][]> {
  const stages = await Promise.all(cluster.partition.map((_, i) => cluster.pipeline.describe(i, seqIds)));
  return stages.map((d) => seqIds.map((id) => d.blockTables.find((t) => t.seqId === id)!.blockIds));
}

describe("prefix caching", () => {
  it("two requests with the same 3-block prefix use the same physical blocks on every stage", async () => {
    const a = startGeneration([...prefix, 20, 21]);
    await a.firstToken;
    const b = startGeneration([...prefix, 30, 31, 32]);
    await b.firstToken;
    const [idA, idB] = cluster.engine.liveSequenceIds();
    const tables = await blockTablesOnEveryStage([idA, idB]);
    expect(tables).toHaveLength(3);
    for (const [tableA, tableB] of tables) {
      expect(tableB.slice(0, 3)).toEqual(tableA.slice(0, 3));
      expect(tableB[3]).not.toBe(tableA[3]);
    }
    expect(cluster.engine.stats().prefixHitTokens).toBeGreaterThanOrEqual(48);
    await Promise.all([a.done, b.done]);
  });

  it("different cache salts never share blocks", async () => {
    const a = startGeneration([...prefix, 20, 21], "tenant-a");
    await a.firstToken;
    const b = startGeneration([...prefix, 20, 21], "tenant-b");
    await b.firstToken;
    const [idA, idB] = cluster.engine.liveSequenceIds();
    for (const [tableA, tableB] of await blockTablesOnEveryStage([idA, idB])) {
      expect(tableB.filter((block) => tableA.includes(block))).toEqual([]);
    }
    const [outA, outB] = (await Promise.all([a.done, b.done])) as Array<{ tokenIds: number[] }>;
    expect(outB.tokenIds).toEqual(outA.tokenIds);
  });

  it("a prefix hit gives the same tokens as a miss", async () => {
    const prompt = [...prefix, 40, 41];
    const miss = await cluster.engine.generate({ promptIds: prompt, maxTokens: 20, sampling: GREEDY, stopTokenIds: [], cacheSalt: "fresh-salt" });
    const before = cluster.engine.stats().prefixHitTokens;
    await cluster.waitForBlocksFreed();
    const stagesBefore = await cluster.pipeline.describeAll();
    // The miss's 3 whole prompt blocks (and any whole blocks of its answer) stay on every stage.
    for (const s of stagesBefore) expect(s.kv!.blocksCached).toBeGreaterThanOrEqual(3);
    const hit = await cluster.engine.generate({ promptIds: prompt, maxTokens: 20, sampling: GREEDY, stopTokenIds: [], cacheSalt: "fresh-salt" });
    expect(cluster.engine.stats().prefixHitTokens - before).toBe(48);
    expect(hit.tokenIds).toEqual(miss.tokenIds);
    expect(await cluster.waitForBlocksFreed()).toEqual([0, 0, 0]);
    // Every stage saw the hit as one: a new sequence whose first chunk began at position 48.
    const stagesAfter = await cluster.pipeline.describeAll();
    stagesAfter.forEach((s, i) => {
      const was = stagesBefore[i].kv!;
      expect(Number(s.kv!.prefixQueries - was.prefixQueries)).toBe(1);
      expect(Number(s.kv!.prefixHits - was.prefixHits)).toBe(1);
      expect(Number(s.kv!.prefixHitTokens - was.prefixHitTokens)).toBe(48);
      expect(s.kv!.blocksUsed + s.kv!.blocksCached + s.kv!.blocksFree).toBe(s.kv!.blocksTotal);
    });
  });

  it("a conversation's next turn matches the blocks the last answer filled, and continues it as one long request would", async () => {
    // Decode runs of exactly 8 steps, so where each starts is known: a block is hashed when a step
    // or run reserves it, if its tokens are known by then, and otherwise when its sequence ends.
    const runsOf8 = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url(), inProcessWorkers: true, blockSizeTokens: 16, numSchedulerSteps: 8 });
    try {
      const prompt = [1, 300, 301, 302, 303, 304];
      const whole = await runsOf8.engine.generate({ promptIds: prompt, maxTokens: 48, sampling: GREEDY, stopTokenIds: [], cacheSalt: "reference" });
      // 6 + 28 tokens, 33 fed through the model: after the prompt, runs start at positions 6, 14,
      // 22 and 30, the last filling block [16,32) from tokens it sampled itself.
      const first = await runsOf8.engine.generate({ promptIds: prompt, maxTokens: 28, sampling: GREEDY, stopTokenIds: [], cacheSalt: "conversation" });
      expect(first.tokenIds).toEqual(whole.tokenIds.slice(0, 28));
      const before = runsOf8.engine.stats().prefixHitTokens;
      const next = await runsOf8.engine.generate({ promptIds: [...prompt, ...first.tokenIds], maxTokens: 20, sampling: GREEDY, stopTokenIds: [], cacheSalt: "conversation" });
      expect(runsOf8.engine.stats().prefixHitTokens - before).toBe(32);
      expect(next.tokenIds).toEqual(whole.tokenIds.slice(28, 48));
      expect(await runsOf8.waitForBlocksFreed()).toEqual([0, 0, 0]);
    } finally {
      await runsOf8.stop();
    }
  });
});
