import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  BUNDLED_HF_MODEL_DIR,
  BUNDLED_MODEL_DIR,
  kvBytesPerToken,
  LayerRangeError,
  ModelFormatError,
  openModel,
  writeSyntheticModel,
  type LoadProgress,
  type ModelSource,
  type SyntheticShape,
} from "../src/index.ts";

const tmp = mkdtempSync(join(tmpdir(), "strata-model-loader-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const SHAPE: SyntheticShape = { hiddenSize: 32, intermediateSize: 64, numLayers: 5, numHeads: 4, numKvHeads: 2, headDim: 8, vocabSize: 256 };

function dirBytes(dir: string, ext: string): number {
  return readdirSync(dir)
    .filter((f) => f.endsWith(ext))
    .reduce((s, f) => s + statSync(join(dir, f)).size, 0);
}

/** Bytes of one layer's nine tensors at 4 bytes per element. */
function layerBytes(s: { hiddenSize: number; intermediateSize: number; numHeads: number; numKvHeads: number; headDim: number }): number {
  const q = s.numHeads * s.headDim;
  const kv = s.numKvHeads * s.headDim;
  return 4 * (2 * s.hiddenSize + 2 * q * s.hiddenSize + 2 * kv * s.hiddenSize + 3 * s.intermediateSize * s.hiddenSize);
}

async function withSource<T>(dir: string, f: (src: ModelSource) => Promise<T>): Promise<T> {
  const src = await openModel(dir);
  try {
    return await f(src);
  } finally {
    await src.close();
  }
}

/** Loads layer 2 alone, checks it read only that layer's bytes, and compares it with a full load. */
async function checkPartialLoad(dir: string, weightBytes: number): Promise<void> {
  const progress: LoadProgress[] = [];
  const part = await withSource(dir, async (src) => {
    const stage = await src.loadStage({ layerStart: 2, layerEnd: 3, withEmbedding: false, withHead: false, onProgress: (p) => progress.push(p) });
    const read = src.bytesRead();
    expect(read).toBeLessThan(weightBytes / 4);
    expect(read).toBeGreaterThanOrEqual(layerBytes(src.config));
    return stage;
  });
  expect(part.layerStart).toBe(2);
  expect(part.layerEnd).toBe(3);
  expect(part.layers).toHaveLength(1);
  expect(part.embedding).toBeUndefined();
  expect(part.lmHead).toBeUndefined();
  expect(part.finalNorm).toBeUndefined();
  expect(progress.at(-1)).toEqual({ bytesLoaded: layerBytes(part.config), bytesTotal: layerBytes(part.config) });

  const full = await withSource(dir, (src) => src.loadStage({ layerStart: 0, layerEnd: src.config.numLayers, withEmbedding: true, withHead: true }));
  expect(part.layers[0]).toEqual(full.layers[2]);
}

describe("openModel / loadStage", () => {
  it("reads the bundled llama2.c checkpoint", async () => {
    await withSource(BUNDLED_MODEL_DIR, async (src) => {
      expect(src.config).toEqual({
        format: "llama2c",
        hiddenSize: 64,
        intermediateSize: 172,
        numLayers: 5,
        numHeads: 8,
        numKvHeads: 4,
        headDim: 8,
        vocabSize: 512,
        maxPositionEmbeddings: 512,
        rmsNormEps: 1e-5,
        ropeTheta: 10000,
        tieWordEmbeddings: true,
        ropeStyle: "interleaved",
        bosTokenId: 1,
        eosTokenIds: [2, 1],
      });
      expect(kvBytesPerToken(src.config, 5, 4)).toBe(2 * 5 * 4 * 8 * 4);
      const w = await src.loadStage({ layerStart: 0, layerEnd: 5, withEmbedding: true, withHead: true });
      expect(w.embedding).toHaveLength(512 * 64);
      // Tied: the head is the embedding matrix itself.
      expect(w.lmHead).toBe(w.embedding);
      expect(w.finalNorm).toHaveLength(64);
      expect(w.layers[4].wk).toHaveLength(32 * 64);
      expect(w.layers[4].wDown).toHaveLength(64 * 172);
      // Everything but the unused freq_cis block (2 × 512 × 4 floats).
      expect(src.bytesRead()).toBe(statSync(join(BUNDLED_MODEL_DIR, "stories260K.bin")).size - 2 * 512 * 4 * 4);
    });
  });

  it("reads the bundled Hugging Face folder with the same weights", async () => {
    const [a, b] = await Promise.all(
      [BUNDLED_MODEL_DIR, BUNDLED_HF_MODEL_DIR].map((dir) => withSource(dir, (src) => src.loadStage({ layerStart: 0, layerEnd: 5, withEmbedding: true, withHead: true }))),
    );
    expect(b.config).toEqual({ ...a.config, format: "hf", ropeStyle: "rotate-half" });
    expect(b.embedding).toEqual(a.embedding);
    expect(b.finalNorm).toEqual(a.finalNorm);
    for (let l = 0; l < 5; l++) {
      for (const t of ["attnNorm", "wv", "wo", "ffnNorm", "wGate", "wUp", "wDown"] as const) expect(b.layers[l][t]).toEqual(a.layers[l][t]);
    }
  });

  it("reads only the requested layer of the llama2.c checkpoint", async () => {
    await checkPartialLoad(BUNDLED_MODEL_DIR, statSync(join(BUNDLED_MODEL_DIR, "stories260K.bin")).size);
  });

  it("reads only the requested layer of a synthetic HF model, single file and sharded", async () => {
    for (const shards of [1, 2]) {
      const dir = join(tmp, `synthetic-${shards}`);
      await writeSyntheticModel(dir, SHAPE, 11, { shards });
      expect(readdirSync(dir).filter((f) => f.endsWith(".safetensors"))).toHaveLength(shards);
      await checkPartialLoad(dir, dirBytes(dir, ".safetensors"));
    }
  });

  it("loads the head alone from a tied model's embedding", async () => {
    const w = await withSource(BUNDLED_MODEL_DIR, (src) => src.loadStage({ layerStart: 4, layerEnd: 5, withEmbedding: false, withHead: true }));
    expect(w.embedding).toBeUndefined();
    expect(w.lmHead).toHaveLength(512 * 64);
    expect(w.finalNorm).toHaveLength(64);
  });

  it("reads a separate classifier from a llama2.c checkpoint with negative vocab_size", async () => {
    const dir = join(tmp, "untied-llama2c");
    mkdirSync(dir);
    const original = readFileSync(join(BUNDLED_MODEL_DIR, "stories260K.bin"));
    const header = Buffer.from(original.subarray(0, 28));
    header.writeInt32LE(-512, 5 * 4);
    const wcls = new Float32Array(512 * 64).map((_, i) => i / 1000);
    writeFileSync(join(dir, "untied.bin"), Buffer.concat([header, original.subarray(28), Buffer.from(wcls.buffer)]));
    const w = await withSource(dir, async (src) => {
      expect(src.config.tieWordEmbeddings).toBe(false);
      expect(src.config.vocabSize).toBe(512);
      return src.loadStage({ layerStart: 0, layerEnd: 5, withEmbedding: true, withHead: true });
    });
    expect(w.lmHead).toEqual(wcls);
    expect(w.embedding).toHaveLength(512 * 64);
    expect(w.embedding).not.toEqual(wcls);
  });

  it("rejects layer ranges outside the model", async () => {
    await withSource(BUNDLED_MODEL_DIR, async (src) => {
      for (const [layerStart, layerEnd] of [[0, 6], [-1, 2], [3, 3], [4, 2], [5, 6], [0.5, 2]]) {
        const p = src.loadStage({ layerStart, layerEnd, withEmbedding: false, withHead: false });
        await expect(p).rejects.toThrow(LayerRangeError);
        await expect(p).rejects.toThrow(`[${layerStart}, ${layerEnd})`);
        await expect(p).rejects.toThrow("5 layers");
      }
      // Nothing was read for the refused ranges beyond the header.
      expect(src.bytesRead()).toBe(28);
    });
  });
});

describe("format errors", () => {
  it("reports a truncated llama2.c checkpoint", async () => {
    const dir = join(tmp, "truncated-llama2c");
    mkdirSync(dir);
    writeFileSync(join(dir, "stories260K.bin"), readFileSync(join(BUNDLED_MODEL_DIR, "stories260K.bin")).subarray(0, 500_000));
    await expect(openModel(dir)).rejects.toThrow(ModelFormatError);
    await expect(openModel(dir)).rejects.toThrow(/truncated/);
  });

  it("reports a llama2.c file with a bad header", async () => {
    const dir = join(tmp, "bad-header");
    mkdirSync(dir);
    writeFileSync(join(dir, "model.bin"), Buffer.from("this is not a checkpoint at all, just some text"));
    await expect(openModel(dir)).rejects.toThrow(/bad header/);
  });

  it("reports a truncated safetensors file", async () => {
    const dir = join(tmp, "truncated-hf");
    mkdirSync(dir);
    for (const f of ["config.json", "generation_config.json"]) copyFileSync(join(BUNDLED_HF_MODEL_DIR, f), join(dir, f));
    writeFileSync(join(dir, "model.safetensors"), readFileSync(join(BUNDLED_HF_MODEL_DIR, "model.safetensors")).subarray(0, 600_000));
    await expect(openModel(dir)).rejects.toThrow(ModelFormatError);
    await expect(openModel(dir)).rejects.toThrow(/truncated/);
  });

  it("reports missing files", async () => {
    const empty = join(tmp, "empty");
    mkdirSync(empty);
    await expect(openModel(empty)).rejects.toThrow(ModelFormatError);
    await expect(openModel(join(tmp, "no-such-dir"))).rejects.toThrow(ModelFormatError);
    const noWeights = join(tmp, "no-weights");
    mkdirSync(noWeights);
    copyFileSync(join(BUNDLED_HF_MODEL_DIR, "config.json"), join(noWeights, "config.json"));
    await expect(openModel(noWeights)).rejects.toThrow(/no model\.safetensors/);

    const missingShard = join(tmp, "missing-shard");
    await writeSyntheticModel(missingShard, SHAPE, 1, { shards: 2 });
    rmSync(join(missingShard, "model-00002-of-00002.safetensors"));
    await expect(openModel(missingShard)).rejects.toThrow(/shard file is missing/);
  });

  it("reports a missing tensor and an unsupported dtype", async () => {
    const dir = join(tmp, "edited");
    await writeSyntheticModel(dir, SHAPE, 3);
    const path = join(dir, "model.safetensors");
    const original = readFileSync(path);
    const headerLen = Number(original.readBigUInt64LE(0));
    const header = JSON.parse(original.subarray(8, 8 + headerLen).toString("utf8")) as Record<string, { dtype: string }>;
    const rewrite = (h: object) => {
      const json = Buffer.from(JSON.stringify(h));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      writeFileSync(path, Buffer.concat([len, json, original.subarray(8 + headerLen)]));
    };

    const { ["model.layers.3.mlp.up_proj.weight"]: _dropped, ...withoutUp } = header;
    rewrite(withoutUp);
    await expect(openModel(dir)).rejects.toThrow(ModelFormatError);
    await expect(openModel(dir)).rejects.toThrow('missing tensor "model.layers.3.mlp.up_proj.weight"');

    rewrite({ ...header, "model.norm.weight": { ...header["model.norm.weight"], dtype: "F64" } });
    await expect(openModel(dir)).rejects.toThrow(/unsupported dtype F64/);
  });

  it("reports a tensor whose shape disagrees with config.json", async () => {
    const dir = join(tmp, "wrong-shape");
    await writeSyntheticModel(dir, SHAPE, 3);
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, intermediate_size: 65 }));
    await expect(openModel(dir)).rejects.toThrow(/has shape \[64,32\], config says \[65,32\]/);
  });
});
