import type { LayerWeights, StageWeights } from "@strata/model";
import { GraphBuilder } from "./graph-builder.ts";

// Names of the stage graph's inputs and outputs, shared by the builder and the runner.
export const STAGE_IO = {
  inputIds: "input_ids", // int64 [B, T], first stage
  hiddenIn: "hidden_in", // f32 [B, T, D], later stages
  cos: "rope_cos", // f32 [B, T, 1, head_dim], rotate-half layout
  sin: "rope_sin",
  mask: "attn_mask", // f32 [B, 1, 1, T, P + T], additive
  lastIndex: "last_index", // int64 [B], rows of the flattened [B * T] batch whose logits are wanted
  hiddenOut: "hidden_out", // f32 [B, T, D], all but the last stage
  logits: "logits", // f32 [B, vocab], last stage
  pastK: (layer: number) => `past_k_${layer}`, // f32 [B, P, kv_heads, head_dim]
  pastV: (layer: number) => `past_v_${layer}`,
  newK: (layer: number) => `new_k_${layer}`, // f32 [B, T, kv_heads, head_dim], after RoPE
  newV: (layer: number) => `new_v_${layer}`,
} as const;

/**
 * One ONNX graph for a whole stage: every layer of the range, over a padded batch [B, T] whose
 * past K/V has been gathered from the paged blocks into [B, P, kv_heads, head_dim]. One
 * session.run per step per stage keeps onnxruntime's per-call cost out of the per-layer loop.
 * Weights must be in rotate-half RoPE layout (see toRotateHalfLayout).
 */
export function buildStageGraph(weights: StageWeights, opts: { firstStage: boolean; lastStage: boolean }): Uint8Array {
  const { config } = weights;
  const D = config.hiddenSize;
  const H = config.numHeads;
  const KV = config.numKvHeads;
  const hd = config.headDim;
  const G = H / KV;
  const F = config.intermediateSize;
  const g = new GraphBuilder();

  let h: string;
  if (opts.firstStage) {
    if (!weights.embedding) throw new Error("first stage needs the embedding matrix");
    const ids = g.input(STAGE_IO.inputIds, "int64", ["B", "T"]);
    const table = g.weight("embed_tokens", weights.embedding, [config.vocabSize, D]);
    h = g.node("Gather", [table, ids], { axis: 0 });
  } else {
    h = g.input(STAGE_IO.hiddenIn, "float", ["B", "T", D]);
  }
  const cos = g.input(STAGE_IO.cos, "float", ["B", "T", 1, hd]);
  const sin = g.input(STAGE_IO.sin, "float", ["B", "T", 1, hd]);
  const mask = g.input(STAGE_IO.mask, "float", ["B", 1, 1, "T", "S"]);

  const eps = g.scalar(config.rmsNormEps);
  const two = g.scalar(2);
  const lastAxis = g.ints([-1]);
  const rmsNorm = (x: string, w: string): string => {
    // The Pow/ReduceMean/Add/Sqrt/Div/Mul shape is what onnxruntime fuses into SimplifiedLayerNormalization.
    const meanSquare = g.node("ReduceMean", [g.node("Pow", [x, two]), lastAxis], { keepdims: 1 });
    const rms = g.node("Sqrt", [g.node("Add", [meanSquare, eps])]);
    return g.node("Mul", [g.node("Div", [x, rms]), w]);
  };
  const halves = g.ints([hd / 2, hd / 2]);
  const rope = (x: string): string => {
    const [x1, x2] = g.nodeMulti("Split", [x, halves], 2, { axis: -1 });
    const rotated = g.node("Concat", [g.node("Neg", [x2]), x1], { axis: -1 });
    return g.node("Add", [g.node("Mul", [x, cos]), g.node("Mul", [rotated, sin])]);
  };
  const scale = g.scalar(1 / Math.sqrt(hd));
  const qkvSplit = g.ints([H * hd, KV * hd, KV * hd]);
  const mlpSplit = g.ints([F, F]);
  const shapeHeadsQ = g.ints([0, 0, KV, G, hd]);
  const shapeHeadsKv = g.ints([0, 0, KV, hd]);
  const shapeMerged = g.ints([0, 0, H * hd]);
  const axis2 = g.ints([2]);

  weights.layers.forEach((layer: LayerWeights, i: number) => {
    const l = weights.layerStart + i;
    const wqkv = g.weight(`l${l}.wqkv`, transposeConcat([layer.wq, layer.wk, layer.wv], D), [D, (H + 2 * KV) * hd]);
    const wo = g.weight(`l${l}.wo`, transpose(layer.wo, D, H * hd), [H * hd, D]);
    const wgu = g.weight(`l${l}.wgateup`, transposeConcat([layer.wGate, layer.wUp], D), [D, 2 * F]);
    const wdown = g.weight(`l${l}.wdown`, transpose(layer.wDown, D, F), [F, D]);
    const attnNorm = g.weight(`l${l}.attn_norm`, layer.attnNorm, [D]);
    const ffnNorm = g.weight(`l${l}.ffn_norm`, layer.ffnNorm, [D]);

    const qkv = g.node("MatMul", [rmsNorm(h, attnNorm), wqkv]);
    const [qFlat, kFlat, vFlat] = g.nodeMulti("Split", [qkv, qkvSplit], 3, { axis: -1 });
    const q = rope(g.node("Reshape", [qFlat, g.ints([0, 0, H, hd])])); // [B,T,H,hd]
    const k = rope(g.node("Reshape", [kFlat, shapeHeadsKv])); // [B,T,KV,hd]
    const v = g.node("Reshape", [vFlat, shapeHeadsKv]);
    g.output(k, STAGE_IO.newK(i), "float", ["B", "T", KV, hd]);
    g.output(v, STAGE_IO.newV(i), "float", ["B", "T", KV, hd]);

    const pastK = g.input(STAGE_IO.pastK(i), "float", ["B", "P", KV, hd]);
    const pastV = g.input(STAGE_IO.pastV(i), "float", ["B", "P", KV, hd]);
    const kAll = g.node("Concat", [pastK, k], { axis: 1 }); // [B,S,KV,hd]
    const vAll = g.node("Concat", [pastV, v], { axis: 1 });
    const kT = g.node("Unsqueeze", [g.node("Transpose", [kAll], { perm: [0, 2, 3, 1] }), axis2]); // [B,KV,1,hd,S]
    const vT = g.node("Unsqueeze", [g.node("Transpose", [vAll], { perm: [0, 2, 1, 3] }), axis2]); // [B,KV,1,S,hd]
    // Query heads grouped by the KV head they share (GQA): [B,KV,G,T,hd].
    const qG = g.node("Transpose", [g.node("Reshape", [q, shapeHeadsQ])], { perm: [0, 2, 3, 1, 4] });
    const scores = g.node("Add", [g.node("Mul", [g.node("MatMul", [qG, kT]), scale]), mask]); // [B,KV,G,T,S]
    const probs = g.node("Softmax", [scores], { axis: -1 });
    const attn = g.node("Transpose", [g.node("MatMul", [probs, vT])], { perm: [0, 3, 1, 2, 4] }); // [B,T,KV,G,hd]
    h = g.node("Add", [h, g.node("MatMul", [g.node("Reshape", [attn, shapeMerged]), wo])]);

    const gateUp = g.node("MatMul", [rmsNorm(h, ffnNorm), wgu]);
    const [gate, up] = g.nodeMulti("Split", [gateUp, mlpSplit], 2, { axis: -1 });
    const act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up]);
    h = g.node("Add", [h, g.node("MatMul", [act, wdown])]);
  });

  if (opts.lastStage) {
    if (!weights.finalNorm || !weights.lmHead) throw new Error("last stage needs the final norm and LM head");
    const lastIndex = g.input(STAGE_IO.lastIndex, "int64", ["B"]);
    const rows = g.node("Gather", [g.node("Reshape", [h, g.ints([-1, D])]), lastIndex], { axis: 0 }); // [B,D]
    const finalNorm = g.weight("final_norm", weights.finalNorm, [D]);
    const lmHead = g.weight("lm_head", transpose(weights.lmHead, config.vocabSize, D), [D, config.vocabSize]);
    g.output(g.node("MatMul", [rmsNorm(rows, finalNorm), lmHead]), STAGE_IO.logits, "float", ["B", config.vocabSize]);
  } else {
    g.output(h, STAGE_IO.hiddenOut, "float", ["B", "T", D]);
  }
  return g.toBytes(`stage_${weights.layerStart}_${weights.layerEnd}`);
}

// [rows, cols] row-major -> [cols, rows], so x @ W^T becomes a plain MatMul.
function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = m[r * cols + c];
  }
  return out;
}

// Several [out_i, inDim] matrices sharing an input -> one [inDim, sum(out_i)] matrix (fused projection).
function transposeConcat(mats: Float32Array[], inDim: number): Float32Array {
  const outDims = mats.map((m) => m.length / inDim);
  const total = outDims.reduce((a, b) => a + b, 0);
  const out = new Float32Array(inDim * total);
  let colOffset = 0;
  mats.forEach((m, idx) => {
    const rows = outDims[idx];
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < inDim; c++) out[c * total + colOffset + r] = m[r * inDim + c];
    }
    colOffset += rows;
  });
  return out;
}
