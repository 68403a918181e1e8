import { describe, expect, it } from "vitest";
import { allPartitions, balancedPartition, layerMacsPerToken, lmHeadMacsPerToken, type LayerCostShape } from "../src/index.ts";

const stories: LayerCostShape = { hiddenSize: 64, intermediateSize: 172, numLayers: 5, numHeads: 8, numKvHeads: 4, headDim: 8, vocabSize: 512 };
const bench: LayerCostShape = { hiddenSize: 512, intermediateSize: 1408, numLayers: 8, numHeads: 8, numKvHeads: 4, headDim: 64, vocabSize: 32000 };

function maxStageCost(shape: LayerCostShape, partition: Array<[number, number]>): number {
  return Math.max(...partition.map(([a, b]) => (b - a) * layerMacsPerToken(shape) + (b === shape.numLayers ? lmHeadMacsPerToken(shape) : 0)));
}

describe("balancedPartition", () => {
  it("counts projection and MLP multiply-adds per layer, and the LM head", () => {
    expect(layerMacsPerToken(stories)).toBe(64 * 16 * 8 + 64 * 64 + 3 * 64 * 172);
    expect(lmHeadMacsPerToken(bench)).toBe(512 * 32000);
  });

  it("moves layers off the last stage when the LM head is heavy", () => {
    // The 32k-vocabulary head costs about 5.5 layers: 7 + 1 balances, an even 4 + 4 does not.
    expect(balancedPartition(bench, 2)).toEqual([[0, 7], [7, 8]]);
  });

  it("is the minimum over every partition of the busiest stage's cost", () => {
    for (const shape of [stories, bench, { ...bench, numLayers: 13 }]) {
      for (let stages = 1; stages <= Math.min(5, shape.numLayers); stages++) {
        const best = Math.min(...allPartitions(shape.numLayers, stages).map((p) => maxStageCost(shape, p)));
        expect(maxStageCost(shape, balancedPartition(shape, stages))).toBe(best);
      }
    }
  });

  it("keeps the even split where the head is light (the bundled model)", () => {
    expect(balancedPartition(stories, 2)).toEqual([[0, 3], [3, 5]]);
    expect(balancedPartition(stories, 3)).toEqual([[0, 2], [2, 4], [4, 5]]);
  });
});
