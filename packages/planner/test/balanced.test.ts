import { describe, expect, it } from "vitest";
import {
  allPartitions,
  balancedPartition,
  DEFAULT_PLAN_LOAD,
  layerDecodeBytes,
  layerWeightCount,
  lmHeadDecodeBytes,
  lmHeadWeightCount,
  PartitionError,
  type LayerCostShape,
  type PlanLoad,
} from "../src/index.ts";

const stories: LayerCostShape = { hiddenSize: 64, intermediateSize: 172, numLayers: 5, numHeads: 8, numKvHeads: 4, headDim: 8, vocabSize: 512 };
const bench: LayerCostShape = { hiddenSize: 512, intermediateSize: 1408, numLayers: 8, numHeads: 8, numKvHeads: 4, headDim: 64, vocabSize: 32000 };
const load = (batch: number, contextTokens: number, kvBytesPerElement = 4): PlanLoad => ({ batch, contextTokens, kvBytesPerElement, weightBytesPerElement: 4 });

function maxStageCost(shape: LayerCostShape, partition: Array<[number, number]>, plan: PlanLoad): number {
  return Math.max(...partition.map(([a, b]) => (b - a) * layerDecodeBytes(shape, plan) + (b === shape.numLayers ? lmHeadDecodeBytes(shape, plan) : 0)));
}

describe("balancedPartition", () => {
  it("counts a layer's projection and MLP weights, and the LM head's", () => {
    expect(layerWeightCount(stories)).toBe(64 * 16 * 8 + 64 * 64 + 3 * 64 * 172);
    expect(lmHeadWeightCount(bench)).toBe(512 * 32000);
  });

  it("counts a decode step's bytes: weights once per micro-batch, past K/V once per sequence", () => {
    const weights = layerWeightCount(bench) * 4;
    const kvPerSequence = 1000 * 2 * 4 * 64 * 4; // context x K and V x KV heads x head dim x fp32
    expect(layerDecodeBytes(bench, load(1, 1000))).toBe(weights + kvPerSequence);
    expect(layerDecodeBytes(bench, load(16, 1000))).toBe(weights + 16 * kvPerSequence);
    expect(layerDecodeBytes(bench, load(16, 1000, 1))).toBe(weights + 4 * kvPerSequence);
    expect(lmHeadDecodeBytes(bench, load(16, 1000))).toBe(512 * 32000 * 4);
    expect(lmHeadDecodeBytes(bench, load(64, 4000))).toBe(512 * 32000 * 4);
  });

  it("counts a shared prefix's K/V once per micro-batch, each sequence's own past once per sequence", () => {
    const weights = layerWeightCount(bench) * 4;
    const kvPerToken = 2 * 4 * 64 * 4;
    expect(layerDecodeBytes(bench, { ...load(16, 1056), sharedPrefixTokens: 1024 })).toBe(weights + (16 * 32 + 1024) * kvPerToken);
    expect(layerDecodeBytes(bench, { ...load(16, 1056), sharedPrefixTokens: 0 })).toBe(layerDecodeBytes(bench, load(16, 1056)));
    // Behind a shared 1,024-token system prompt a layer reads 11.6 MB of weights, 2 MB of that
    // prompt and 1 MB of the sequences' own pasts: the 65.5 MB head outweighs 4 layers. At the
    // same context, each sequence's own, past K/V make a layer weigh more than the head.
    expect(balancedPartition(bench, 2, { ...load(16, 1056), sharedPrefixTokens: 1024 })).toEqual([[0, 6], [6, 8]]);
    expect(balancedPartition(bench, 2, load(16, 1056))).toEqual([[0, 5], [5, 8]]);
    expect(balancedPartition(bench, 2, load(16, 800))).toEqual([[0, 5], [5, 8]]);
  });

  it("refuses a shared prefix longer than the context or not a whole number of tokens", () => {
    expect(() => balancedPartition(bench, 2, { ...load(16, 100), sharedPrefixTokens: 101 })).toThrow(PartitionError);
    expect(() => balancedPartition(bench, 2, { ...load(16, 100), sharedPrefixTokens: -1 })).toThrow(/whole number from 0 to the context/);
    expect(() => balancedPartition(bench, 2, { ...load(16, 100), sharedPrefixTokens: 1.5 })).toThrow(PartitionError);
    expect(balancedPartition(bench, 2, { ...load(16, 100), sharedPrefixTokens: 100 })).toHaveLength(2);
  });

  it("moves layers off the last stage when the LM head is heavy, fewer the longer the context", () => {
    // Measured fastest over 2 workers at 2 micro-batches of 16 (see balancedPartition).
    expect(balancedPartition(bench, 2, load(16, 48))).toEqual([[0, 6], [6, 8]]);
    expect(balancedPartition(bench, 2, load(16, 512))).toEqual([[0, 5], [5, 8]]);
    expect(balancedPartition(bench, 2, load(16, 1040))).toEqual([[0, 5], [5, 8]]);
    expect(balancedPartition(bench, 2)).toEqual(balancedPartition(bench, 2, DEFAULT_PLAN_LOAD));
    // Past K/V dwarf the head's weights at long contexts and large batches: the even split.
    expect(balancedPartition(bench, 2, load(128, 4096))).toEqual([[0, 4], [4, 8]]);
    // An int8 cache reads a quarter of the bytes, so the head weighs more again.
    expect(balancedPartition(bench, 2, load(16, 512, 1))).toEqual([[0, 6], [6, 8]]);
  });

  it("is the minimum over every partition of the busiest stage's cost", () => {
    for (const shape of [stories, bench, { ...bench, numLayers: 13 }]) {
      for (const plan of [load(1, 16), load(16, 1024), load(64, 256, 1), { ...load(16, 1056), sharedPrefixTokens: 1024 }]) {
        for (let stages = 1; stages <= Math.min(5, shape.numLayers); stages++) {
          const best = Math.min(...allPartitions(shape.numLayers, stages).map((p) => maxStageCost(shape, p, plan)));
          expect(maxStageCost(shape, balancedPartition(shape, stages, plan), plan)).toBe(best);
        }
      }
    }
  });

  it("keeps the even split where the head is light (the bundled model)", () => {
    expect(balancedPartition(stories, 2)).toEqual([[0, 3], [3, 5]]);
    expect(balancedPartition(stories, 3)).toEqual([[0, 2], [2, 4], [4, 5]]);
  });
});
