import { describe, expect, it } from "vitest";
import { argmax, logSoftmax, sampleToken, SeededRandom } from "../src/index.ts";

const logits = new Float32Array([1, 3, 2, 0.5]);

/** The definition: sort the whole vocabulary, keep the top k and the top_p head, walk it. */
function sortedReference(logits: Float32Array, p: { temperature: number; topP: number; topK: number }, random: number): number {
  const ids = Array.from(logits, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const k = p.topK > 0 ? Math.min(p.topK, ids.length) : ids.length;
  const weights = ids.slice(0, k).map((id) => Math.exp((logits[id] - logits[ids[0]]) / p.temperature));
  const total = weights.reduce((a, w) => a + w, 0);
  let kept = k;
  if (p.topP > 0 && p.topP < 1) {
    let mass = 0;
    kept = weights.findIndex((w) => (mass += w / total) >= p.topP) + 1 || k;
  }
  let target = random * weights.slice(0, kept).reduce((a, w) => a + w, 0);
  for (let i = 0; i < kept; i++) if ((target -= weights[i]) < 0) return ids[i];
  return ids[kept - 1];
}

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

  it("draws what sorting the whole vocabulary draws, on flat, peaked, tied and negative logits", () => {
    const rng = new SeededRandom(9);
    const shapes: Record<string, (i: number) => number> = {
      flat: () => rng.next() * 4 - 2,
      peaked: (i) => (i % 997 === 3 ? 12 - (i % 5) : (rng.next() - 0.5) * 6),
      tied: (i) => Math.floor(i / 7) % 3,
      negative: () => -50 - rng.next() * 30,
    };
    const params = [
      { temperature: 0.8, topP: 0.95, topK: 0 },
      { temperature: 1, topP: 1, topK: 0 },
      { temperature: 0.7, topP: 1, topK: 40 },
      { temperature: 1.3, topP: 0.5, topK: 100 },
      { temperature: 0.05, topP: 0.9, topK: 0 },
    ];
    let draws = 0;
    for (const [name, shape] of Object.entries(shapes)) {
      for (const vocab of [3, 512, 5000]) {
        const row = Float32Array.from({ length: vocab }, (_, i) => shape(i));
        for (const p of params) {
          for (let d = 0; d < 20; d++) {
            const r = rng.next();
            expect(sampleToken(row, p, r), `${name}, vocab ${vocab}, ${JSON.stringify(p)}, draw ${r}`).toBe(sortedReference(row, p, r));
            draws++;
          }
        }
      }
    }
    expect(draws).toBe(4 * 3 * 5 * 20);
  });

  it("draws what sorting draws on a flat 32,000-token row, where the walk crosses many bands and the top_p edge falls inside one", () => {
    const rng = new SeededRandom(11);
    const row = Float32Array.from({ length: 32000 }, () => rng.next() * 4 - 2);
    for (const p of [{ temperature: 0.8, topP: 0.95, topK: 0 }, { temperature: 1, topP: 1, topK: 0 }, { temperature: 2, topP: 0.3, topK: 0 }]) {
      const draws = [0, 0.5, 0.999999, ...Array.from({ length: 7 }, () => rng.next())];
      for (const r of draws) expect(sampleToken(row, p, r), `${JSON.stringify(p)}, draw ${r}`).toBe(sortedReference(row, p, r));
    }
  });

  it("takes the +Infinity logit, the lowest id among several", () => {
    const row = new Float32Array([0, Infinity, 3, Infinity]);
    for (const r of [0, 0.5, 0.99]) expect(sampleToken(row, { temperature: 1, topP: 0.9, topK: 0 }, r)).toBe(1);
  });

  it("returns a token for a row with NaN logits instead of searching for the rest of it", () => {
    const row = new Float32Array([0.5, NaN, 2, NaN]);
    for (const p of [{ temperature: 1, topP: 1, topK: 0 }, { temperature: 1, topP: 0.9, topK: 3 }]) expect([0, 2]).toContain(sampleToken(row, p, 0.99));
  });

  it("reads a row at an offset in a batch of rows", () => {
    const rows = new Float32Array([9, 9, 9, 1, 3, 2, 0.5, 9]);
    const p = { temperature: 1, topP: 1, topK: 0 };
    for (const r of [0, 0.5, 0.99]) expect(sampleToken(rows, p, r, 3, 4)).toBe(sampleToken(logits, p, r));
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
