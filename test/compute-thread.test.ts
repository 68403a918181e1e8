import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR, writeSyntheticModel } from "@strata/model";
import { LocalCluster, type ClusterOptions } from "@strata/coordinator";
import { SeededRandom } from "@strata/sampling";
import { GREEDY, loadGreedyOracle, useNats } from "./support/cluster.ts";

// Worker processes started with --compute-thread: each stage's engine computes on a thread of
// its own, so the worker's event loop stays free while a step computes.

const nats = useNats();
let longStepDir: string;
beforeAll(async () => {
  await nats.start();
  // Wide enough that a 1,500-token prompt's step takes tens of milliseconds per stage.
  longStepDir = mkdtempSync(join(tmpdir(), "strata-compute-thread-"));
  await writeSyntheticModel(
    longStepDir,
    { hiddenSize: 256, intermediateSize: 704, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 64, vocabSize: 512, maxPositionEmbeddings: 2048 },
    13,
  );
});
afterAll(async () => {
  await nats.stop();
  rmSync(longStepDir, { recursive: true, force: true });
});

async function withCluster<T>(opts: Omit<ClusterOptions, "natsUrl">, fn: (c: LocalCluster) => Promise<T>): Promise<T> {
  const cluster = await LocalCluster.start({ ...opts, natsUrl: nats.url() });
  try {
    return await fn(cluster);
  } finally {
    await cluster.stop();
  }
}

/**
 * Generates `promptIds` while probing stage 0's health every few milliseconds; returns the tokens,
 * how long the request took to its first token, and the longest any probe waited for its answer.
 */
async function generateWhileProbing(cluster: LocalCluster, promptIds: number[]): Promise<{ tokenIds: number[]; firstTokenMs: number; longestProbeMs: number }> {
  const started = performance.now();
  let firstTokenMs = 0;
  let done = false;
  const generated = cluster.engine.generate({ promptIds, maxTokens: 4, sampling: GREEDY, stopTokenIds: [], onToken: () => (firstTokenMs ||= performance.now() - started) });
  void generated.finally(() => (done = true));
  let longestProbeMs = 0;
  while (!done) {
    const sent = performance.now();
    await cluster.pipeline.health(0, 10_000);
    longestProbeMs = Math.max(longestProbeMs, performance.now() - sent);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return { tokenIds: (await generated).tokenIds, firstTokenMs, longestProbeMs };
}

describe("stages computing on threads of their own", () => {
  it("stories260K greedy oracle through 2 worker processes", async () => {
    const oracle = loadGreedyOracle();
    const maxTokens = oracle.steps - oracle.prompt_token_ids.length + 1;
    await withCluster({ modelDir: BUNDLED_MODEL_DIR, workers: 2, computeThread: true }, async (cluster) => {
      const result = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens, sampling: GREEDY });
      expect(result.tokenIds).toEqual(oracle.token_ids.slice(oracle.prompt_token_ids.length));
      expect(await cluster.waitForBlocksFreed()).toEqual([0, 0]);
    });
  });

  it("a stage answers health checks while it computes a long prompt, and the output is the same", async () => {
    const rng = new SeededRandom(21);
    const prompt = [1, ...Array.from({ length: 1500 }, () => 3 + Math.floor(rng.next() * 509))];
    const opts = { modelDir: longStepDir, workers: 2, kvCacheBytes: 64 * 2 ** 20 };
    const blocking = await withCluster(opts, (cluster) => generateWhileProbing(cluster, prompt));
    const aside = await withCluster({ ...opts, computeThread: true }, (cluster) => generateWhileProbing(cluster, prompt));
    expect(aside.tokenIds).toEqual(blocking.tokenIds);
    // Computing on the worker's own thread, a probe waits out the step it arrives during: the
    // prompt's steps are most of its time to first token. Beside a compute thread, it does not.
    expect(blocking.longestProbeMs).toBeGreaterThan(blocking.firstTokenMs / 4);
    expect(aside.longestProbeMs).toBeLessThan(aside.firstTokenMs / 4);
  });
});
