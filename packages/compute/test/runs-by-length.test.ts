import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeSyntheticModel, type StageWeights, type SyntheticShape } from "@strata/model";
import { runsByLength, runsByPrefix, StageEngine, type StageChunk } from "../src/index.ts";
import { loadWholeModel } from "./support/greedy-kv.ts";

/** A synthetic model's whole weights, written before the enclosing describe's tests and removed after. */
function syntheticWeights(shape: SyntheticShape, seed: number): () => StageWeights {
  const tmp = mkdtempSync(join(tmpdir(), "strata-runs-"));
  let weights: StageWeights;
  beforeAll(async () => {
    await writeSyntheticModel(join(tmp, "m"), shape, seed);
    weights = await loadWholeModel(join(tmp, "m"));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  return () => weights;
}

describe("runsByLength", () => {
  const covers = (runs: number[][], n: number) => expect(runs.flat().sort((a, b) => a - b)).toEqual([...Array(n).keys()]);

  it("keeps equal lengths, and lengths cheap to pad, in one run", () => {
    expect(runsByLength([1, 1, 1, 1], 3)).toEqual([[0, 1, 2, 3]]);
    expect(runsByLength([17, 16, 16, 17], 3)).toEqual([[0, 1, 2, 3]]);
    // A small model: a run costs ~300 padded rows, so mixed prompt lengths still go together.
    expect(runsByLength([60, 12, 33, 1, 45], 300)).toEqual([[0, 1, 2, 3, 4]]);
  });

  it("runs one long prompt chunk apart from decodes and short chunks where a row costs much", () => {
    const lengths = [1, 1, 1040, 1, 16, 1];
    const runs = runsByLength(lengths, 3);
    covers(runs, lengths.length);
    // 3 runs and 1,040 + 16 + 4 rows, against 6 x 1,040 rows in one run.
    expect(runs).toEqual([[2], [4], [0, 1, 3, 5]]);
    expect(runsByLength([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 16], 3)).toEqual([[15], [...Array(15).keys()]]);
    // Where a run costs as much as 80 rows, the 16-token chunk goes with the decodes (160 against 180).
    expect(runsByLength(lengths, 80)).toEqual([[2], [0, 1, 3, 4, 5]]);
  });

  it("is never worse than one run or one run per chunk, on random lengths", () => {
    let seed = 7;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let trial = 0; trial < 200; trial++) {
      const lengths = Array.from({ length: 1 + Math.floor(next() * 20) }, () => 1 + Math.floor(next() ** 3 * 500));
      const runCost = 1 + next() * 100;
      const cost = (runs: number[][]) => runs.reduce((a, run) => a + runCost + run.length * Math.max(...run.map((i) => lengths[i])), 0);
      const runs = runsByLength(lengths, runCost);
      covers(runs, lengths.length);
      for (const run of runs) expect(run).toEqual([...run].sort((a, b) => a - b));
      expect(cost(runs)).toBeLessThanOrEqual(cost([lengths.map((_, i) => i)]) + 1e-9);
      expect(cost(runs)).toBeLessThanOrEqual(cost(lengths.map((_, i) => [i])) + 1e-9);
    }
  });
});

// A model whose padded rows cost more than a run's fixed cost (~140 rows of it a run): a step
// mixing a 300-token prompt chunk with decodes runs them apart, and every chunk's logits are what
// it gets in a step of its own.
describe("a step of mixed lengths", () => {
  const weights = syntheticWeights({ hiddenSize: 128, intermediateSize: 256, numLayers: 2, numHeads: 8, numKvHeads: 2, headDim: 16, vocabSize: 200, maxPositionEmbeddings: 512 }, 3);

  it("runs a long prompt chunk apart from decodes, with each chunk's logits as in a step alone", async () => {
    const long = Array.from({ length: 300 }, (_, i) => 3 + ((i * 37) % 190));
    const short = [
      { seqId: 2, ids: [1, 50, 60, 70], blocks: [30, 31] },
      { seqId: 3, ids: [1, 80, 90], blocks: [32] },
      { seqId: 4, ids: [1, 11, 12, 13, 14], blocks: [33, 34] },
    ];
    const prompts: StageChunk[] = short.map((p) => ({ seqId: p.seqId, startPosition: 0, numTokens: p.ids.length, tokenIds: p.ids, blockTable: p.blocks }));
    const mixed: StageChunk[] = [
      ...short.map((p) => ({ seqId: p.seqId, startPosition: p.ids.length, numTokens: 1, tokenIds: [40], blockTable: p.blocks })),
      { seqId: 1, startPosition: 0, numTokens: long.length, tokenIds: long, blockTable: Array.from({ length: 19 }, (_, i) => i) },
    ];
    const options = { numBlocks: 40, blockSizeTokens: 16, firstStage: true, lastStage: true };
    const together = await StageEngine.create(weights(), options);
    await together.forward(prompts);
    const before = together.runs;
    const logits = (await together.forward(mixed)).logits!;
    expect(together.runs - before).toBe(2);
    const alone = await StageEngine.create(weights(), options);
    for (const c of prompts) await alone.forward([c]);
    for (const [i, c] of mixed.entries()) {
      const own = (await alone.forward([c])).logits!;
      let worst = 0;
      for (let v = 0; v < 200; v++) worst = Math.max(worst, Math.abs(own[v] - logits[i * 200 + v]));
      expect(worst).toBeLessThan(1e-4);
    }
    await together.close();
    await alone.close();
  });
});

describe("runsByPrefix", () => {
  // Blocks of 16: chunk i decodes behind `prefix` (its first blocks), then blocks of its own.
  const behind = (prefix: number[], own: number) => ({ startPosition: prefix.length * 16 + 5, numTokens: 1, blockTable: [...prefix, own] });
  const promptA = Array.from({ length: 64 }, (_, i) => i);
  const promptB = Array.from({ length: 64 }, (_, i) => 100 + i);
  const chunks = [behind(promptA, 200), behind(promptB, 201), behind(promptA, 202), behind(promptB, 203), { startPosition: 0, numTokens: 1, blockTable: [204] }, behind(promptA, 205)];

  it("runs sequences behind different long prompts apart, each prompt read once, the rest together", () => {
    // 2 x 1,024 + 1,024 positions saved at 1/480 of a row each, against 2 more runs of ~3 rows.
    expect(runsByPrefix([0, 1, 2, 3, 4, 5], chunks, 16, 3, 1 / 480)).toEqual([[0, 2, 5], [1, 3], [4]]);
  });

  it("keeps one run where the reads saved cost less than the runs added, or nothing is shared", () => {
    expect(runsByPrefix([0, 1, 2, 3, 4, 5], chunks, 16, 144, 1 / 480)).toEqual([[0, 1, 2, 3, 4, 5]]);
    expect(runsByPrefix([0, 2, 5], chunks, 16, 3, 1 / 480)).toEqual([[0, 2, 5]]); // one prompt: already shared
    expect(runsByPrefix([0, 1, 4], chunks, 16, 3, 1 / 480)).toEqual([[0, 1, 4]]); // no prompt behind two
  });
});

// Split attention on a model whose stage graph reads a shared past: sequences behind two
// different 1,088-token prompts in one step run as a run per prompt, each prompt read once, and
// every chunk's logits are what the fused node (which reads every past whole) gives.
describe("a step behind two prompts", () => {
  const weights = syntheticWeights({ hiddenSize: 256, intermediateSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64, vocabSize: 200, maxPositionEmbeddings: 2048 }, 4);

  it("reads each prompt once for the sequences behind it, with the logits of the fused node", async () => {
    const PROMPT_BLOCKS = 68;
    const prompt = (offset: number) => Array.from({ length: PROMPT_BLOCKS * 16 }, (_, i) => 3 + ((i * 13 + offset) % 190));
    const prompts = [prompt(0), prompt(7)];
    // Sequences 1-10: 5 behind each prompt (its blocks, then 1 block of their own). The reads
    // saved (2 x 4 x 1,088 positions) are worth ~68 rows of this model; a run ~51.
    const behind = Array.from({ length: 10 }, (_, k) => ({ seqId: k + 1, prompt: k % 2, own: 2 * PROMPT_BLOCKS + k }));
    const table = (b: (typeof behind)[number]) => [...Array.from({ length: PROMPT_BLOCKS }, (_, i) => b.prompt * PROMPT_BLOCKS + i), b.own];
    const start = PROMPT_BLOCKS * 16;
    const steps: StageChunk[][] = [
      prompts.map((ids, p) => ({ seqId: 100 + p, startPosition: 0, numTokens: ids.length, tokenIds: ids, blockTable: table({ seqId: 0, prompt: p, own: 0 }).slice(0, PROMPT_BLOCKS) })),
      behind.map((b) => ({ seqId: b.seqId, startPosition: start, numTokens: 3, tokenIds: [10 + b.seqId, 20, 30], blockTable: table(b) })),
      behind.map((b) => ({ seqId: b.seqId, startPosition: start + 3, numTokens: 1, tokenIds: [40 + b.seqId], blockTable: table(b) })),
    ];
    const run = async (attention: "fused" | "split") => {
      const engine = await StageEngine.create(weights(), { numBlocks: 2 * PROMPT_BLOCKS + 10, blockSizeTokens: 16, firstStage: true, lastStage: true, attention });
      const out: { logits: Float32Array; runs: number; shared: number }[] = [];
      for (const step of steps) {
        const [runs, shared] = [engine.runs, engine.sharedPast.positionsRead];
        const logits = (await engine.forward(step)).logits!.slice();
        out.push({ logits, runs: engine.runs - runs, shared: engine.sharedPast.positionsRead - shared });
      }
      await engine.close();
      return out;
    };
    const fused = await run("fused");
    const split = await run("split");
    expect(split.slice(1).map((s) => [s.runs, s.shared])).toEqual([
      [2, 2 * start],
      [2, 2 * start],
    ]);
    expect(fused.slice(1).map((s) => s.runs)).toEqual([1, 1]);
    split.forEach((s, i) => {
      let worst = 0;
      for (let v = 0; v < s.logits.length; v++) worst = Math.max(worst, Math.abs(s.logits[v] - fused[i].logits[v]));
      expect(worst).toBeLessThan(1e-4);
    });
  });
});
