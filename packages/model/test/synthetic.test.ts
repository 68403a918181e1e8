import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  loadTokenizer,
  ModelFormatError,
  openModel,
  referenceForward,
  writeSyntheticModel,
  type DType,
  type StageWeights,
  type SyntheticShape,
} from "../src/index.ts";

const tmp = mkdtempSync(join(tmpdir(), "strata-model-synthetic-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const SHAPE: SyntheticShape = { hiddenSize: 48, intermediateSize: 96, numLayers: 3, numHeads: 6, numKvHeads: 2, headDim: 8, vocabSize: 300, maxPositionEmbeddings: 128 };

async function writeAndLoad(name: string, shape: SyntheticShape, seed: number, opts: { shards?: number; dtype?: DType } = {}): Promise<StageWeights> {
  const dir = join(tmp, name);
  await writeSyntheticModel(dir, shape, seed, opts);
  const src = await openModel(dir);
  try {
    return await src.loadStage({ layerStart: 0, layerEnd: shape.numLayers, withEmbedding: true, withHead: true });
  } finally {
    await src.close();
  }
}

/** Reads one tensor straight from a safetensors file, independent of the loader. */
function rawTensor(path: string, name: string): { dtype: string; shape: number[]; bytes: Buffer } {
  const file = readFileSync(path);
  const headerLen = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + headerLen).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const e = header[name];
  return { dtype: e.dtype, shape: e.shape, bytes: file.subarray(8 + headerLen + e.data_offsets[0], 8 + headerLen + e.data_offsets[1]) };
}

function stats(a: Float32Array): { mean: number; std: number } {
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
  return { mean, std };
}

describe("writeSyntheticModel", () => {
  it("writes a Hugging Face folder that reads back with its shape", async () => {
    const w = await writeAndLoad("f32", SHAPE, 42);
    expect(w.config).toEqual({
      format: "hf",
      hiddenSize: 48,
      intermediateSize: 96,
      numLayers: 3,
      numHeads: 6,
      numKvHeads: 2,
      headDim: 8,
      vocabSize: 300,
      maxPositionEmbeddings: 128,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      tieWordEmbeddings: false,
      ropeStyle: "rotate-half",
      bosTokenId: 1,
      eosTokenIds: [2],
    });
    const dir = join(tmp, "f32");
    expect(existsSync(join(dir, "generation_config.json"))).toBe(true);

    // Values on disk are what the loader returns.
    const raw = rawTensor(join(dir, "model.safetensors"), "model.layers.1.self_attn.k_proj.weight");
    expect(raw).toMatchObject({ dtype: "F32", shape: [16, 48] });
    for (const i of [0, 1, 47, 48, 400, 767]) expect(w.layers[1].wk[i]).toBe(raw.bytes.readFloatLE(i * 4));
    const head = rawTensor(join(dir, "model.safetensors"), "lm_head.weight");
    expect(w.lmHead![299 * 48 + 47]).toBe(head.bytes.readFloatLE((299 * 48 + 47) * 4));
    expect(w.lmHead).not.toBe(w.embedding);

    // Scaled so activations keep their size: N(0, 1/fan_in) matrices, norms near 1.
    const down = stats(w.layers[0].wDown);
    expect(Math.abs(down.mean)).toBeLessThan(0.01);
    expect(down.std).toBeGreaterThan(0.9 / Math.sqrt(96));
    expect(down.std).toBeLessThan(1.1 / Math.sqrt(96));
    expect(Math.abs(stats(w.layers[2].ffnNorm).mean - 1)).toBeLessThan(0.05);

    const logits = referenceForward(w.config, w, [1, 5, 77, 299, 3]);
    expect(logits.every(Number.isFinite)).toBe(true);
    const s = stats(logits);
    expect(s.std).toBeGreaterThan(0.1);
    expect(s.std).toBeLessThan(10);
  });

  it("is deterministic in the seed", async () => {
    const again = await writeAndLoad("f32-again", SHAPE, 42);
    const other = await writeAndLoad("f32-other", SHAPE, 43);
    const first = await writeAndLoad("f32-first", SHAPE, 42);
    expect(readFileSync(join(tmp, "f32-again", "model.safetensors")).equals(readFileSync(join(tmp, "f32-first", "model.safetensors")))).toBe(true);
    expect(again.layers[0].wq).toEqual(first.layers[0].wq);
    expect(other.layers[0].wq).not.toEqual(first.layers[0].wq);
  });

  it("shards into model.safetensors.index.json with the same values", async () => {
    const single = await writeAndLoad("single", SHAPE, 5);
    const sharded = await writeAndLoad("sharded", SHAPE, 5, { shards: 3 });
    const index = JSON.parse(readFileSync(join(tmp, "sharded", "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
    expect(new Set(Object.values(index.weight_map))).toEqual(new Set(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]));
    expect(Object.keys(index.weight_map)).toHaveLength(1 + 3 * 9 + 2);
    expect(sharded.embedding).toEqual(single.embedding);
    expect(sharded.layers).toEqual(single.layers);
    expect(sharded.lmHead).toEqual(single.lmHead);
  });

  it("round trips F16 and BF16 weights", async () => {
    const f32 = await writeAndLoad("rt-f32", SHAPE, 9);
    for (const [dtype, relTol, toBits, fromBits] of [
      ["F16", 2 ** -11, f32ToF16Bits, f16BitsToF32],
      ["BF16", 2 ** -8, f32ToBf16Bits, bf16BitsToF32],
    ] as const) {
      const w = await writeAndLoad(`rt-${dtype}`, SHAPE, 9, { dtype });
      expect(rawTensor(join(tmp, `rt-${dtype}`, "model.safetensors"), "model.norm.weight").dtype).toBe(dtype);
      const pairs: [Float32Array, Float32Array][] = [
        [w.embedding!, f32.embedding!],
        [w.layers[2].wo, f32.layers[2].wo],
        [w.layers[0].attnNorm, f32.layers[0].attnNorm],
      ];
      for (const [half, full] of pairs) {
        for (let i = 0; i < full.length; i++) {
          // Exactly the rounded float32 value, and within half a unit in the last place of it.
          expect(half[i]).toBe(fromBits(toBits(full[i])));
          expect(Math.abs(half[i] - full[i])).toBeLessThanOrEqual(Math.abs(full[i]) * relTol + 2 ** -24);
        }
      }
      const logits = referenceForward(w.config, w, [1, 2, 3]);
      expect(logits.every(Number.isFinite)).toBe(true);
    }
  });

  it("ties the head to the embedding and records a sliding window when asked", async () => {
    const w = await writeAndLoad("tied", { ...SHAPE, tieWordEmbeddings: true, slidingWindow: 16 }, 1);
    expect(w.config.tieWordEmbeddings).toBe(true);
    expect(w.config.slidingWindow).toBe(16);
    expect(w.lmHead).toBe(w.embedding);
    expect(existsSync(join(tmp, "tied", "model.safetensors"))).toBe(true);
    expect(rawTensor(join(tmp, "tied", "model.safetensors"), "model.embed_tokens.weight").shape).toEqual([300, 48]);
  });

  it("writes a byte-fallback tokenizer for its vocabulary: any text round-trips, every id decodes", async () => {
    const tok = await loadTokenizer(join(tmp, "f32"));
    expect(tok.vocabSize).toBe(300);
    expect(tok.bosTokenId).toBe(1);
    const text = "Once upon a time, naïve 🐉";
    const ids = tok.encode(text);
    expect(ids[0]).toBe(1);
    // No merges: a "▁" (259) before each word, then one byte token per UTF-8 byte.
    const words = text.split(" ");
    expect(ids.length).toBe(1 + words.length + Buffer.byteLength(words.join("")));
    expect(ids.slice(1).every((id) => id >= 3 && id <= 259)).toBe(true);
    expect(tok.decode(ids)).toBe(text);
    expect(tok.decode([1, 260, 299])).toBe("w260 w299");
  });

  it("writes no tokenizer when the vocabulary cannot hold every byte, and loading one says so", async () => {
    await writeSyntheticModel(join(tmp, "tiny-vocab"), { ...SHAPE, vocabSize: 200 }, 1);
    expect(existsSync(join(tmp, "tiny-vocab", "tokenizer.json"))).toBe(false);
    await expect(loadTokenizer(join(tmp, "tiny-vocab"))).rejects.toThrow(ModelFormatError);
  });
});

describe("half-precision conversions", () => {
  it("rounds float32 to F16 to nearest even", () => {
    const cases: [number, number][] = [
      [1, 0x3c00],
      [-2, 0xc000],
      [0.5, 0x3800],
      [65504, 0x7bff],
      [65520, 0x7c00], // halfway to the next binade rounds up to infinity
      [1e6, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // tie rounds to even (zero)
      [3 * 2 ** -25, 0x0002], // tie rounds to even (2)
      [1 + 2 ** -11, 0x3c00], // tie, even mantissa stays
      [1 + 3 * 2 ** -11, 0x3c02], // tie, odd mantissa rounds up
      [-0, 0x8000],
    ];
    for (const [x, bits] of cases) expect(f32ToF16Bits(x), String(x)).toBe(bits);
    expect(f32ToF16Bits(NaN) & 0x7c00).toBe(0x7c00);
    expect(f32ToF16Bits(NaN) & 0x3ff).not.toBe(0);
    for (const bits of [0x0001, 0x03ff, 0x0400, 0x3c00, 0x7bff, 0xc000, 0x8000]) expect(f32ToF16Bits(f16BitsToF32(bits))).toBe(bits);
    expect(f16BitsToF32(0x7c00)).toBe(Infinity);
    expect(f16BitsToF32(0x7e00)).toBeNaN();
  });

  it("rounds float32 to BF16 to nearest even", () => {
    expect(f32ToBf16Bits(1)).toBe(0x3f80);
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80);
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(f32ToBf16Bits(-2)).toBe(0xc000);
    expect(f32ToBf16Bits(3.4028234663852886e38)).toBe(0x7f80);
    expect(bf16BitsToF32(f32ToBf16Bits(NaN))).toBeNaN();
    expect(bf16BitsToF32(0x3f80)).toBe(1);
    expect(bf16BitsToF32(0xc0490fdb >>> 16)).toBe(-3.140625);
  });
});
