import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KvDtype } from "@strata/kv";
import { writeSyntheticModel, type StageWeights } from "@strata/model";
import { defaultAttentionForm, StageEngine, type AttentionForm, type StageChunk } from "../src/index.ts";
import { loadGreedyOracle, loadWholeModel, runGreedyOracle } from "./support/greedy-kv.ts";

// The two ways a stage graph attends (fused Attention node, or past and new keys split) compute
// the same thing: the same steps through both, on the bundled model (4 query heads a KV head...
// 8 heads over 4) and a synthetic grouped-query model, agree to float32 summation order.

const BLOCK = 4;
const tmp = mkdtempSync(join(tmpdir(), "strata-attention-"));
let bundled: StageWeights;
let gqa: StageWeights;

beforeAll(async () => {
  bundled = await loadWholeModel();
  const dir = join(tmp, "gqa");
  await writeSyntheticModel(dir, { hiddenSize: 128, intermediateSize: 256, numLayers: 2, numHeads: 8, numKvHeads: 2, headDim: 16, vocabSize: 200, maxPositionEmbeddings: 64 }, 5);
  gqa = await loadWholeModel(dir);
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const PROMPTS = [
  { seqId: 1, ids: [1, 103, 107, 61, 78, 132, 83], blocks: [3, 0, 7, 9] },
  { seqId: 2, ids: [1, 20, 30, 40, 50], blocks: [5, 1, 8] },
  { seqId: 3, ids: [1, 99], blocks: [2, 4] },
];

/** Each step's logits: a mixed-length prefill, two decode steps, then a step mixing a prefill chunk with decodes. */
async function run(weights: StageWeights, attention: AttentionForm, kvDtype: KvDtype): Promise<Float32Array[]> {
  const engine = await StageEngine.create(weights, { numBlocks: 10, blockSizeTokens: BLOCK, firstStage: true, lastStage: true, kvDtype, attention });
  const steps: StageChunk[][] = [
    PROMPTS.map((p) => ({ seqId: p.seqId, startPosition: 0, numTokens: p.ids.length, tokenIds: p.ids, blockTable: p.blocks })),
    ...[0, 1].map((step) => PROMPTS.map((p) => ({ seqId: p.seqId, startPosition: p.ids.length + step, numTokens: 1, tokenIds: [30 + step], blockTable: p.blocks }))),
    [
      { seqId: 1, startPosition: 9, numTokens: 1, tokenIds: [44], blockTable: PROMPTS[0].blocks },
      { seqId: 3, startPosition: 4, numTokens: 5, tokenIds: [5, 6, 7, 8, 9], blockTable: PROMPTS[2].blocks },
    ],
  ];
  const logits: Float32Array[] = [];
  for (const step of steps) logits.push((await engine.forward(step)).logits!.slice());
  await engine.close();
  return logits;
}

// Sequences behind one 8-token prefix (blocks 0 and 1, written by sequence 10), then one that
// shares only block 0 and one that shares nothing: split attention reads a shared past once for
// the step (Ps = 8, then 4, then 0), the fused node reads every sequence's past whole.
const PREFIX = [1, 17, 29, 31, 43, 57, 61, 71];
const BEHIND_PREFIX = [
  { seqId: 1, ids: [103, 107, 61, 78, 132], blocks: [0, 1, 2, 3, 4] },
  { seqId: 2, ids: [20, 30, 40], blocks: [0, 1, 5, 6] },
  { seqId: 3, ids: [99], blocks: [0, 1, 7, 8] },
];

async function runBehindPrefix(weights: StageWeights, attention: AttentionForm, kvDtype: KvDtype): Promise<{ logits: Float32Array[]; sharedPast: number[] }> {
  const engine = await StageEngine.create(weights, { numBlocks: 24, blockSizeTokens: BLOCK, firstStage: true, lastStage: true, kvDtype, attention });
  const at = (p: (typeof BEHIND_PREFIX)[number], step: number, token: number): StageChunk => ({ seqId: p.seqId, startPosition: 8 + p.ids.length + step, numTokens: 1, tokenIds: [token], blockTable: p.blocks });
  const steps: StageChunk[][] = [
    [{ seqId: 10, startPosition: 0, numTokens: PREFIX.length, tokenIds: PREFIX, blockTable: [0, 1] }],
    BEHIND_PREFIX.map((p) => ({ seqId: p.seqId, startPosition: 8, numTokens: p.ids.length, tokenIds: p.ids, blockTable: p.blocks })),
    BEHIND_PREFIX.map((p) => at(p, 0, 30)),
    BEHIND_PREFIX.map((p) => at(p, 1, 31)),
    [at(BEHIND_PREFIX[0], 2, 32), { seqId: 4, startPosition: 4, numTokens: 5, tokenIds: [5, 6, 7, 8, 9], blockTable: [0, 9, 10] }],
    [at(BEHIND_PREFIX[1], 2, 33), { seqId: 5, startPosition: 0, numTokens: 6, tokenIds: [1, 2, 3, 4, 5, 6], blockTable: [11, 12] }],
  ];
  const logits: Float32Array[] = [];
  const sharedPast: number[] = [];
  for (const step of steps) {
    const before = engine.sharedPast.positionsRead;
    logits.push((await engine.forward(step)).logits!.slice());
    sharedPast.push(engine.sharedPast.positionsRead - before);
  }
  await engine.close();
  return { logits, sharedPast };
}

/** Each step's logits finite and within float32 summation order of the reference's. */
function expectSameSteps(steps: Float32Array[], reference: Float32Array[]): void {
  expect(steps).toHaveLength(reference.length);
  steps.forEach((l, s) => {
    let worst = 0;
    for (let i = 0; i < l.length; i++) worst = Math.max(worst, Math.abs(l[i] - reference[s][i]));
    expect(worst).toBeLessThan(1e-4);
    expect(l.every(Number.isFinite)).toBe(true);
  });
}

describe("attention forms", () => {
  it("splits where a token's K/V are wide: not stories260K (4 x 8), the bench model (4 x 64) and wider", () => {
    expect(defaultAttentionForm(bundled.config)).toBe("fused");
    expect(defaultAttentionForm({ numKvHeads: 4, headDim: 64 })).toBe("split");
    expect(defaultAttentionForm({ numKvHeads: 8, headDim: 128 })).toBe("split");
  });

  it.each<["bundled" | "gqa", KvDtype]>([
    ["bundled", "fp32"],
    ["gqa", "fp32"],
    ["gqa", "int8"],
    ["bundled", "fp8"],
  ])("%s model, %s KV: split attention computes what the fused node does, step by step", async (model, kvDtype) => {
    const weights = model === "bundled" ? bundled : gqa;
    const [fused, split] = [await run(weights, "fused", kvDtype), await run(weights, "split", kvDtype)];
    expect(split).toHaveLength(4);
    expectSameSteps(split, fused);
  });

  it.each<["bundled" | "gqa", KvDtype]>([
    ["bundled", "fp32"],
    ["gqa", "fp32"],
    ["gqa", "int8"],
    ["gqa", "fp8"],
  ])("%s model, %s KV: a past the step's sequences share is read once and attended as each sequence's own", async (model, kvDtype) => {
    const weights = model === "bundled" ? bundled : gqa;
    const fused = await runBehindPrefix(weights, "fused", kvDtype);
    const split = await runBehindPrefix(weights, "split", kvDtype);
    expect(fused.sharedPast).toEqual([0, 0, 0, 0, 0, 0]);
    // Positions of shared past per step: none alone, 8 behind the prefix, 4 where one shares only block 0, none where one shares nothing.
    expect(split.sharedPast).toEqual([0, 8, 8, 8, 4, 0]);
    expectSameSteps(split.logits, fused.logits);
  });

  it("split attention reproduces greedy.json", async () => {
    const oracle = loadGreedyOracle();
    expect((await runGreedyOracle(bundled, "fp32", oracle, "own", 16, "split")).tokenIds).toEqual(oracle.token_ids);
  });
});
