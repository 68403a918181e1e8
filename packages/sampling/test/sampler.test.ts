import { describe, expect, it } from "vitest";
import { argmax, logSoftmax, sampleToken, SeededRandom } from "../src/index.ts";

const logits = new Float32Array([1, 3, 2, 0.5]);

describe("sampler", () => {
  it("temperature 0 is argmax", () => {
    expect(argmax(logits)).toBe(1);
    expect(sampleToken(logits, { temperature: 0, topP: 1, topK: 0 }, 0.99)).toBe(1);
  });

  it("top_k 1 is argmax at any temperature and draw", () => {
    for (const r of [0, 0.3, 0.999]) expect(sampleToken(logits, { temperature: 5, topP: 1, topK: 1 }, r)).toBe(1);
  });

  it("inverse CDF over the sorted distribution", () => {
    const p = { temperature: 1, topP: 1, topK: 0 };
    const probs = Array.from(logSoftmax(logits), Math.exp); // order by logit: ids 1, 2, 0, 3
    expect(sampleToken(logits, p, 0)).toBe(1);
    expect(sampleToken(logits, p, probs[1] + 1e-6)).toBe(2);
    expect(sampleToken(logits, p, probs[1] + probs[2] + 1e-6)).toBe(0);
    expect(sampleToken(logits, p, 0.999999)).toBe(3);
  });

  it("top_p keeps the smallest head reaching the mass", () => {
    const probs = Array.from(logSoftmax(logits), Math.exp);
    const p = { temperature: 1, topP: probs[1] + 0.01, topK: 0 }; // ids 1 and 2 kept
    for (const r of [0, 0.5, 0.999]) expect([1, 2]).toContain(sampleToken(logits, p, r));
    expect(sampleToken(logits, p, 0.999)).toBe(2);
  });

  it("seeded random repeats and stays in [0, 1)", () => {
    const a = new SeededRandom(42);
    const b = new SeededRandom(42);
    const draws = Array.from({ length: 1000 }, () => a.next());
    expect(draws).toEqual(Array.from({ length: 1000 }, () => b.next()));
    expect(Math.min(...draws)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...draws)).toBeLessThan(1);
    expect(new SeededRandom(43).next()).not.toBe(new SeededRandom(42).next());
  });
});
