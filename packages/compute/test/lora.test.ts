import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  loadLoraAdapter,
  mergeLora,
  openModel,
  referenceForward,
  toRotateHalfLayout,
  writeSyntheticLora,
  writeSyntheticModel,
  type LoraAdapter,
  type ModelConfig,
  type StageWeights,
} from "@strata/model";
import { StageEngine, type AttentionForm, type StageChunk } from "../src/index.ts";

// Served LoRA (x @ W + x @ A @ B, adapters as session inputs) must compute what the reference
// forward pass computes on merged weights W + B·A, with base and adapter sequences in one batch.

const tmp = mkdtempSync(join(tmpdir(), "strata-lora-"));
const BLOCK = 8;
let config: ModelConfig;
let base: StageWeights;
let adapter: LoraAdapter;

beforeAll(async () => {
  const modelDir = join(tmp, "model");
  await writeSyntheticModel(modelDir, { hiddenSize: 64, intermediateSize: 160, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: 96, maxPositionEmbeddings: 64 }, 7);
  const source = await openModel(modelDir);
  config = source.config;
  await writeSyntheticLora(join(tmp, "adapter"), config, { rank: 4, alpha: 8, seed: 11 });
  base = toRotateHalfLayout(await source.loadStage({ layerStart: 0, layerEnd: 2, withEmbedding: true, withHead: true }));
  await source.close();
  adapter = await loadLoraAdapter(join(tmp, "adapter"), config, { layerStart: 0, layerEnd: 2 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe("LoRA adapters in the stage graph", () => {
  it.each<AttentionForm>(["fused", "split"])("matches the reference on merged weights, base and adapter rows in one batch, prompt and decode (%s attention)", async (attention) => {
    const merged = mergeLora(base, adapter);
    const engine = await StageEngine.create(base, { numBlocks: 16, blockSizeTokens: BLOCK, firstStage: true, lastStage: true, maxLoraRank: 8, attention });
    engine.setAdapter("tenant-a", adapter);
    const prompt = [1, 17, 42, 5, 66, 23, 9, 81, 30, 2, 44]; // crosses a block boundary
    const seqs = [
      { adapter: undefined, weights: base, tokens: [...prompt], blocks: [0, 1, 2, 3] },
      { adapter: "tenant-a", weights: merged, tokens: [...prompt], blocks: [4, 5, 6, 7] },
    ];
    const adapterVsBase: number[] = [];
    for (let step = 0; step < 6; step++) {
      const chunks: StageChunk[] = seqs.map((s, i) => {
        const start = step === 0 ? 0 : s.tokens.length - 1;
        return { seqId: i + 1, startPosition: start, numTokens: s.tokens.length - start, tokenIds: s.tokens.slice(start), blockTable: s.blocks, adapter: s.adapter };
      });
      const { logits } = await engine.forward(chunks);
      seqs.forEach((s, i) => {
        const got = logits!.subarray(i * config.vocabSize, (i + 1) * config.vocabSize);
        const all = referenceForward(config, s.weights, s.tokens);
        const want = all.subarray((s.tokens.length - 1) * config.vocabSize, s.tokens.length * config.vocabSize);
        expect(maxAbsDiff(got, want)).toBeLessThan(1e-4);
      });
      adapterVsBase.push(maxAbsDiff(logits!.subarray(0, config.vocabSize), logits!.subarray(config.vocabSize)));
      // Both continue with the same token so the prompts stay comparable.
      for (const s of seqs) s.tokens.push((step * 13 + 3) % config.vocabSize);
    }
    // The adapter really changes the model.
    expect(Math.min(...adapterVsBase)).toBeGreaterThan(1e-2);
    await engine.close();
  });

  it("refuses an unknown adapter and one above the stage's rank, and serves nothing without LoRA support", async () => {
    const engine = await StageEngine.create(base, { numBlocks: 4, blockSizeTokens: BLOCK, firstStage: true, lastStage: true, maxLoraRank: 2 });
    expect(() => engine.setAdapter("too-big", adapter)).toThrow(/rank 4 exceeds the stage's max LoRA rank 2/);
    await expect(engine.forward([{ seqId: 1, startPosition: 0, numTokens: 1, tokenIds: [1], blockTable: [0], adapter: "nope" }])).rejects.toThrow(/unknown LoRA adapter "nope"/);
    const plain = await StageEngine.create(base, { numBlocks: 4, blockSizeTokens: BLOCK, firstStage: true, lastStage: true });
    expect(() => plain.setAdapter("a", adapter)).toThrow(/without LoRA support/);
    await Promise.all([engine.close(), plain.close()]);
  });
});
