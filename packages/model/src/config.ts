import { ModelFormatError } from "./errors.ts";

export interface ModelConfig {
  format: "llama2c" | "hf";
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  /** llama2.c checkpoints rotate interleaved pairs (2i, 2i+1); HF Llama rotates halves (i, i + headDim/2). */
  ropeStyle: "interleaved" | "rotate-half";
  /** -1 when the model declares none. */
  bosTokenId: number;
  eosTokenIds: number[];
  /** Each position attends to at most this many positions (itself included). */
  slidingWindow?: number;
}

/** KV cache bytes one token occupies across `numLayers` layers (K and V, GQA-aware). */
export function kvBytesPerToken(config: ModelConfig, numLayers: number, bytesPerElement: number): number {
  return 2 * numLayers * config.numKvHeads * config.headDim * bytesPerElement;
}

/** Shape of a llama2.c checkpoint header (legacy version 0: 7 × int32). */
export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  /** Negative in the file when the classifier is stored separately. */
  vocabSize: number;
  seqLen: number;
}

export function llama2cConfig(h: Llama2cHeader): ModelConfig {
  return {
    format: "llama2c",
    hiddenSize: h.dim,
    intermediateSize: h.hiddenDim,
    numLayers: h.nLayers,
    numHeads: h.nHeads,
    numKvHeads: h.nKvHeads,
    headDim: h.dim / h.nHeads,
    vocabSize: Math.abs(h.vocabSize),
    maxPositionEmbeddings: h.seqLen,
    // run.c hard-codes these.
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    tieWordEmbeddings: h.vocabSize > 0,
    ropeStyle: "interleaved",
    bosTokenId: 1,
    // The model emits BOS to end a story and run.c stops there, so BOS is an end token too.
    eosTokenIds: [2, 1],
  };
}

type Json = Record<string, unknown>;

function asObject(value: unknown, what: string): Json {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ModelFormatError(`${what} must be a JSON object`);
  }
  return value as Json;
}

function positiveInt(obj: Json, key: string, what: string): number {
  const v = obj[key];
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new ModelFormatError(`${what}: "${key}" must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function optionalNumber(obj: Json, key: string, what: string): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new ModelFormatError(`${what}: "${key}" must be a number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function tokenIds(v: unknown): number[] | undefined {
  if (typeof v === "number" && Number.isInteger(v)) return [v];
  if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "number" && Number.isInteger(x))) {
    return v as number[];
  }
  return undefined;
}

/**
 * Special token ids the way transformers resolves them: generation_config.json wins over config.json
 * (it is where several end tokens are listed).
 */
export function hfSpecialTokens(configJson: unknown, generationConfig?: unknown): { bosTokenId: number; eosTokenIds: number[] } {
  const cfg = asObject(configJson, "config.json");
  const gen = generationConfig === undefined ? {} : asObject(generationConfig, "generation_config.json");
  const bos = tokenIds(gen.bos_token_id) ?? tokenIds(cfg.bos_token_id);
  const eos = tokenIds(gen.eos_token_id) ?? tokenIds(cfg.eos_token_id) ?? [];
  return { bosTokenId: bos ? bos[0] : -1, eosTokenIds: eos };
}

/** A Hugging Face Llama-family config.json (plus optional generation_config.json) as a ModelConfig. */
export function parseHfConfig(configJson: unknown, generationConfig?: unknown): ModelConfig {
  const what = "config.json";
  const c = asObject(configJson, what);
  // The reference pass has no biases and only SiLU gating; refuse rather than compute something else.
  if (c.attention_bias === true || c.mlp_bias === true) {
    throw new ModelFormatError(`${what}: attention/MLP biases are not supported`);
  }
  const act = c.hidden_act ?? c.hidden_activation;
  if (act !== undefined && act !== "silu") {
    throw new ModelFormatError(`${what}: hidden_act "${String(act)}" is not supported (only silu)`);
  }
  const hiddenSize = positiveInt(c, "hidden_size", what);
  const numHeads = positiveInt(c, "num_attention_heads", what);
  const numKvHeads = c.num_key_value_heads == null ? numHeads : positiveInt(c, "num_key_value_heads", what);
  const headDim = c.head_dim == null ? hiddenSize / numHeads : positiveInt(c, "head_dim", what);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ModelFormatError(`${what}: head_dim ${headDim} must be an even integer`);
  }
  if (numHeads % numKvHeads !== 0) {
    throw new ModelFormatError(`${what}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  }
  // Qwen2-style configs carry a sliding_window that is switched off by use_sliding_window.
  const window = c.use_sliding_window === false ? undefined : optionalNumber(c, "sliding_window", what);
  const { bosTokenId, eosTokenIds } = hfSpecialTokens(configJson, generationConfig);
  const config: ModelConfig = {
    format: "hf",
    hiddenSize,
    intermediateSize: positiveInt(c, "intermediate_size", what),
    numLayers: positiveInt(c, "num_hidden_layers", what),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: positiveInt(c, "vocab_size", what),
    maxPositionEmbeddings: c.max_position_embeddings == null ? 2048 : positiveInt(c, "max_position_embeddings", what),
    rmsNormEps: optionalNumber(c, "rms_norm_eps", what) ?? 1e-6,
    ropeTheta: optionalNumber(c, "rope_theta", what) ?? 10000,
    tieWordEmbeddings: c.tie_word_embeddings === true,
    ropeStyle: "rotate-half",
    bosTokenId,
    eosTokenIds,
  };
  if (window !== undefined) config.slidingWindow = window;
  return config;
}
