import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { DTYPE_BYTES, encodeFromF32, type DType } from "./dtype.ts";
import { hfTensorName, hfTensorShape } from "./hf.ts";
import { parseHfConfig, type ModelConfig } from "./config.ts";
import { writeSafetensors, type TensorToWrite } from "./safetensors.ts";
import type { TensorKey } from "./tensor-source.ts";
import { LAYER_TENSORS } from "./weights.ts";

/** The config fields a synthetic model is drawn from; the rest get Llama defaults. */
export type SyntheticShape = Pick<ModelConfig, "hiddenSize" | "intermediateSize" | "numLayers" | "numHeads" | "numKvHeads" | "headDim" | "vocabSize"> &
  Partial<Pick<ModelConfig, "maxPositionEmbeddings" | "tieWordEmbeddings" | "slidingWindow">>;

export interface SyntheticOptions {
  /** Number of safetensors shards (with model.safetensors.index.json when > 1). Default 1. */
  shards?: number;
  dtype?: DType;
}

/** mulberry32: tiny, seedable, good enough for test weights. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples by Box–Muller. */
export function normals(rand: () => number, n: number, mean: number, std: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - rand()));
    const theta = 2 * Math.PI * rand();
    out[i] = mean + std * r * Math.cos(theta);
    if (i + 1 < n) out[i + 1] = mean + std * r * Math.sin(theta);
  }
  return out;
}

/**
 * Writes a Hugging Face Llama folder with seeded random weights: matrices ~ N(0, 1/fan_in) so activations
 * keep their scale through the layers, norms near 1. The same seed gives the same values for every dtype
 * and shard count (before rounding to the dtype).
 */
export async function writeSyntheticModel(dir: string, shape: SyntheticShape, seed: number, opts: SyntheticOptions = {}): Promise<void> {
  const dtype = opts.dtype ?? "F32";
  const shards = opts.shards ?? 1;
  const tied = shape.tieWordEmbeddings ?? false;
  const configJson: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: shape.hiddenSize,
    intermediate_size: shape.intermediateSize,
    num_hidden_layers: shape.numLayers,
    num_attention_heads: shape.numHeads,
    num_key_value_heads: shape.numKvHeads,
    head_dim: shape.headDim,
    vocab_size: shape.vocabSize,
    max_position_embeddings: shape.maxPositionEmbeddings ?? 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    hidden_act: "silu",
    bos_token_id: 1,
    eos_token_id: 2,
    tie_word_embeddings: tied,
    torch_dtype: { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype],
    sliding_window: shape.slidingWindow ?? null,
  };
  // Fails here, before any file is written, if the shape is inconsistent.
  const config = parseHfConfig(configJson);
  if (!Number.isInteger(shards) || shards < 1) throw new RangeError(`shards must be a positive integer, got ${shards}`);

  const keys: TensorKey[] = ["embedding"];
  for (let l = 0; l < shape.numLayers; l++) for (const t of LAYER_TENSORS) keys.push({ layer: l, tensor: t });
  keys.push("finalNorm");
  if (!tied) keys.push("lmHead");

  // One stream of random numbers in a fixed tensor order, drawn lazily while writing.
  const rand = mulberry32(seed);
  const tensors: TensorToWrite[] = keys.map((key) => {
    const dims = hfTensorShape(config, key);
    const n = dims.reduce((a, b) => a * b, 1);
    const isNorm = dims.length === 1;
    const fanIn = dims[dims.length - 1];
    return {
      name: hfTensorName(key),
      dtype,
      shape: dims,
      data: () => encodeFromF32(isNorm ? normals(rand, n, 1, 0.1) : normals(rand, n, 0, 1 / Math.sqrt(fanIn)), dtype),
    };
  });

  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "config.json"), JSON.stringify(configJson, null, 2) + "\n");
  await writeFile(join(dir, "generation_config.json"), JSON.stringify({ bos_token_id: 1, eos_token_id: 2 }, null, 2) + "\n");
  if (shape.vocabSize >= SYNTHETIC_TOKENIZER_MIN_VOCAB) {
    await writeFile(join(dir, "tokenizer.json"), JSON.stringify(syntheticTokenizerJson(shape.vocabSize)) + "\n");
  }
  if (shards === 1) {
    await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
    return;
  }

  // Contiguous, non-empty groups of roughly equal bytes, in the usual model-0000i-of-0000n naming.
  if (shards > tensors.length) throw new RangeError(`${shards} shards for ${tensors.length} tensors`);
  const bytesOf = (t: TensorToWrite) => t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
  const totalBytes = tensors.reduce((s, t) => s + bytesOf(t), 0);
  const groups: TensorToWrite[][] = Array.from({ length: shards }, () => []);
  let g = 0;
  let acc = 0;
  tensors.forEach((t, i) => {
    const filled = groups[g].length > 0;
    const onlyEnoughLeft = tensors.length - i === shards - 1 - g;
    if (filled && (onlyEnoughLeft || acc >= ((g + 1) * totalBytes) / shards)) g++;
    groups[g].push(t);
    acc += bytesOf(t);
  });
  const pad = (i: number) => String(i).padStart(5, "0");
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < shards; i++) {
    const file = `model-${pad(i + 1)}-of-${pad(shards)}.safetensors`;
    for (const t of groups[i]) weightMap[t.name] = file;
    // Shards are written in order, so the random stream is drawn in the same order as unsharded.
    await writeSafetensors(join(dir, file), groups[i], { format: "pt" });
  }
  await writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: totalBytes }, weight_map: weightMap }, null, 2) + "\n");
}

// <unk> <s> </s>, one token per byte, then the word boundary "▁": the least this vocabulary holds.
const WORD_BOUNDARY_ID = 3 + 256;
const SYNTHETIC_TOKENIZER_MIN_VOCAB = WORD_BOUNDARY_ID + 1;

/**
 * A Llama-style tokenizer.json (BPE with byte fallback, no merges) for a synthetic vocabulary, so
 * a synthetic folder serves text like a real one: text encodes to byte tokens and "▁" (259, the
 * space), and every id decodes (ids past those are the words "w<id>"). Ids 0-2 are <unk>, <s>,
 * </s> as in the config written beside it.
 */
export function syntheticTokenizerJson(vocabSize: number): Record<string, unknown> {
  if (vocabSize < SYNTHETIC_TOKENIZER_MIN_VOCAB) throw new RangeError(`a byte-fallback tokenizer needs a vocabulary of at least ${SYNTHETIC_TOKENIZER_MIN_VOCAB}, got ${vocabSize}`);
  const specials = ["<unk>", "<s>", "</s>"];
  const vocab: Record<string, number> = {};
  specials.forEach((t, id) => (vocab[t] = id));
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
  // Its own token, not three bytes: the decoder turns "▁" tokens back into spaces.
  vocab["\u2581"] = WORD_BOUNDARY_ID;
  for (let id = SYNTHETIC_TOKENIZER_MIN_VOCAB; id < vocabSize; id++) vocab[`\u2581w${id}`] = id;
  const special = (content: string, id: number) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: specials.map((t, id) => special(t, id)),
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "\u2581" },
        { type: "Replace", pattern: { String: " " }, content: "\u2581" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "<s>", type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [{ type: "Replace", pattern: { String: "\u2581" }, content: " " }, { type: "ByteFallback" }, { type: "Fuse" }, { type: "Strip", content: " ", start: 1, stop: 0 }],
    },
    model: { type: "BPE", dropout: null, unk_token: "<unk>", continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: [] },
  };
}
