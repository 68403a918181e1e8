import { beforeAll, describe, expect, it } from "vitest";
import * as ort from "onnxruntime-node";
import { argmax, type StageWeights } from "@strata/model";
import { GraphBuilder } from "../src/graph-builder.ts";
import { createSessionRunner } from "../src/session-runner.ts";
import { StageEngine, type StageChunk } from "../src/index.ts";
import { loadWholeModel } from "./support/greedy-kv.ts";

// The last stage's graph picks each row's greedy token itself, so a greedy step need not fetch
// its logits. That token must be the one argmax (@strata/sampling) picks from the logits, ties
// included: the lowest id among equal logits (as argmax here, and sampleToken at temperature 0).

/** stories260K with LM head rows in equal pairs: every logit ties with its neighbour's. */
let tiedPairs: StageWeights;
beforeAll(async () => {
  const weights = await loadWholeModel();
  const { vocabSize: V, hiddenSize: D } = weights.config;
  const lmHead = Float32Array.from(weights.lmHead!);
  for (let id = 1; id < V; id += 2) lmHead.copyWithin(id * D, (id - 1) * D, id * D);
  tiedPairs = { ...weights, lmHead };
});

/** A prompt chunk of 5 tokens, then steps of one decode each for it and two one-token prompts. */
function steps(): StageChunk[][] {
  const prompt: StageChunk = { seqId: 1, startPosition: 0, numTokens: 5, tokenIds: [1, 40, 41, 42, 43], blockTable: [0, 1] };
  const step = (p: number): StageChunk[] => [
    { seqId: 1, startPosition: 5 + p, numTokens: 1, tokenIds: [44 + p], blockTable: [0, 1, 2] },
    { seqId: 2 + 2 * p, startPosition: 0, numTokens: 1, tokenIds: [1], blockTable: [3 + 2 * p] },
    { seqId: 3 + 2 * p, startPosition: 0, numTokens: 1, tokenIds: [1], blockTable: [4 + 2 * p] },
  ];
  return [[prompt], step(0), step(1), step(2)];
}

describe("the last stage's greedy tokens", () => {
  it("are argmax of each row's logits, the lower id where two tie", async () => {
    const engine = await StageEngine.create(tiedPairs, { numBlocks: 16, blockSizeTokens: 4, firstStage: true, lastStage: true });
    let rows = 0;
    for (const step of steps()) {
      const { logits, greedyTokens } = await engine.forward(step);
      const V = tiedPairs.config.vocabSize;
      step.forEach((_, i) => {
        const best = argmax(logits!.subarray(i * V, (i + 1) * V));
        // The pairing makes the best logit a tie, so a pick of the higher id would show here.
        expect(logits![i * V + best + 1]).toBe(logits![i * V + best]);
        expect(greedyTokens![i]).toBe(best);
        rows++;
      });
    }
    expect(rows).toBe(10);
    await engine.close();
  });

  it("come without the logits when the step fetches none, the same as with them", async () => {
    const withLogits = await StageEngine.create(tiedPairs, { numBlocks: 16, blockSizeTokens: 4, firstStage: true, lastStage: true });
    const without = await StageEngine.create(tiedPairs, { numBlocks: 16, blockSizeTokens: 4, firstStage: true, lastStage: true });
    for (const step of steps()) {
      const a = await withLogits.forward(step);
      const b = await without.forward(step, undefined, { logits: false });
      expect(b.logits).toBeUndefined();
      expect(Array.from(b.greedyTokens!)).toEqual(Array.from(a.greedyTokens!));
    }
    await Promise.all([withLogits.close(), without.close()]);
  });
});

describe("session runner", () => {
  it("fetches only the outputs named", async () => {
    const g = new GraphBuilder();
    const a = g.input("a", "float", [2]);
    const b = g.input("b", "float", [2]);
    g.output(g.node("Add", [a, b]), "sum", "float", [2]);
    g.output(g.node("Mul", [a, b]), "product", "float", [2]);
    const runner = await createSessionRunner(g.toBytes("two"), { executionProviders: ["cpu"] });
    const f32 = (...v: number[]) => new ort.Tensor("float32", Float32Array.from(v), [v.length]);
    const out = await runner.run({ a: f32(2, 3), b: f32(10, 20) }, ["product"]);
    expect(Object.keys(out)).toEqual(["product"]);
    expect(Array.from(out.product.data as Float32Array)).toEqual([20, 60]);
    const all = await runner.run({ a: f32(2, 3), b: f32(10, 20) });
    expect(Object.keys(all).sort()).toEqual(["product", "sum"]);
    await runner.close();
  });
});
