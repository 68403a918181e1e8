import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BUNDLED_HF_MODEL_DIR, BUNDLED_MODEL_DIR, openModel, referenceForward, referenceGenerateGreedy, toRotateHalfLayout, type StageWeights } from "../src/index.ts";

const greedy = JSON.parse(readFileSync(join(BUNDLED_MODEL_DIR, "greedy.json"), "utf8")) as { prompt_token_ids: number[]; steps: number; token_ids: number[] };

async function loadAll(dir: string): Promise<StageWeights> {
  const src = await openModel(dir);
  try {
    return await src.loadStage({ layerStart: 0, layerEnd: src.config.numLayers, withEmbedding: true, withHead: true });
  } finally {
    await src.close();
  }
}

const llama2c = await loadAll(BUNDLED_MODEL_DIR);
const hf = await loadAll(BUNDLED_HF_MODEL_DIR);

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe("reference forward pass", () => {
  it("reproduces greedy.json from the llama2.c folder", () => {
    expect(referenceGenerateGreedy(llama2c.config, llama2c, greedy.prompt_token_ids, greedy.steps)).toEqual(greedy.token_ids);
  });

  it("reproduces greedy.json from the Hugging Face folder", () => {
    expect(hf.config.ropeStyle).toBe("rotate-half");
    expect(referenceGenerateGreedy(hf.config, hf, greedy.prompt_token_ids, greedy.steps)).toEqual(greedy.token_ids);
  });

  it("counts prompt positions in the steps and stops before an end token", () => {
    expect(referenceGenerateGreedy(llama2c.config, llama2c, greedy.prompt_token_ids, 2)).toEqual(greedy.prompt_token_ids.slice(0, 3));
    expect(referenceGenerateGreedy(llama2c.config, llama2c, greedy.prompt_token_ids, 6)).toEqual(greedy.token_ids.slice(0, 7));
    // greedy.json's 11th token (298) is first generated at position 10; as an end token it stops the run there.
    expect(greedy.token_ids[10]).toBe(298);
    const config = { ...llama2c.config, eosTokenIds: [298] };
    expect(referenceGenerateGreedy(config, { ...llama2c, config }, greedy.prompt_token_ids, greedy.steps)).toEqual(greedy.token_ids.slice(0, 10));
  });

  it("gives the same logits with rotate-half RoPE on permuted weights", () => {
    const rotated = toRotateHalfLayout(llama2c);
    expect(rotated.config.ropeStyle).toBe("rotate-half");
    expect(llama2c.config.ropeStyle).toBe("interleaved");
    const ids = greedy.token_ids.slice(0, 24);
    const a = referenceForward(llama2c.config, llama2c, ids);
    const b = referenceForward(rotated.config, rotated, ids);
    expect(a.length).toBe(ids.length * 512);
    expect(maxAbsDiff(a, b)).toBeLessThan(1e-5);
    // The permutation is exactly the one the Hugging Face folder was written with.
    for (let l = 0; l < 5; l++) {
      expect(rotated.layers[l].wq).toEqual(hf.layers[l].wq);
      expect(rotated.layers[l].wk).toEqual(hf.layers[l].wk);
      expect(rotated.layers[l].wv).toEqual(llama2c.layers[l].wv);
    }
    // Rotate-half weights pass through untouched.
    expect(toRotateHalfLayout(hf)).toBe(hf);
    expect(maxAbsDiff(b, referenceForward(hf.config, hf, ids))).toBeLessThan(1e-5);
  });

  it("makes the logits of a prefix independent of what follows (causal)", () => {
    const ids = greedy.token_ids.slice(0, 12);
    const full = referenceForward(llama2c.config, llama2c, ids);
    const prefix = referenceForward(llama2c.config, llama2c, ids.slice(0, 5));
    expect(maxAbsDiff(full.subarray(0, 5 * 512), prefix)).toBe(0);
  });

  it("limits attention to the sliding window", () => {
    const ids = greedy.token_ids.slice(0, 10);
    const windowed = { ...llama2c.config, slidingWindow: 4 };
    const full = referenceForward(llama2c.config, llama2c, ids);
    const win = referenceForward(windowed, { ...llama2c, config: windowed }, ids);
    // Identical while the window covers the whole prefix, different after.
    expect(maxAbsDiff(full.subarray(0, 4 * 512), win.subarray(0, 4 * 512))).toBe(0);
    expect(maxAbsDiff(full.subarray(9 * 512), win.subarray(9 * 512))).toBeGreaterThan(1e-3);
    // In a one-layer model, position 9 sees only tokens 6..9; RoPE scores depend on relative positions only,
    // so it matches a plain forward over those four tokens.
    const one = { ...llama2c.config, numLayers: 1 };
    const oneWeights = { ...llama2c, config: one, layerEnd: 1, layers: llama2c.layers.slice(0, 1) };
    const oneWin = { ...one, slidingWindow: 4 };
    const windowedTail = referenceForward(oneWin, { ...oneWeights, config: oneWin }, ids).subarray(9 * 512);
    const tail = referenceForward(one, oneWeights, ids.slice(6)).subarray(3 * 512);
    expect(maxAbsDiff(windowedTail, tail)).toBeLessThan(1e-5);
  });

  it("rejects partial weights and bad token ids", async () => {
    const src = await openModel(BUNDLED_MODEL_DIR);
    const part = await src.loadStage({ layerStart: 0, layerEnd: 2, withEmbedding: true, withHead: true });
    await src.close();
    expect(() => referenceForward(part.config, part, [1])).toThrow(/all 5 layers/);
    expect(() => referenceForward(llama2c.config, llama2c, [512])).toThrow(RangeError);
  });
});
