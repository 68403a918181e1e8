import type { ModelConfig } from "./config.ts";
import { LayerRangeError } from "./errors.ts";

/** One decoder layer, every matrix row-major [out, in] as stored. */
export interface LayerWeights {
  attnNorm: Float32Array;
  /** [numHeads*headDim, hidden] */
  wq: Float32Array;
  /** [numKvHeads*headDim, hidden] */
  wk: Float32Array;
  /** [numKvHeads*headDim, hidden] */
  wv: Float32Array;
  /** [hidden, numHeads*headDim] */
  wo: Float32Array;
  ffnNorm: Float32Array;
  /** [intermediate, hidden] */
  wGate: Float32Array;
  /** [intermediate, hidden] */
  wUp: Float32Array;
  /** [hidden, intermediate] */
  wDown: Float32Array;
}

export const LAYER_TENSORS = ["attnNorm", "wq", "wk", "wv", "wo", "ffnNorm", "wGate", "wUp", "wDown"] as const satisfies readonly (keyof LayerWeights)[];
export type LayerTensor = (typeof LAYER_TENSORS)[number];

export interface StageWeights {
  config: ModelConfig;
  layerStart: number;
  layerEnd: number;
  /** layers[i] is model layer layerStart + i. */
  layers: LayerWeights[];
  /** [vocab, hidden], present when requested. */
  embedding?: Float32Array;
  finalNorm?: Float32Array;
  /** [vocab, hidden]; when tied, the embedding matrix itself (same data). */
  lmHead?: Float32Array;
}

export interface LoadProgress {
  bytesLoaded: number;
  bytesTotal: number;
}

export interface LoadStageOptions {
  layerStart: number;
  layerEnd: number;
  withEmbedding: boolean;
  withHead: boolean;
  onProgress?: (p: LoadProgress) => void;
}

export interface ModelSource {
  dir: string;
  config: ModelConfig;
  /** Reads only the byte ranges of the requested tensors, never the whole file. */
  loadStage(opts: LoadStageOptions): Promise<StageWeights>;
  /** Weight-file bytes read by this source so far, headers included. */
  bytesRead(): number;
  close(): Promise<void>;
}

/** Row shape [rows, cols] of each layer tensor for a config (norms are [1, hidden]). */
export function layerTensorShape(c: ModelConfig, t: LayerTensor): [number, number] {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  switch (t) {
    case "attnNorm":
    case "ffnNorm":
      return [1, c.hiddenSize];
    case "wq":
      return [q, c.hiddenSize];
    case "wk":
    case "wv":
      return [kv, c.hiddenSize];
    case "wo":
      return [c.hiddenSize, q];
    case "wGate":
    case "wUp":
      return [c.intermediateSize, c.hiddenSize];
    case "wDown":
      return [c.hiddenSize, c.intermediateSize];
  }
}

export function checkLayerRange(config: ModelConfig, layerStart: number, layerEnd: number): void {
  const ok = Number.isInteger(layerStart) && Number.isInteger(layerEnd) && layerStart >= 0 && layerEnd <= config.numLayers && layerStart < layerEnd;
  if (!ok) {
    throw new LayerRangeError(`layer range [${layerStart}, ${layerEnd}) is invalid: it must be a non-empty integer range within [0, ${config.numLayers}] (the model has ${config.numLayers} layers)`);
  }
}

/** Within each head, rows 0, 2, 4, … then 1, 3, 5, …: the permutation Hugging Face's Llama conversion applies. */
function permuteHeads(w: Float32Array, numHeads: number, headDim: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < numHeads; h++) {
    for (let r = 0; r < headDim; r++) {
      const from = h * headDim + (r < half ? 2 * r : 2 * (r - half) + 1);
      out.set(w.subarray(from * cols, (from + 1) * cols), (h * headDim + r) * cols);
    }
  }
  return out;
}

/**
 * Weights for a rotate-half RoPE implementation. Interleaved (llama2.c) q/k rows are permuted so that
 * rotating halves computes the same attention scores; rotate-half weights are returned unchanged.
 */
export function toRotateHalfLayout(w: StageWeights): StageWeights {
  const c = w.config;
  if (c.ropeStyle === "rotate-half") return w;
  return {
    ...w,
    config: { ...c, ropeStyle: "rotate-half" },
    layers: w.layers.map((l) => ({
      ...l,
      wq: permuteHeads(l.wq, c.numHeads, c.headDim, c.hiddenSize),
      wk: permuteHeads(l.wk, c.numKvHeads, c.headDim, c.hiddenSize),
    })),
  };
}
