import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kvBytesPerBlock } from "@strata/kv";
import { openModel, writeSyntheticModel, type StageWeights } from "@strata/model";
import { availableMemoryBytes, cgroupHeadroomBytes, createStageCompute, memAvailableBytes, StageEngine } from "../src/index.ts";

// A stage engine's memory: its KV cache sized from its host's (the workers' kv_memory_fraction),
// whole blocks of the stage's own layers in that fraction of what is available once its session
// is built; and no second copy of its weights beside the session's.

describe("available memory", () => {
  it("reads MemAvailable from /proc/meminfo", () => {
    const meminfo = "MemTotal:       24568844 kB\nMemFree:         1036280 kB\nMemAvailable:   20486512 kB\nBuffers:          123 kB\n";
    expect(memAvailableBytes(meminfo)).toBe(20486512 * 1024);
    expect(memAvailableBytes("MemTotal: 1 kB\n")).toBeUndefined();
    expect(memAvailableBytes(undefined)).toBeUndefined();
  });

  it("takes a cgroup v2 limit less its usage, none where the limit is max", () => {
    expect(cgroupHeadroomBytes("1073741824\n", "268435456\n")).toBe(805306368);
    expect(cgroupHeadroomBytes("max\n", "268435456\n")).toBeUndefined();
    expect(cgroupHeadroomBytes("100\n", "200\n")).toBe(0);
    expect(cgroupHeadroomBytes(undefined, "1")).toBeUndefined();
  });

  it("is positive and no more than the host holds", () => {
    const available = availableMemoryBytes();
    expect(available).toBeGreaterThan(0);
    expect(available).toBeLessThanOrEqual(totalmem());
  });
});

describe("a stage engine sized by kvMemoryFraction", () => {
  const tmp = mkdtempSync(join(tmpdir(), "strata-kv-fraction-"));
  const config = { hiddenSize: 64, intermediateSize: 160, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: 96, maxPositionEmbeddings: 64 };
  beforeAll(() => writeSyntheticModel(tmp, config, 3));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const weights = async (layerStart: number, layerEnd: number): Promise<StageWeights> => {
    const source = await openModel(tmp);
    try {
      return await source.loadStage({ layerStart, layerEnd, withEmbedding: layerStart === 0, withHead: layerEnd === config.numLayers });
    } finally {
      await source.close();
    }
  };
  const blockBytes = (layers: number) => kvBytesPerBlock({ numLayers: layers, numKvHeads: 2, headDim: 16, blockSizeTokens: 16, kvDtype: "fp32" });
  const fraction = 0.001;

  it("holds the whole blocks of its layers that the fraction of available memory buys, on a thread too", async () => {
    for (const computeThread of [false, true]) {
      const before = availableMemoryBytes();
      const [one, three] = [
        await createStageCompute(await weights(0, 1), { kvMemoryFraction: fraction, blockSizeTokens: 16, firstStage: true, lastStage: false, computeThread }),
        await createStageCompute(await weights(1, 4), { kvMemoryFraction: fraction, blockSizeTokens: 16, firstStage: false, lastStage: true, computeThread }),
      ];
      const after = availableMemoryBytes();
      try {
        // Available memory moves while the engines are built: within it, and within 10% of
        // it here (hundreds of MB against a few MB of engines).
        for (const [engine, layers] of [[one, 1], [three, 3]] as const) {
          expect(engine.numBlocks).toBeGreaterThan(0);
          expect(engine.numBlocks * blockBytes(layers)).toBeLessThanOrEqual(fraction * Math.max(before, after) * 1.1);
          expect(engine.numBlocks * blockBytes(layers)).toBeGreaterThanOrEqual(fraction * Math.min(before, after) * 0.9 - blockBytes(layers));
        }
        // A stage with 3 layers' K/V per block gets about a third of the blocks.
        expect(one.numBlocks / three.numBlocks).toBeGreaterThan(2.7);
        expect(one.numBlocks / three.numBlocks).toBeLessThan(3.3);
      } finally {
        await one.close();
        await three.close();
      }
    }
  });

  it("refuses a fraction outside (0, 1] or no sizing at all, before building anything", async () => {
    const w = await weights(0, 1);
    const opts = { blockSizeTokens: 16, firstStage: true, lastStage: false };
    await expect(StageEngine.create(w, { ...opts, kvMemoryFraction: 0 })).rejects.toThrow(/kvMemoryFraction must be more than 0 and at most 1, got 0/);
    await expect(StageEngine.create(w, { ...opts, kvMemoryFraction: 1.5 })).rejects.toThrow(/got 1.5/);
    await expect(StageEngine.create(w, opts)).rejects.toThrow(/needs numBlocks or kvMemoryFraction/);
    const sized = await StageEngine.create(w, { ...opts, numBlocks: 7 });
    expect(sized.numBlocks).toBe(7);
    await sized.close();
  });
});

describe("a stage engine's memory", () => {
  it("keeps no copy of the weight arrays it was built from: onnxruntime's session holds them", async () => {
    // vitest.config.ts starts test processes with --expose-gc.
    const gc = globalThis.gc;
    if (!gc) throw new Error("run with --expose-gc (vitest.config.ts passes it)");
    const tmp = mkdtempSync(join(tmpdir(), "strata-engine-weights-"));
    try {
      await writeSyntheticModel(tmp, { hiddenSize: 64, intermediateSize: 160, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: 96, maxPositionEmbeddings: 64 }, 3);
      const source = await openModel(tmp);
      let weights: StageWeights | undefined = await source.loadStage({ layerStart: 0, layerEnd: 2, withEmbedding: true, withHead: true });
      await source.close();
      // An MLP matrix, which the engine's rotate-half layout takes as it is.
      const mlp = new WeakRef(weights.layers[0].wGate);
      const engine = await StageEngine.create(weights, { numBlocks: 4, blockSizeTokens: 16, firstStage: true, lastStage: true });
      weights = undefined;
      for (let i = 0; i < 5 && mlp.deref(); i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
        gc();
      }
      expect(mlp.deref()).toBeUndefined();
      // Still computes from the session's own copy.
      const out = await engine.forward([{ seqId: 1, startPosition: 0, numTokens: 2, tokenIds: [3, 4], blockTable: [0] }]);
      expect(out.greedyTokens).toHaveLength(1);
      await engine.close();
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
