import { beforeAll, describe, expect, it } from "vitest";
import type { KvDtype } from "@strata/kv";
import type { StageWeights } from "@strata/model";
import { StageEngine, type StageChunk } from "../src/index.ts";
import { loadWholeModel } from "./support/greedy-kv.ts";

// A quantized stage computes on its past K/V decoded to float32 (KvStore.gatherPools, kept between
// steps): it must compute what the KV store's own float32 gather decodes. An fp32 engine whose
// blocks hold the quantized engine's decoded K/V must compute the same step, for a batch of
// sequences of different lengths whose blocks are scattered and partly filled.

const BLOCK = 4;
let weights: StageWeights;
beforeAll(async () => {
  weights = await loadWholeModel();
});

const PROMPTS = [
  { seqId: 1, ids: [1, 403, 407, 261, 378, 432, 383], blocks: [3, 0, 7] },
  { seqId: 2, ids: [1, 20, 30, 40, 50], blocks: [5, 1] },
  { seqId: 3, ids: [1, 99], blocks: [2] },
];

describe("quantized KV decode", () => {
  it.each<KvDtype>(["fp16", "int8", "fp8"])("%s: a step computes on past K/V exactly as the store's float32 gather decodes them", async (kvDtype) => {
    const opts = { numBlocks: 8, blockSizeTokens: BLOCK, firstStage: true, lastStage: true };
    const quantized = await StageEngine.create(weights, { ...opts, kvDtype });
    const reference = await StageEngine.create(weights, { ...opts, kvDtype: "fp32" });

    // Mixed-length prefill: 7, 5 and 2 tokens in one padded batch.
    const prefill: StageChunk[] = PROMPTS.map((p) => ({ seqId: p.seqId, startPosition: 0, numTokens: p.ids.length, tokenIds: p.ids, blockTable: p.blocks }));
    await quantized.forward(prefill);

    // Copy the decoded past into the fp32 engine's blocks (fp32 stores it exactly).
    const P = 8;
    const row = weights.config.numKvHeads * weights.config.headDim;
    const past = PROMPTS.map((p) => ({ startPosition: p.ids.length, numTokens: 1, blockTable: p.blocks }));
    quantized.kv.pools.forEach((pool, i) => {
      const decoded = new Float32Array(PROMPTS.length * P * row);
      pool.gather(past, P, decoded);
      reference.kv.pools[i].scatter(decoded, PROMPTS.map((p) => ({ startPosition: 0, numTokens: p.ids.length, blockTable: p.blocks })), P);
    });

    // Two decode steps, the second crossing into sequence 1's third block.
    for (const step of [0, 1]) {
      const decode: StageChunk[] = PROMPTS.map((p) => ({ seqId: p.seqId, startPosition: p.ids.length + step, numTokens: 1, tokenIds: [300 + step], blockTable: p.blocks }));
      const a = (await quantized.forward(decode)).logits!;
      const b = (await reference.forward(decode)).logits!;
      expect(a).toHaveLength(PROMPTS.length * weights.config.vocabSize);
      let worst = 0;
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
      // Same inputs to the same attention; only summation order may differ between two sessions.
      expect(worst).toBeLessThan(1e-4);
      if (step === 0) {
        // The step wrote new K/V into both: copy the quantized engine's again for the next step.
        const written = PROMPTS.map((p) => ({ startPosition: p.ids.length + 1, numTokens: 1, blockTable: p.blocks }));
        quantized.kv.pools.forEach((pool, i) => {
          const decoded = new Float32Array(PROMPTS.length * P * row);
          pool.gather(written, P, decoded);
          reference.kv.pools[i].scatter(decoded, PROMPTS.map((p) => ({ startPosition: 0, numTokens: p.ids.length + 1, blockTable: p.blocks })), P);
        });
      }
    }
  });
});
