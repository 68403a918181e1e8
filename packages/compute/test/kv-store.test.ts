import { describe, expect, it } from "vitest";
import { f16BitsToF32, f32ToF16Bits } from "@strata/model";
import { E4M3_DECODE, E4M3_MAX, KvPool, KvStore, ScaledPool, e4m3FromF32Bits, type KvChunk, type KvPoolShape } from "../src/index.ts";
import type { KvDtype } from "@strata/kv";

const SHAPE: KvPoolShape = { numBlocks: 8, blockSizeTokens: 4, numKvHeads: 2, headDim: 8 };
const ROW = SHAPE.numKvHeads * SHAPE.headDim;

function lcg(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return a / 4294967296;
  };
}

/** Values with magnitudes spread over [1e-2, 8) and both signs, so every dtype's range is exercised. */
function randomValues(n: number, seed: number): Float32Array {
  const rnd = lcg(seed);
  return Float32Array.from({ length: n }, () => (rnd() < 0.5 ? -1 : 1) * 10 ** (rnd() * 2.9 - 2));
}

const f32Bits = (x: number): number => new Uint32Array(Float32Array.of(x).buffer)[0];

interface Seq {
  blockTable: number[];
  tokens: Float32Array; // [length, kvHeads, headDim]
}

/**
 * Writes each sequence through `pool` in the given chunk sizes (several sequences per scatter,
 * padded to the longest chunk, as the engine does), then gathers every sequence's whole past.
 */
function roundTrip(pool: KvPool, seqs: Seq[], chunkSizes: number[]): Float32Array[] {
  const written = seqs.map(() => 0);
  for (const size of chunkSizes) {
    const chunks: KvChunk[] = seqs.map((s, i) => ({
      startPosition: written[i],
      numTokens: Math.min(size, s.tokens.length / ROW - written[i]),
      blockTable: s.blockTable,
    }));
    const live = chunks.map((c, i) => [c, i] as const).filter(([c]) => c.numTokens > 0);
    if (live.length === 0) continue;
    const T = Math.max(...live.map(([c]) => c.numTokens));
    const values = new Float32Array(live.length * T * ROW).fill(NaN); // padding must never be read
    live.forEach(([c, i], b) => values.set(seqs[i].tokens.subarray(c.startPosition * ROW, (c.startPosition + c.numTokens) * ROW), b * T * ROW));
    pool.scatter(values, live.map(([c]) => c), T);
    live.forEach(([c, i]) => (written[i] += c.numTokens));
  }
  const P = Math.max(...seqs.map((s) => s.tokens.length / ROW)) + 3;
  const out = new Float32Array(seqs.length * P * ROW);
  pool.gather(
    seqs.map((s) => ({ startPosition: s.tokens.length / ROW, numTokens: 1, blockTable: s.blockTable })),
    P,
    out,
  );
  return seqs.map((s, b) => {
    const len = s.tokens.length / ROW;
    // Past each sequence's length the output stays as it was (zero).
    expect(out.subarray((b * P + len) * ROW, (b + 1) * P * ROW).every((x) => x === 0)).toBe(true);
    return out.slice(b * P * ROW, (b * P + len) * ROW);
  });
}

// Two sequences with non-contiguous, interleaved blocks; lengths end mid-block.
function twoSeqs(seed: number): Seq[] {
  return [
    { blockTable: [5, 0, 3], tokens: randomValues(11 * ROW, seed) },
    { blockTable: [2, 7, 1, 4], tokens: randomValues(14 * ROW, seed + 1) },
  ];
}

// A prefill chunk that ends mid-block, then chunks crossing block boundaries, then single-token decodes.
const CHUNKINGS: number[][] = [[5, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1], [14], Array(14).fill(1)];

describe("KV store: fp32", () => {
  it.each(CHUNKINGS)("round-trips exactly (chunks %j)", (...sizes) => {
    const seqs = twoSeqs(1);
    const got = roundTrip(KvPool.create("fp32", SHAPE), seqs, sizes);
    seqs.forEach((s, i) => expect(got[i]).toEqual(s.tokens));
  });
});

describe("KV store: fp16", () => {
  it("stores float32 -> half with round-to-nearest-even, exactly as f32ToF16Bits", () => {
    const specials = [0, -0, 1, -1, 65504, 65520, 1e6, 6e-8, 3e-8, 2.98e-8, 1e-10, 1 + 2 ** -11, 1 + 3 * 2 ** -11, Infinity, -Infinity];
    const values = Float32Array.from([...specials, ...randomValues(ROW * 4 - specials.length, 3)]);
    const got = roundTrip(KvPool.create("fp16", SHAPE), [{ blockTable: [0], tokens: values }], [4])[0];
    values.forEach((x, i) => expect(Object.is(got[i], f16BitsToF32(f32ToF16Bits(x))), `value ${x}`).toBe(true));
  });

  it.each(CHUNKINGS)("round-trips within 2^-11 relative error (chunks %j)", (...sizes) => {
    const seqs = twoSeqs(2);
    const got = roundTrip(KvPool.create("fp16", SHAPE), seqs, sizes);
    seqs.forEach((s, i) => s.tokens.forEach((x, j) => expect(Math.abs(got[i][j] - x)).toBeLessThanOrEqual(Math.abs(x) * 2 ** -11)));
  });
});

/** The largest |x| of each block-head of a sequence's tokens. */
function blockHeadMax(s: Seq, bs: number): number[][] {
  const len = s.tokens.length / ROW;
  return s.blockTable.map((_, blk) =>
    Array.from({ length: SHAPE.numKvHeads }, (_, h) => {
      let m = 0;
      for (let t = blk * bs; t < Math.min(len, (blk + 1) * bs); t++) {
        for (let d = 0; d < SHAPE.headDim; d++) m = Math.max(m, Math.abs(s.tokens[t * ROW + h * SHAPE.headDim + d]));
      }
      return m;
    }),
  );
}

describe("KV store: int8 (per-block, per-head scales)", () => {
  it("sets each block-head's scale to its max |x| / 127 and round-trips within scale / 2 when a block is written at once", () => {
    const seqs = twoSeqs(4);
    const pool = KvPool.create("int8", SHAPE) as ScaledPool;
    expect(pool).toBeInstanceOf(ScaledPool);
    const got = roundTrip(pool, seqs, [14]);
    seqs.forEach((s, i) => {
      const maxes = blockHeadMax(s, SHAPE.blockSizeTokens);
      s.tokens.forEach((x, j) => {
        const t = Math.floor(j / ROW);
        const h = Math.floor((j % ROW) / SHAPE.headDim);
        const block = s.blockTable[Math.floor(t / SHAPE.blockSizeTokens)];
        const scale = pool.scale(block, h);
        expect(scale).toBeCloseTo(maxes[Math.floor(t / SHAPE.blockSizeTokens)][h] / 127, 7);
        expect(Math.abs(got[i][j] - x)).toBeLessThanOrEqual(scale / 2 + 1e-7);
      });
    });
  });

  it.each(CHUNKINGS)("round-trips token by token within scale / 2 plus the requantization bound (chunks %j)", (...sizes) => {
    const seqs = twoSeqs(5);
    const pool = KvPool.create("int8", SHAPE) as ScaledPool;
    const got = roundTrip(pool, seqs, sizes);
    seqs.forEach((s, i) =>
      s.tokens.forEach((x, j) => {
        const t = Math.floor(j / ROW);
        const scale = pool.scale(s.blockTable[Math.floor(t / SHAPE.blockSizeTokens)], Math.floor((j % ROW) / SHAPE.headDim));
        // At most blockSizeTokens - 1 re-encodings, each adding ≤ half a step of a scale ≤ the final one.
        expect(Math.abs(got[i][j] - x)).toBeLessThanOrEqual((scale / 2) * SHAPE.blockSizeTokens + 1e-7);
      }),
    );
  });

  it("requantizes a block-head's earlier tokens when a later token is larger", () => {
    const pool = KvPool.create("int8", SHAPE) as ScaledPool;
    const small = randomValues(ROW, 6).map((x) => x / 8); // |x| < 1
    const large = Float32Array.from(small, (x) => x * 10);
    large[3] = 12.7; // head 0 max -> scale 0.1
    const table = [6];
    pool.scatter(small, [{ startPosition: 0, numTokens: 1, blockTable: table }], 1);
    const s0 = pool.scale(6, 0);
    const before = new Float32Array(ROW);
    pool.gather([{ startPosition: 1, numTokens: 1, blockTable: table }], 1, before);
    pool.scatter(large, [{ startPosition: 1, numTokens: 1, blockTable: table }], 1);
    const s1 = pool.scale(6, 0);
    expect(s1).toBeCloseTo(0.1, 7);
    expect(s1).toBeGreaterThan(s0);
    const after = new Float32Array(2 * ROW);
    pool.gather([{ startPosition: 2, numTokens: 1, blockTable: table }], 2, after);
    for (let d = 0; d < SHAPE.headDim; d++) {
      // Token 0 now lives on the coarser grid: a whole multiple of s1, within s0/2 + s1/2 of the truth.
      expect(after[d] / s1).toBeCloseTo(Math.round(after[d] / s1), 4);
      expect(Math.abs(after[d] - small[d])).toBeLessThanOrEqual(s0 / 2 + s1 / 2 + 1e-7);
      expect(Math.abs(after[ROW + d] - large[d])).toBeLessThanOrEqual(s1 / 2 + 1e-7);
    }
    expect(after[ROW + 3]).toBeCloseTo(12.7, 5);
  });

  it("starts a reused block afresh: a previous owner's large scale does not leak", () => {
    const pool = KvPool.create("int8", SHAPE) as ScaledPool;
    pool.scatter(Float32Array.from({ length: ROW }, () => 100), [{ startPosition: 0, numTokens: 1, blockTable: [2] }], 1);
    expect(pool.scale(2, 0)).toBeCloseTo(100 / 127, 6);
    const small = randomValues(ROW, 7).map((x) => x / 10);
    pool.scatter(small, [{ startPosition: 0, numTokens: 1, blockTable: [2] }], 1);
    const got = new Float32Array(ROW);
    pool.gather([{ startPosition: 1, numTokens: 1, blockTable: [2] }], 1, got);
    for (let h = 0; h < SHAPE.numKvHeads; h++) {
      const maxAbs = Math.max(...small.subarray(h * SHAPE.headDim, (h + 1) * SHAPE.headDim).map(Math.abs));
      expect(pool.scale(2, h)).toBeCloseTo(maxAbs / 127, 7);
    }
    small.forEach((x, j) => expect(Math.abs(got[j] - x)).toBeLessThanOrEqual(pool.scale(2, Math.floor(j / SHAPE.headDim)) / 2 + 1e-8));
  });
});

describe("e4m3", () => {
  it("decodes the format's landmarks", () => {
    expect(E4M3_DECODE[0x7e]).toBe(448);
    expect(E4M3_DECODE[0xfe]).toBe(-448);
    expect(E4M3_DECODE[0x38]).toBe(1);
    expect(E4M3_DECODE[0x08]).toBe(2 ** -6); // smallest normal
    expect(E4M3_DECODE[0x01]).toBe(2 ** -9); // smallest subnormal
    expect(E4M3_DECODE[0x07]).toBe(7 * 2 ** -9);
    expect(Number.isNaN(E4M3_DECODE[0x7f])).toBe(true);
    expect(Object.is(E4M3_DECODE[0x80], -0)).toBe(true);
  });

  it("encodes every finite code's value back to that code", () => {
    for (let c = 0; c < 256; c++) {
      if ((c & 0x7f) === 0x7f) continue;
      expect(e4m3FromF32Bits(f32Bits(E4M3_DECODE[c]))).toBe(c);
    }
  });

  it("rounds to nearest even and saturates at 448", () => {
    const enc = (x: number): number => E4M3_DECODE[e4m3FromF32Bits(f32Bits(x))];
    expect(enc(1.0625)).toBe(1); // tie between 1 (even) and 1.125
    expect(enc(1.0626)).toBe(1.125);
    expect(enc(1.1875)).toBe(1.25); // tie between 1.125 and 1.25 (even)
    expect(enc(464)).toBe(448);
    expect(enc(1e9)).toBe(448);
    expect(enc(-Infinity)).toBe(-448);
    expect(enc(2 ** -10)).toBe(0); // tie between 0 (even) and 2^-9
    expect(enc(1.5 * 2 ** -9)).toBe(2 * 2 ** -9); // tie between 1 and 2 subnormal steps
    expect(enc(15.5 * 2 ** -10)).toBe(2 ** -6); // rounds up into the smallest normal
    expect(enc(1e-30)).toBe(0);
    expect(Number.isNaN(enc(NaN))).toBe(true);
  });

  it("matches a brute-force nearest-value search (ties to even) on random inputs", () => {
    const finite = [...E4M3_DECODE.keys()].filter((c) => c < 0x7f && c !== 0x7f);
    const rnd = lcg(8);
    for (let i = 0; i < 2000; i++) {
      const x = Math.fround(rnd() * 460 * 2 ** -(rnd() * 18));
      const code = e4m3FromF32Bits(f32Bits(x));
      const best = Math.min(...finite.map((c) => Math.abs(E4M3_DECODE[c] - x)));
      expect(Math.abs(E4M3_DECODE[code] - x)).toBe(best);
    }
  });
});

describe("KV store: fp8 e4m3 (per-block, per-head scales and per-channel centres)", () => {
  const { blockSizeTokens: BS, numKvHeads: KV, headDim: HD } = SHAPE;
  const f16 = (x: number): number => f16BitsToF32(f32ToF16Bits(x));

  /** Per block of s: the tokens of its first write when s is written in `sizes` chunks. */
  function firstRuns(s: Seq, sizes: number[]): [number, number][] {
    const len = s.tokens.length / ROW;
    const runs: [number, number][] = [];
    let at = 0;
    for (const size of sizes) {
      const end = Math.min(len, at + size);
      for (let t = at; t < end; t++) if (t % BS === 0) runs[t / BS] = [t, Math.min(end, t + BS)];
      at = end;
    }
    return runs;
  }

  /** What the pool must hold as channel d's centre of head h: float16 of the first run's mean, summed in order. */
  function expectedCentre(s: Seq, [from, to]: [number, number], h: number, d: number): number {
    let sum = 0;
    for (let t = from; t < to; t++) sum += s.tokens[t * ROW + h * HD + d];
    return f16(sum / (to - from));
  }

  it.each(CHUNKINGS)(
    "centres a block-head on its first write's per-channel mean, scales by a power of two, and round-trips within 2^-4 of x - centre (chunks %j)",
    (...sizes) => {
      const seqs = twoSeqs(9);
      const pool = KvPool.create("fp8", SHAPE) as ScaledPool;
      const got = roundTrip(pool, seqs, sizes);
      seqs.forEach((s, i) => {
        const len = s.tokens.length / ROW;
        firstRuns(s, sizes).forEach((run, blk) => {
          const block = s.blockTable[blk];
          for (let h = 0; h < KV; h++) {
            const centre = Array.from({ length: HD }, (_, d) => expectedCentre(s, run, h, d));
            centre.forEach((c, d) => expect(pool.centre(block, h, d)).toBe(c));
            const scale = pool.scale(block, h);
            expect(Number.isInteger(Math.log2(scale))).toBe(true);
            let maxDist = 0;
            for (let t = blk * BS; t < Math.min(len, (blk + 1) * BS); t++) {
              for (let d = 0; d < HD; d++) {
                const x = s.tokens[t * ROW + h * HD + d];
                maxDist = Math.max(maxDist, Math.abs(x - centre[d]));
                // A shift into e4m3's subnormals after the scale grew can round once more.
                const bound = 2 ** -4 * Math.abs(x - centre[d]) + 2 ** -9 * scale + 1e-6 * Math.max(1, Math.abs(x));
                expect(Math.abs(got[i][t * ROW + h * HD + d] - x)).toBeLessThanOrEqual(bound);
              }
            }
            // The smallest power of two that holds the block-head's largest distance within ±448.
            expect(maxDist).toBeLessThanOrEqual(scale * E4M3_MAX);
            expect(maxDist).toBeGreaterThan((scale / 2) * E4M3_MAX);
          }
        });
      });
    },
  );

  it("re-encodes a block-head's earlier tokens exactly when its scale grows (no second rounding)", () => {
    const pool = KvPool.create("fp8", SHAPE) as ScaledPool;
    // Token 0 is the centre itself (exact in float16); each later token strays 10x further.
    const centre = Float32Array.from({ length: ROW }, (_, j) => 8 + j / 4);
    const rnd = lcg(13);
    const pattern = Float32Array.from({ length: ROW }, () => (rnd() < 0.5 ? -1 : 1) * (0.5 + rnd() / 2));
    const tokens = [0, 0.01, 0.1, 1].map((r) => Float32Array.from(centre, (c, j) => c + r * pattern[j]));
    const decoded: Float32Array[] = [];
    const scales: number[] = [];
    tokens.forEach((tok, t) => {
      pool.scatter(tok, [{ startPosition: t, numTokens: 1, blockTable: [2] }], 1);
      scales.push(pool.scale(2, 0));
      const past = new Float32Array((t + 1) * ROW);
      pool.gather([{ startPosition: t + 1, numTokens: 1, blockTable: [2] }], t + 1, past);
      // Every earlier token decodes to exactly what it did before this write.
      for (let u = 0; u < t; u++) expect(past.subarray(u * ROW, (u + 1) * ROW)).toEqual(decoded[u]);
      decoded.push(past.slice(t * ROW));
    });
    expect(scales[3]).toBeGreaterThan(scales[2]);
    expect(scales[2]).toBeGreaterThan(scales[1]);
    expect(decoded[0]).toEqual(centre);
    tokens.forEach((tok, t) => tok.forEach((x, j) => expect(Math.abs(decoded[t][j] - x)).toBeLessThanOrEqual(2 ** -4 * Math.abs(x - centre[j]) + 1e-6 * x)));
  });

  it("keeps the error to the distance from the centre: values on a per-channel offset come back far closer than e4m3 of the values", () => {
    const pool = KvPool.create("fp8", SHAPE) as ScaledPool;
    const rnd = lcg(14);
    const offset = Float32Array.from({ length: ROW }, () => 20 + 4 * rnd());
    const n = 2 * BS;
    const values = Float32Array.from({ length: n * ROW }, (_, j) => offset[j % ROW] + (rnd() * 2 - 1));
    const got = roundTrip(pool, [{ blockTable: [1, 6], tokens: values }], Array(n).fill(1))[0];
    let worst = 0;
    let worstPlain = 0;
    values.forEach((x, j) => {
      worst = Math.max(worst, Math.abs(got[j] - x));
      const scale = 24 / E4M3_MAX; // about what a block-head's max |x| would give without centres
      worstPlain = Math.max(worstPlain, Math.abs(E4M3_DECODE[e4m3FromF32Bits(f32Bits(x / scale))] * scale - x));
    });
    // Distances from the centre (the first token) are under 2, so codes are off by under 2^-4 * 2.
    expect(worst).toBeLessThan(2 ** -3 + 1e-5);
    expect(worstPlain).toBeGreaterThan(0.5);
  });
});

describe("KV store: every dtype", () => {
  const dtypes: KvDtype[] = ["fp32", "fp16", "int8", "fp8"];

  it.each(dtypes)("%s: copyBlock carries values, scales and centres", (dtype) => {
    const pool = KvPool.create(dtype, SHAPE);
    const values = randomValues(3 * ROW, 12);
    pool.scatter(values, [{ startPosition: 0, numTokens: 3, blockTable: [4] }], 3);
    pool.copyBlock(4, 6);
    const a = new Float32Array(3 * ROW);
    const b = new Float32Array(3 * ROW);
    pool.gather([{ startPosition: 3, numTokens: 1, blockTable: [4] }], 3, a);
    pool.gather([{ startPosition: 3, numTokens: 1, blockTable: [6] }], 3, b);
    expect(b).toEqual(a);
  });

  it.each(dtypes)("%s: KvStore packs layers K then V like the stage graph's past_kv / new_kv", (dtype) => {
    const numLayers = 3;
    const store = new KvStore({ ...SHAPE, numLayers, kvDtype: dtype });
    expect(store.pools).toHaveLength(2 * numLayers);
    const chunks: KvChunk[] = [
      { startPosition: 0, numTokens: 6, blockTable: [3, 1] },
      { startPosition: 0, numTokens: 2, blockTable: [0] },
    ];
    const T = 6;
    const fresh = randomValues(2 * numLayers * chunks.length * T * ROW, 13);
    store.scatter(chunks, T, fresh);
    const next = chunks.map((c) => ({ ...c, startPosition: c.numTokens, numTokens: 1 }));
    const P = 8;
    const past = new Float32Array(2 * numLayers * chunks.length * P * ROW);
    store.gather(next, P, past);
    // Pool by pool, the same as gathering that pool alone.
    store.pools.forEach((pool, i) => {
      const alone = new Float32Array(chunks.length * P * ROW);
      pool.gather(next, P, alone);
      expect(past.subarray(i * alone.length, (i + 1) * alone.length)).toEqual(alone);
    });
    if (dtype === "fp32") {
      // Part i, sequence b, token t of the input comes back at part i, sequence b, position t.
      for (let part = 0; part < 2 * numLayers; part++) {
        chunks.forEach((c, b) => {
          const src = ((part * chunks.length + b) * T) * ROW;
          const dst = ((part * chunks.length + b) * P) * ROW;
          expect(past.subarray(dst, dst + c.numTokens * ROW)).toEqual(fresh.subarray(src, src + c.numTokens * ROW));
        });
      }
    }
  });

  it("reports its bytes, scales (and fp8 centres) included", () => {
    const layout = { ...SHAPE, numLayers: 2 };
    const elements = 2 * 2 * SHAPE.numBlocks * SHAPE.blockSizeTokens * ROW;
    const scales = 2 * 2 * SHAPE.numBlocks * SHAPE.numKvHeads * 4;
    expect(new KvStore({ ...layout, kvDtype: "fp32" }).byteLength).toBe(elements * 4);
    expect(new KvStore({ ...layout, kvDtype: "fp16" }).byteLength).toBe(elements * 2);
    expect(new KvStore({ ...layout, kvDtype: "int8" }).byteLength).toBe(elements + scales);
    const centres = 2 * 2 * SHAPE.numBlocks * SHAPE.numKvHeads * SHAPE.headDim * 2;
    expect(new KvStore({ ...layout, kvDtype: "fp8" }).byteLength).toBe(elements + scales + centres);
    for (const dtype of ["fp32", "fp16", "int8", "fp8"] as const) {
      const store = new KvStore({ ...layout, kvDtype: dtype });
      expect(store.pools.reduce((a, p) => a + p.byteLength, 0)).toBe(store.byteLength);
    }
  });
});

describe("KV store: per-pool float32 gathers for the stage graph", () => {
  const { numKvHeads: KV, headDim: HD, blockSizeTokens: BS } = SHAPE;

  /** The head-major [chunks, kvHeads, P, headDim] view of every chunk's past, from the token-major float32 gather. */
  function expected(pool: KvPool, chunks: KvChunk[], P: number): Float32Array {
    const tokenMajor = new Float32Array(chunks.length * P * ROW);
    pool.gather(chunks, P, tokenMajor);
    const out = new Float32Array(chunks.length * KV * P * HD);
    chunks.forEach((c, b) => {
      for (let t = 0; t < c.startPosition; t++) {
        for (let h = 0; h < KV; h++) out.set(tokenMajor.subarray((b * P + t) * ROW + h * HD, (b * P + t) * ROW + (h + 1) * HD), ((b * KV + h) * P + t) * HD);
      }
    });
    return out;
  }

  /** Only the positions each chunk's past covers: the rest of a gather's arrays is stale by design. */
  function past(arr: Float32Array, chunks: KvChunk[], P: number): number[] {
    const values: number[] = [];
    chunks.forEach((c, b) => {
      for (let h = 0; h < KV; h++) values.push(...arr.subarray(((b * KV + h) * P) * HD, ((b * KV + h) * P + c.startPosition) * HD));
    });
    return values;
  }

  function check(store: KvStore, chunks: KvChunk[], P: number): void {
    const arrays = store.gatherPools(chunks, P);
    store.pools.forEach((pool, i) => expect(past(arrays[i], chunks, P)).toEqual(past(expected(pool, chunks, P), chunks, P)));
  }

  // int8 and fp8 re-encode a block's earlier entries when its scale grows (int8 not exactly): a
  // gather that kept their decoded values must decode that block again.
  it.each<KvDtype>(["fp32", "fp16", "int8", "fp8"])("%s: equals a full decode through decode steps, alternating micro-batches, and blocks freed and reused by another sequence", (kvDtype) => {
    const store = new KvStore({ ...SHAPE, numLayers: 2, kvDtype });
    let seed = 20;
    const write = (chunks: KvChunk[]) => {
      const T = Math.max(...chunks.map((c) => c.numTokens));
      store.scatter(chunks, T, randomValues(2 * 2 * chunks.length * T * ROW, seed++));
    };
    // Micro-batch A: two sequences; micro-batch B: one. Prefill, then decode steps alternating A and B.
    const a = [{ blockTable: [5, 0, 3] }, { blockTable: [2, 7] }];
    const b = [{ blockTable: [4, 6] }];
    const lengths = new Map<object, number>([[a[0], 5], [a[1], 3], [b[0], 2]]);
    write([...a, ...b].map((s) => ({ startPosition: 0, numTokens: lengths.get(s)!, blockTable: s.blockTable })));
    const step = (batch: { blockTable: number[] }[], P: number) => {
      const chunks = batch.map((s) => ({ startPosition: lengths.get(s)!, numTokens: 1, blockTable: s.blockTable }));
      check(store, chunks, P);
      write(chunks);
      batch.forEach((s) => lengths.set(s, lengths.get(s)! + 1));
    };
    for (let i = 0; i < 3; i++) {
      step(a, 2 * BS);
      step(b, BS);
    }
    // Sequence a[1] ends; a new sequence takes its blocks (same table) and writes them afresh: a
    // gather must not serve a[1]'s old values from the arrays it copied them into.
    const reused = { blockTable: [2, 7] };
    lengths.set(reused, 6);
    write([{ startPosition: 0, numTokens: 6, blockTable: reused.blockTable }]);
    a[1] = reused;
    step(a, 2 * BS); // the past length of a's last gather, which held a[1]'s values at [0, 5)
    for (let i = 0; i < 2; i++) step(a, 3 * BS);
    // Back to the earlier past length: same arrays size as before, different contents.
    step(b, 2 * BS);
  });

  it("a sequence growing block by block reuses its gather's memory, every past still exact", () => {
    const store = new KvStore({ ...SHAPE, numLayers: 1, kvDtype: "fp32" });
    const table = Array.from({ length: SHAPE.numBlocks }, (_, i) => i);
    let seed = 40;
    const buffers = new Set<ArrayBufferLike>();
    // Gathers that copy a whole past from the blocks (no positions already in the arrays).
    let fullGathers = 0;
    const gatherDecoded = store.pools[0].gatherDecoded.bind(store.pools[0]);
    store.pools[0].gatherDecoded = (chunks, P, out, outOffset, from) => {
      if (!from) fullGathers++;
      gatherDecoded(chunks, P, out, outOffset, from);
    };
    for (let length = 1; length <= 6 * BS; length++) {
      const chunks = [{ startPosition: length - 1, numTokens: 1, blockTable: table }];
      const P = Math.ceil((length - 1) / BS) * BS;
      if (P > 0) {
        check(store, chunks, P);
        for (const array of store.gatherPools(chunks, P)) buffers.add(array.buffer);
      }
      store.scatter(chunks, 1, randomValues(2 * ROW, seed++));
    }
    // Pasts of 1 to 6 blocks: with room for half as long again, arrays of 2, 5 and 9 blocks serve
    // them all, three per pool instead of one per past length.
    expect(buffers.size).toBeLessThanOrEqual(3 * store.pools.length);
    // A past that grows within its arrays' room is laid out again in place and extended: only a
    // move to bigger arrays copies it all from the blocks (6 past lengths, 3 array sizes).
    expect(fullGathers).toBe(3);
  });

  it("several sequences and heads stay exact as their pasts grow past block boundaries in place", () => {
    const store = new KvStore({ ...SHAPE, numBlocks: 24, numLayers: 2, kvDtype: "fp32" });
    let seed = 60;
    const tables = [
      [9, 2, 14, 5, 11, 0, 7],
      [3, 12, 6, 1, 13, 8, 4],
      [10, 15, 16, 17, 18, 19, 20],
    ];
    const lengths = [BS + 3, 2 * BS - 1, 5];
    const T = Math.max(...lengths);
    store.scatter(tables.map((blockTable, b) => ({ startPosition: 0, numTokens: lengths[b], blockTable })), T, randomValues(2 * 2 * 3 * T * ROW, seed++));
    for (let step = 0; step < 3 * BS; step++) {
      const chunks = tables.map((blockTable, b) => ({ startPosition: lengths[b], numTokens: 1, blockTable }));
      check(store, chunks, Math.ceil(Math.max(...lengths) / BS) * BS);
      store.scatter(chunks, 1, randomValues(2 * 2 * 3 * ROW, seed++));
      lengths.forEach((_, b) => lengths[b]++);
    }
  });
});
