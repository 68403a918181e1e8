import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { argmax, openModel, referenceForward, writeSyntheticModel, type DType, type ModelConfig, type StageWeights, type SyntheticShape } from "@strata/model";
import { LocalCluster, type GenerateResult } from "@strata/coordinator";
import { GREEDY, useNats } from "./support/cluster.ts";

// The fast path (ONNX stage graphs over paged KV, stage to stage over gRPC) must compute what the
// plain reference forward pass computes: the logits of every generated position within 1e-4, and
// therefore the same greedy tokens.

const TOLERANCE = 1e-4;
const BLOCK_SIZE = 16;
const PROMPT_LENGTH = 37; // crosses two block boundaries before the first decode step
const MAX_TOKENS = 40; // decoding crosses three more (48, 64, 80 would be the next)

const nats = useNats();
const tmp = mkdtempSync(join(tmpdir(), "strata-fastpath-"));
beforeAll(nats.start);
afterAll(async () => {
  await nats.stop();
  rmSync(tmp, { recursive: true, force: true });
});

function seededIds(seed: number, n: number, vocab: number): number[] {
  let a = seed >>> 0;
  return Array.from({ length: n }, () => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return a % vocab;
  });
}

interface Case {
  name: string;
  shape: SyntheticShape;
  seed: number;
  dtype?: DType;
  workers: number;
  /** Forces chunked prefill: the prompt reaches the stages in pieces that end mid-block. */
  maxNumBatchedTokens?: number;
}

const CASES: Case[] = [
  {
    name: "hidden 128, 4 heads / 2 KV heads, head_dim 32, 3 layers, tied head, 3 workers",
    shape: { hiddenSize: 128, intermediateSize: 320, numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 32, vocabSize: 320, maxPositionEmbeddings: 128, tieWordEmbeddings: true },
    seed: 101,
    workers: 3,
  },
  {
    name: "hidden 256, 8 heads / 4 KV heads, head_dim 32, 4 layers, untied head, 2 workers, chunked prefill",
    shape: { hiddenSize: 256, intermediateSize: 640, numLayers: 4, numHeads: 8, numKvHeads: 4, headDim: 32, vocabSize: 384, maxPositionEmbeddings: 160, tieWordEmbeddings: false },
    seed: 202,
    workers: 2,
    maxNumBatchedTokens: 24,
  },
  {
    name: "hidden 256, 4 heads / 2 KV heads, head_dim 64, 3 layers, untied head, F16 weights, 3 workers",
    shape: { hiddenSize: 256, intermediateSize: 512, numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 64, vocabSize: 512, maxPositionEmbeddings: 128, tieWordEmbeddings: false },
    seed: 303,
    dtype: "F16",
    workers: 3,
  },
  {
    // head_dim set apart from hidden / heads, as Qwen3 and Gemma configs do.
    name: "hidden 192 with 4 heads × head_dim 64 (q width 256), 2 KV heads, 3 layers, 2 workers",
    shape: { hiddenSize: 192, intermediateSize: 384, numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 64, vocabSize: 256, maxPositionEmbeddings: 128 },
    seed: 404,
    workers: 2,
  },
  {
    // A sliding window shorter than the prompt: the mask drops keys older than the window.
    // K/V of 128 floats a token: attention split into past and new keys (defaultAttentionForm).
    name: "hidden 256, 4 heads / 2 KV heads, head_dim 64, 3 layers, sliding window 20, 2 workers, chunked prefill",
    shape: { hiddenSize: 256, intermediateSize: 256, numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 64, vocabSize: 256, maxPositionEmbeddings: 128, slidingWindow: 20 },
    seed: 505,
    workers: 2,
    maxNumBatchedTokens: 24,
  },
];

async function loadFullWeights(dir: string): Promise<{ config: ModelConfig; weights: StageWeights }> {
  const source = await openModel(dir);
  try {
    const config = source.config;
    const weights = await source.loadStage({ layerStart: 0, layerEnd: config.numLayers, withEmbedding: true, withHead: true });
    return { config, weights };
  } finally {
    await source.close();
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/**
 * Checks every step of one greedy generation against the reference. The reference is causal, so
 * row p of one pass over prompt + generated tokens is exactly the last row of a pass over the first
 * p + 1 tokens; one pass serves every step (spot checks below confirm it on the literal prefixes).
 */
function checkAgainstReference(config: ModelConfig, weights: StageWeights, promptIds: number[], result: GenerateResult, spotSteps: number[]): void {
  const V = config.vocabSize;
  expect(result.finishReason).toBe("length");
  expect(result.promptTokenIds).toEqual(promptIds);
  expect(result.tokenIds).toHaveLength(MAX_TOKENS);
  expect(result.logits).toHaveLength(MAX_TOKENS);

  // Position of step i's query: the last prompt token, then each generated token but the last.
  const inputs = [...promptIds, ...result.tokenIds.slice(0, -1)];
  const reference = referenceForward(config, weights, inputs);
  let largest = 0;
  for (let step = 0; step < MAX_TOKENS; step++) {
    const row = promptIds.length - 1 + step;
    const expected = reference.subarray(row * V, (row + 1) * V);
    const actual = result.logits![step];
    expect(actual).toHaveLength(V);
    const diff = maxAbsDiff(actual, expected);
    if (diff > TOLERANCE) throw new Error(`step ${step} (position ${row}): logits differ from the reference by ${diff} (max abs), over ${TOLERANCE}`);
    for (const v of expected) largest = Math.max(largest, Math.abs(v));

    // Greedy token = the reference's argmax. Only a near-tie (closer than the tolerance allows us to
    // resolve) may pick the runner-up.
    const best = argmax(expected);
    const token = result.tokenIds[step];
    if (token !== best) {
      const gap = expected[best] - expected[token];
      if (gap > 2 * TOLERANCE) throw new Error(`step ${step}: greedy token ${token}, reference argmax ${best} (gap ${gap})`);
    }
  }
  // Logits of order 1: a tolerance of 1e-4 means something.
  expect(largest).toBeGreaterThan(1);

  for (const step of spotSteps) {
    const prefix = inputs.slice(0, promptIds.length + step);
    const direct = referenceForward(config, weights, prefix);
    const lastRow = direct.subarray((prefix.length - 1) * V, prefix.length * V);
    expect(maxAbsDiff(result.logits![step], lastRow)).toBeLessThanOrEqual(TOLERANCE);
  }
}

describe("fast path equals the reference forward pass", () => {
  it.each(CASES.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const dir = join(tmp, `case-${c.seed}`);
    await writeSyntheticModel(dir, c.shape, c.seed, { dtype: c.dtype ?? "F32" });
    const { config, weights } = await loadFullWeights(dir);
    expect(config.tieWordEmbeddings).toBe(c.shape.tieWordEmbeddings ?? false);

    const cluster = await LocalCluster.start({
      modelDir: dir,
      workers: c.workers,
      natsUrl: nats.url(),
      inProcessWorkers: true,
      blockSizeTokens: BLOCK_SIZE,
      maxNumBatchedTokens: c.maxNumBatchedTokens,
    });
    try {
      expect(cluster.partition).toHaveLength(c.workers);
      const promptIds = seededIds(c.seed, PROMPT_LENGTH, config.vocabSize);
      const result = await cluster.engine.generate({ promptIds, maxTokens: MAX_TOKENS, sampling: GREEDY, stopTokenIds: [], returnLogits: true });
      // Step 27 queries position 63, the last slot of block 3; step 39 the last step.
      checkAgainstReference(config, weights, promptIds, result, [0, 27]);
      expect(await cluster.waitForBlocksFreed()).toEqual(cluster.partition.map(() => 0));
    } finally {
      await cluster.stop();
    }
  });

  it("two sequences of different lengths batched together each match the reference", async () => {
    const c = CASES[0];
    const dir = join(tmp, `case-${c.seed}`); // written by the first case; rewrite if run alone
    await writeSyntheticModel(dir, c.shape, c.seed);
    const { config, weights } = await loadFullWeights(dir);
    const cluster = await LocalCluster.start({ modelDir: dir, workers: 2, natsUrl: nats.url(), inProcessWorkers: true, blockSizeTokens: BLOCK_SIZE });
    try {
      const long = seededIds(7, PROMPT_LENGTH, config.vocabSize);
      const short = seededIds(8, 20, config.vocabSize);
      const run = (promptIds: number[]) =>
        cluster.engine.generate({ promptIds, maxTokens: MAX_TOKENS, sampling: GREEDY, stopTokenIds: [], returnLogits: true });
      const [a, b] = await Promise.all([run(long), run(short)]);
      checkAgainstReference(config, weights, long, a, []);
      // The short prompt's generation is checked with the same helper: its rows start earlier.
      checkAgainstReference(config, weights, short, b, []);
      expect(await cluster.waitForBlocksFreed()).toEqual([0, 0]);
    } finally {
      await cluster.stop();
    }
  });
});
