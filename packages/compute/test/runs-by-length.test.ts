import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeSyntheticModel, type StageWeights } from "@strata/model";
import { runsByLength, StageEngine, type StageChunk } from "../src/index.ts";
import { loadWholeModel } from "./support/greedy-kv.ts";

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
  const tmp = mkdtempSync(join(tmpdir(), "strata-runs-"));
  let weights: StageWeights;
  beforeAll(async () => {
    await writeSyntheticModel(join(tmp, "m"), { hiddenSize: 128, intermediateSize: 256, numLayers: 2, numHeads: 8, numKvHeads: 2, headDim: 16, vocabSize: 200, maxPositionEmbeddings: 512 }, 3);
    weights = await loadWholeModel(join(tmp, "m"));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

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
    const together = await StageEngine.create(weights, options);
    await together.forward(prompts);
    const before = together.runs;
    const logits = (await together.forward(mixed)).logits!;
    expect(together.runs - before).toBe(2);
    const alone = await StageEngine.create(weights, options);
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
