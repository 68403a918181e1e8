import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadLoraAdapter, openModel, writeSyntheticLora, writeSyntheticModel, type LoraAdapter, type ModelConfig, type StageWeights } from "@strata/model";
import { StageEngine, ThreadedStageEngine, createStageCompute, type StageChunk, type StageCompute, type StageEngineOptions } from "../src/index.ts";

// A stage's engine on a thread of its own (the workers' --compute-thread) must compute what it
// computes on the caller's thread, step for step: prompt and decode steps of a two-stage split,
// sequences of different lengths and adapters in one batch; and a failed step must leave the
// ones queued behind it running.

const tmp = mkdtempSync(join(tmpdir(), "strata-engine-thread-"));
const BLOCK = 4;
let modelDir: string;
let config: ModelConfig;

beforeAll(async () => {
  modelDir = join(tmp, "model");
  await writeSyntheticModel(modelDir, { hiddenSize: 64, intermediateSize: 160, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: 96, maxPositionEmbeddings: 64 }, 3);
  const source = await openModel(modelDir);
  config = source.config;
  await source.close();
  await writeSyntheticLora(join(tmp, "adapter"), config, { rank: 4, alpha: 8, seed: 5 });
});
const adapterLayers = (layerStart: number, layerEnd: number): Promise<LoraAdapter> => loadLoraAdapter(join(tmp, "adapter"), config, { layerStart, layerEnd });
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// Fresh weights for every engine: a threaded engine takes its weights' memory with it.
async function stageWeights(layerStart: number, layerEnd: number): Promise<StageWeights> {
  const source = await openModel(modelDir);
  try {
    return await source.loadStage({ layerStart, layerEnd, withEmbedding: layerStart === 0, withHead: layerEnd === source.config.numLayers });
  } finally {
    await source.close();
  }
}

async function twoStages(computeThread: boolean): Promise<[StageCompute, StageCompute]> {
  const opts = (firstStage: boolean): StageEngineOptions => ({ numBlocks: 32, blockSizeTokens: BLOCK, firstStage, lastStage: !firstStage, maxLoraRank: 8, computeThread });
  const first = await createStageCompute(await stageWeights(0, 1), opts(true));
  const last = await createStageCompute(await stageWeights(1, 2), opts(false));
  first.setAdapter("tenant", await adapterLayers(0, 1));
  last.setAdapter("tenant", await adapterLayers(1, 2));
  return [first, last];
}

interface Trace {
  hidden: Float32Array[];
  logits: Float32Array[];
  tokens: number[][];
}

/** Two sequences (one on the adapter) through both stages: their prompts, then greedy decode steps. */
async function run([first, last]: [StageCompute, StageCompute]): Promise<Trace> {
  const seqs = [
    { tokens: [1, 17, 42, 5, 66, 23, 9], blocks: [0, 1, 2, 3, 4], adapter: undefined },
    { tokens: [1, 30, 2], blocks: [8, 9, 10, 11, 12], adapter: "tenant" },
  ];
  const trace: Trace = { hidden: [], logits: [], tokens: [] };
  for (let step = 0; step < 6; step++) {
    const chunks: StageChunk[] = seqs.map((s, i) => {
      const start = step === 0 ? 0 : s.tokens.length - 1;
      return { seqId: i + 1, startPosition: start, numTokens: s.tokens.length - start, tokenIds: s.tokens.slice(start), blockTable: s.blocks, adapter: s.adapter };
    });
    const { hidden } = await first.forward(chunks);
    const out = await last.forward(chunks, hidden);
    trace.hidden.push(hidden!);
    trace.logits.push(out.logits!);
    trace.tokens.push([...out.greedyTokens!]);
    seqs.forEach((s, i) => s.tokens.push(out.greedyTokens![i]));
  }
  return trace;
}

describe("a stage engine on a thread of its own", () => {
  it("computes every step exactly as on the calling thread, across two stages, with an adapter in the batch", async () => {
    const plain = await twoStages(false);
    const threaded = await twoStages(true);
    expect(threaded[0]).toBeInstanceOf(ThreadedStageEngine);
    expect(plain[0]).toBeInstanceOf(StageEngine);
    try {
      const [a, b] = [await run(plain), await run(threaded)];
      expect(b.tokens).toEqual(a.tokens);
      b.hidden.forEach((h, i) => expect(h).toEqual(a.hidden[i]));
      b.logits.forEach((l, i) => expect(l).toEqual(a.logits[i]));
      // The adapter changes what its sequence computes, so the comparison above covers it.
      expect(a.tokens.map((t) => t[1])).not.toEqual(a.tokens.map((t) => t[0]));
      expect(threaded[0].sharedPast).toEqual(plain[0].sharedPast);
    } finally {
      await Promise.all([...plain, ...threaded].map((e) => e.close()));
    }
  });

  it("fails a step with the engine's error and runs the steps queued behind it; close waits for them", async () => {
    const engine = await createStageCompute(await stageWeights(0, 2), { numBlocks: 16, blockSizeTokens: BLOCK, firstStage: true, lastStage: true, maxLoraRank: 8, computeThread: true });
    const chunk = (seqId: number, blocks: number[], adapterId?: string): StageChunk => ({ seqId, startPosition: 0, numTokens: 3, tokenIds: [1, 7, 9], blockTable: blocks, adapter: adapterId });
    // Queued back to back: the thread takes them in order while this thread goes on.
    const good = engine.forward([chunk(1, [0])]);
    const bad = engine.forward([chunk(2, [1], "nobody")]);
    const after = engine.forward([chunk(3, [2])]);
    await expect(bad).rejects.toThrow(/unknown LoRA adapter "nobody"/);
    await expect(bad).rejects.toMatchObject({ name: "RangeError" });
    const [g, a] = await Promise.all([good, after]);
    expect(a.greedyTokens).toEqual(g.greedyTokens);
    // Checked here, as the engine would: it would only fail on the thread, unseen.
    const tooWide = { ...(await adapterLayers(0, 2)), rank: 9 };
    expect(() => engine.setAdapter("too-wide", tooWide)).toThrow(/exceeds the stage's max LoRA rank 8/);
    expect(engine.removeAdapter("never-set")).toBe(false);
    const last = engine.forward([chunk(4, [3])]);
    await engine.close();
    expect((await last).greedyTokens).toEqual(g.greedyTokens);
    await expect(engine.forward([chunk(5, [4])])).rejects.toThrow(/closed/);
  });

  it("a thread that dies fails the steps waiting on it and every later one with why, and says so", async () => {
    const engine = await createStageCompute(await stageWeights(0, 2), { numBlocks: 16, blockSizeTokens: BLOCK, firstStage: true, lastStage: true, computeThread: true });
    const chunk = (seqId: number): StageChunk => ({ seqId, startPosition: 0, numTokens: 3, tokenIds: [1, 7, 9], blockTable: [seqId] });
    expect(engine.failure).toBeUndefined();
    // Steps queued on the thread, then it dies (as an out-of-memory kill would) before the last.
    const queued = Array.from({ length: 40 }, (_, i) => engine.forward([chunk(i % 8)]));
    await (engine as unknown as { thread: Worker }).thread.terminate();
    await expect(queued.at(-1)).rejects.toThrow(/compute thread exited/);
    await Promise.allSettled(queued);
    expect(engine.failure?.message).toMatch(/compute thread exited/);
    await expect(engine.forward([chunk(2)])).rejects.toThrow(/compute thread exited/);
    await engine.close();
  });
});
