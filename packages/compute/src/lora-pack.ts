import { layerTensorShape, type LoraAdapter, type LoraModule, type ModelConfig } from "@strata/model";

// The stage graph's LoRA inputs: each is every layer's matrices stacked, [layers, ...].
// Projections that share an input are fused in the graph (q/k/v, gate/up), so their adapters
// are too: A side by side, B block-diagonal.
export const LORA_IO = {
  qkvA: "lora_qkv_a",
  qkvB: "lora_qkv_b",
  oA: "lora_o_a",
  oB: "lora_o_b",
  guA: "lora_gu_a",
  guB: "lora_gu_b",
  downA: "lora_down_a",
  downB: "lora_down_b",
} as const;

export type LoraInput = keyof typeof LORA_IO;

interface LoraGroup {
  a: LoraInput;
  b: LoraInput;
  modules: LoraModule[];
}

// Graph order: which fused projection each group of modules updates.
export const LORA_GROUPS: readonly LoraGroup[] = [
  { a: "qkvA", b: "qkvB", modules: ["wq", "wk", "wv"] },
  { a: "oA", b: "oB", modules: ["wo"] },
  { a: "guA", b: "guB", modules: ["wGate", "wUp"] },
  { a: "downA", b: "downB", modules: ["wDown"] },
];

// [out, in] of a module's weight, as the model package lays it out.
function moduleDims(c: ModelConfig, m: LoraModule): { inDim: number; out: number } {
  const [out, inDim] = layerTensorShape(c, m);
  return { inDim, out };
}

/** [layers, in, modules * R] and [layers, modules * R, sum of outs] for each group, keyed by input name. */
export function loraInputShapes(c: ModelConfig, layers: number, maxRank: number): Record<LoraInput, number[]> {
  const shapes = {} as Record<LoraInput, number[]>;
  for (const g of LORA_GROUPS) {
    const inDim = moduleDims(c, g.modules[0]).inDim;
    const outs = g.modules.reduce((s, m) => s + moduleDims(c, m).out, 0);
    shapes[g.a] = [layers, inDim, g.modules.length * maxRank];
    shapes[g.b] = [layers, g.modules.length * maxRank, outs];
  }
  return shapes;
}

/** Throws a RangeError unless a stage of `layers` layers built for `maxRank` can serve `adapter`. */
export function checkLoraAdapter(adapter: LoraAdapter, layers: number, maxRank: number): void {
  if (maxRank === 0) throw new RangeError("this stage was loaded without LoRA support (max LoRA rank 0)");
  if (adapter.rank > maxRank) throw new RangeError(`adapter rank ${adapter.rank} exceeds the stage's max LoRA rank ${maxRank}`);
  if (adapter.layers.length !== layers) throw new RangeError(`adapter has ${adapter.layers.length} layers, the stage ${layers}`);
}

/**
 * An adapter (or none: zeros, the base model) as the stage graph's LoRA inputs, padded to
 * maxRank. `queryScale` is the 1/sqrt(head_dim) the graph folds into the query weights; the q
 * update is scaled the same way.
 */
export function packLoraAdapter(c: ModelConfig, layers: number, maxRank: number, queryScale: number, adapter?: LoraAdapter): Record<LoraInput, Float32Array> {
  if (adapter) checkLoraAdapter(adapter, layers, maxRank);
  const shapes = loraInputShapes(c, layers, maxRank);
  const packed = {} as Record<LoraInput, Float32Array>;
  for (const g of LORA_GROUPS) {
    const [, inDim, cols] = shapes[g.a];
    const [, , outs] = shapes[g.b];
    const a = new Float32Array(layers * inDim * cols);
    const b = new Float32Array(layers * cols * outs);
    if (adapter) {
      for (let l = 0; l < layers; l++) {
        let outOffset = 0;
        g.modules.forEach((m, j) => {
          const { out } = moduleDims(c, m);
          const pair = adapter.layers[l][m];
          if (pair) {
            const r = adapter.rank;
            const scale = m === "wq" ? queryScale : 1;
            for (let k = 0; k < r; k++) {
              const col = j * maxRank + k;
              for (let i = 0; i < inDim; i++) a[(l * inDim + i) * cols + col] = pair.a[k * inDim + i];
              for (let o = 0; o < out; o++) b[(l * cols + col) * outs + outOffset + o] = pair.b[o * r + k] * scale;
            }
          }
          outOffset += out;
        });
      }
    }
    packed[g.a] = a;
    packed[g.b] = b;
  }
  return packed;
}
