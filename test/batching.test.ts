import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR, writeSyntheticModel } from "@strata/model";
import { LocalCluster, type ClusterOptions } from "@strata/coordinator";
import { kvBytesPerToken } from "@strata/kv";
import type { DescribeResponse } from "@strata/proto";
import { SeededRandom } from "@strata/sampling";
import { GREEDY, useNats } from "./support/cluster.ts";

const nats = useNats();
let syntheticDir: string;
let wideKvDir: string;
beforeAll(async () => {
  await nats.start();
  syntheticDir = mkdtempSync(join(tmpdir(), "strata-batching-"));
  await writeSyntheticModel(
    syntheticDir,
    { hiddenSize: 128, intermediateSize: 256, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 32, vocabSize: 256, maxPositionEmbeddings: 256 },
    7,
  );
  // 2 KV heads of 64: split attention, which reads a past its step's sequences share once.
  wideKvDir = mkdtempSync(join(tmpdir(), "strata-batching-wide-"));
  await writeSyntheticModel(
    wideKvDir,
    { hiddenSize: 256, intermediateSize: 256, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 64, vocabSize: 256, maxPositionEmbeddings: 256 },
    9,
  );
});
afterAll(async () => {
  await nats.stop();
  rmSync(syntheticDir, { recursive: true, force: true });
  rmSync(wideKvDir, { recursive: true, force: true });
});

interface Job {
  promptIds: number[];
  maxTokens: number;
}

// 32 requests of mixed prompt and output lengths, from a seeded generator; with `systemTokens`,
// every prompt begins with the same system prompt of that length.
function jobs(vocab: number, count = 32, systemTokens = 0): Job[] {
  const rng = new SeededRandom(11);
  const token = () => 3 + Math.floor(rng.next() * (vocab - 3));
  const system = Array.from({ length: systemTokens }, token);
  return Array.from({ length: count }, () => {
    const promptLength = 1 + Math.floor(rng.next() * 60);
    return {
      promptIds: [1, ...system, ...Array.from({ length: promptLength - 1 }, token)],
      maxTokens: 4 + Math.floor(rng.next() * 28),
    };
  });
}

async function withCluster<T>(opts: Omit<ClusterOptions, "natsUrl">, fn: (c: LocalCluster) => Promise<T>): Promise<T> {
  const cluster = await LocalCluster.start({ ...opts, natsUrl: nats.url(), inProcessWorkers: true });
  try {
    return await fn(cluster);
  } finally {
    await cluster.stop();
  }
}

async function batchingChangesNothing(modelDir: string, vocab: number, kvHeads: number, headDim: number, systemTokens = 0, computeThread = false): Promise<DescribeResponse[]> {
  const work = jobs(vocab, 32, systemTokens);
  // Each request alone: plenty of KV, one at a time.
  const alone = await withCluster({ modelDir, workers: 2, enablePrefixCaching: false }, async (cluster) => {
    const out: number[][] = [];
    for (const job of work) out.push((await cluster.engine.generate({ ...job, sampling: GREEDY, stopTokenIds: [] })).tokenIds);
    return out;
  });
  // All 32 at once through 3 stages: chunked prefill (16-token chunks), 3 micro-batches in flight,
  // and a KV budget of 24 blocks of 16 tokens per stage, far below what 32 requests hold at once.
  return withCluster(
    {
      modelDir,
      workers: 3,
      // The widest stage holds 2 layers: 24 blocks of 16 tokens there, the tightest stage.
      kvCacheBytes: kvBytesPerToken(2, kvHeads, headDim, 4) * 16 * 24,
      blockSizeTokens: 16,
      maxPrefillChunkTokens: 16,
      maxNumBatchedTokens: 64,
      pipelining: true,
      computeThread,
    },
    async (cluster) => {
      const together = await Promise.all(work.map((job) => cluster.engine.generate({ ...job, sampling: GREEDY, stopTokenIds: [] })));
      expect(together.map((r) => r.tokenIds)).toEqual(alone);
      const stats = cluster.engine.stats();
      expect(stats.blocksTotal).toBe(24);
      expect(stats.preemptions).toBeGreaterThan(0);
      expect(await cluster.waitForBlocksFreed()).toEqual([0, 0, 0]);
      const stages = await cluster.pipeline.describeAll();
      // Each stage freed the preempted sequences it held when their eviction events came.
      for (const s of stages) {
        expect(Number(s.kv!.preemptions)).toBeGreaterThan(0);
        expect(Number(s.kv!.preemptions)).toBeLessThanOrEqual(stats.preemptions);
      }
      return stages;
    },
  );
}

describe("batching changes nothing", () => {
  it("bundled stories260K: 32 concurrent requests equal each run alone, with preemption", async () => {
    await batchingChangesNothing(BUNDLED_MODEL_DIR, 512, 4, 8);
  });

  it("contiguous allocator (the baseline): same outputs, whole-length reservations, no preemption", async () => {
    const work = jobs(512, 12);
    const alone = await withCluster({ modelDir: BUNDLED_MODEL_DIR, workers: 1 }, async (cluster) => {
      const out: number[][] = [];
      for (const job of work) out.push((await cluster.engine.generate({ ...job, sampling: GREEDY, stopTokenIds: [] })).tokenIds);
      return out;
    });
    await withCluster(
      { modelDir: BUNDLED_MODEL_DIR, workers: 2, kvAllocator: "contiguous", kvCacheBytes: kvBytesPerToken(3, 4, 8, 4) * 16 * 24, blockSizeTokens: 16 },
      async (cluster) => {
        let peakUsed = 0;
        const together = await Promise.all(
          work.map((job) =>
            cluster.engine.generate({ ...job, sampling: GREEDY, stopTokenIds: [], onToken: () => (peakUsed = Math.max(peakUsed, cluster.engine.stats().blocksUsed)) }),
          ),
        );
        expect(together.map((r) => r.tokenIds)).toEqual(alone);
        expect(cluster.engine.stats().preemptions).toBe(0);
        expect(peakUsed).toBeGreaterThan(0);
        expect(peakUsed).toBeLessThanOrEqual(24);
        expect(await cluster.waitForBlocksFreed()).toEqual([0, 0]);
      },
    );
  });

  it("synthetic GQA model: 32 concurrent requests equal each run alone, with preemption", async () => {
    const stages = await batchingChangesNothing(syntheticDir, 256, 2, 32);
    // 2 KV heads of 32: the fused Attention node, which reads every sequence's past whole.
    expect(stages.map((s) => Number(s.kv!.sharedPastPositionsRead))).toEqual([0, 0, 0]);
  });

  it("stages computing on threads of their own: the next micro-batch queued behind a step changes nothing, with preemption", async () => {
    // Each stage admits and queues the next micro-batch while its thread computes the one before;
    // preemption's evictions arrive meanwhile.
    const stages = await batchingChangesNothing(wideKvDir, 256, 2, 64, 32, true);
    expect(stages.every((s) => Number(s.kv!.sharedPastPositionsRead) > 0)).toBe(true);
  });

  it("wide-K/V model behind one system prompt: the shared past read once per step changes nothing, with preemption", async () => {
    const stages = await batchingChangesNothing(wideKvDir, 256, 2, 64, 32);
    // Prefix caching put the 32-token system prompt's 2 blocks under every sequence: every stage
    // read it once for a step's sequences.
    for (const s of stages) {
      expect(Number(s.kv!.sharedPastPositionsRead)).toBeGreaterThan(0);
      expect(Number(s.kv!.sharedPastPositionReadsSaved)).toBeGreaterThan(Number(s.kv!.sharedPastPositionsRead));
    }
  });
});
