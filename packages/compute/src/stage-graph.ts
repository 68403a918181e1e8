import type { LayerWeights, ModelConfig, StageWeights } from "@strata/model";
import { LORA_GROUPS, LORA_IO, loraInputShapes, type LoraInput } from "./lora-pack.ts";
import { GraphBuilder, MS_DOMAIN } from "./graph-builder.ts";

// Names of the stage graph's inputs and outputs, shared by the builder and the runner. Every
// tensor crossing session.run costs a few µs of marshalling, so small per-layer tensors travel
// packed in one.
export const STAGE_IO = {
  inputIds: "input_ids", // int64 [B, T], first stage
  hiddenIn: "hidden_in", // f32 [B, T, D], later stages
  positions: "position_ids", // int64 [B, T]
  mask: "attn_mask", // f32 [B, 1, T, Ps + P + T], additive, shared by every head (Ps: see sharedPastKv)
  // Past K or V of KV pool j as float32 [B, kv_heads, P, head_dim], head-major as Attention reads
  // it: input past_kv_<j> (pastKvPoolInput). One input per pool: splitting one packed tensor in
  // the graph copied it all again.
  pastKv: "past_kv",
  // Split attention only: the past every sequence of the step shares (the same physical blocks:
  // a cached prefix), K or V of pool j as float32 [kv_heads, Ps, head_dim], read once for the
  // whole batch: input shared_past_kv_<j> (sharedPastKvPoolInput). Ps may be 0. past_kv_<j> then
  // holds each sequence's positions from Ps on, and the mask's key axis is shared, own past, new.
  sharedPastKv: "shared_past_kv",
  lastIndex: "last_index", // int64 [B], rows of the flattened [B * T] batch whose logits are wanted
  hiddenOut: "hidden_out", // f32 [B, T, D], all but the last stage
  logits: "logits", // f32 [B, vocab], last stage
  // int64 [B], last stage: each row's highest logit (the lowest id among equals), what greedy
  // decoding takes; fetched alone, the logits never leave the graph.
  greedyToken: "greedy_token",
  newKv: "new_kv", // f32 [2 * layers * B, T, kv_heads * head_dim] (token-major), after RoPE, same order as past_kv
} as const;

/**
 * How a layer attends. "fused": one opset-23 Attention node, which takes the past K/V and must
 * also output it with the new rows appended (present K/V): a copy of the whole past per layer per
 * step. "split": scores against the past and the new keys separately (FusedMatMul, Concat,
 * Softmax, two MatMuls), the past read once where it lies, at ~19 more nodes a layer.
 */
export type AttentionForm = "fused" | "split";

/**
 * Split wherever a token's K/V are wide enough for the past's copy to outweigh 19 nodes. Measured
 * here (one process, decode steps/s): hidden 512, 4 KV heads of 64 (256 floats a token),
 * 4 layers at batch 16 with 1,056 tokens of past: fused 38.5, split 46.5, and two such
 * processes at once 32.6-34.6 against 45.1 each (the copies were contending for the memory
 * bus); at 48 tokens of past, 177 against 170. stories260K (4 KV heads of 8, 32 floats), 3
 * layers: batch 1, 32 tokens: 11,400 against 9,100; batch 16, 480 tokens: 1,137 against 1,226.
 */
export function defaultAttentionForm(config: Pick<ModelConfig, "numKvHeads" | "headDim">): AttentionForm {
  return config.numKvHeads * config.headDim >= 128 ? "split" : "fused";
}

/**
 * One ONNX graph for a whole stage: every layer of the range, over a padded batch [B, T] whose
 * past K/V has been gathered from the paged blocks. One session.run per step per stage keeps
 * onnxruntime's per-call cost out of the per-layer loop. Weights must be in rotate-half RoPE
 * layout (see toRotateHalfLayout).
 *
 * At small shapes onnxruntime's cost is per node (a few µs each), not per FLOP, so attention is
 * one opset-23 Attention node (grouped-query heads, additive mask, past K/V in the head-major
 * layout the KV store gathers into) instead of the ~20 reshapes, transposes, concats and matmuls
 * of writing it out: about 13 nodes a layer. Where a token's K/V are wide, the past's copy costs
 * more than those nodes and attention is written out (see AttentionForm).
 */
export function buildStageGraph(
  weights: StageWeights,
  opts: {
    firstStage: boolean;
    lastStage: boolean;
    /** > 0: LoRA inputs of this rank (see lora-pack.ts). */
    maxLoraRank?: number;
    /** Default: defaultAttentionForm(config). */
    attention?: AttentionForm;
  },
): Uint8Array {
  const { config } = weights;
  const D = config.hiddenSize;
  const H = config.numHeads;
  const KV = config.numKvHeads;
  const hd = config.headDim;
  const F = config.intermediateSize;
  const L = weights.layers.length;
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
  const positions = g.input(STAGE_IO.positions, "int64", ["B", "T"]);
  const [cosTable, sinTable] = ropeTables(config.maxPositionEmbeddings, hd, config.ropeTheta);
  const cosCache = g.weight("rope_cos", cosTable, [config.maxPositionEmbeddings, hd / 2]);
  const sinCache = g.weight("rope_sin", sinTable, [config.maxPositionEmbeddings, hd / 2]);
  const mask = g.input(STAGE_IO.mask, "float", ["B", 1, "T", "S"]);
  const pastParts = Array.from({ length: 2 * L }, (_, j) => g.input(pastKvPoolInput(j), "float", ["B", KV, "P", hd]));

  const splitForm = (opts.attention ?? defaultAttentionForm(config)) === "split";
  const sharedParts = splitForm ? Array.from({ length: 2 * L }, (_, j) => g.input(sharedPastKvPoolInput(j), "float", [KV, "Ps", hd])) : [];
  const split = splitForm ? splitAttentionShared(g, mask, sharedParts[0], pastParts[0], positions, H, KV, hd) : undefined;

  const epsilon = { float: config.rmsNormEps };
  const rmsNorm = (x: string, w: string): string => g.node("SimplifiedLayerNormalization", [x, w], { axis: -1, epsilon });
  // Residual add and RMSNorm in one kernel: returns [normed, sum].
  const addNorm = (x: string, residual: string, w: string): [string, string] => {
    const [normed, , , sum] = g.nodeMulti("SkipSimplifiedLayerNormalization", [x, residual, w], 4, { epsilon }, MS_DOMAIN);
    return [normed, sum];
  };
  const qkvSplit = g.ints([(H + KV) * hd, KV * hd]);
  const qkFlatSplit = g.ints([H * hd, KV * hd]);
  let pendingMlp: string | undefined;
  const mlpSplit = g.ints([F, F]);
  const newKv: string[] = [];
  const lora = loraInputs(g, config, L, opts.maxLoraRank ?? 0);
  // x @ W, plus x @ A @ B for the request's adapter when the stage serves adapters.
  const project = (x: string, w: string, layer: number, group: number): string => {
    const base = g.node("MatMul", [x, w]);
    if (!lora) return base;
    const [a, b] = lora[group];
    return g.node("Add", [base, g.node("MatMul", [g.node("MatMul", [x, a[layer]]), b[layer]])]);
  };

  weights.layers.forEach((layer: LayerWeights, i: number) => {
    const l = weights.layerStart + i;
    // 1/sqrt(head_dim) folded into the query rows: RoPE is linear, so scaling before it is exact.
    const wqScaled = layer.wq.map((x) => x / Math.sqrt(hd));
    const wqkv = g.weight(`l${l}.wqkv`, transposeConcat([wqScaled, layer.wk, layer.wv], D), [D, (H + 2 * KV) * hd]);
    const wo = g.weight(`l${l}.wo`, transpose(layer.wo, D, H * hd), [H * hd, D]);
    const wgu = g.weight(`l${l}.wgateup`, transposeConcat([layer.wGate, layer.wUp], D), [D, 2 * F]);
    const wdown = g.weight(`l${l}.wdown`, transpose(layer.wDown, D, F), [F, D]);
    const attnNorm = g.weight(`l${l}.attn_norm`, layer.attnNorm, [D]);
    const ffnNorm = g.weight(`l${l}.ffn_norm`, layer.ffnNorm, [D]);

    // The previous layer's MLP output joins the residual stream in the same kernel as this norm.
    let normed: string;
    if (pendingMlp) [normed, h] = addNorm(pendingMlp, h, attnNorm);
    else normed = rmsNorm(h, attnNorm);
    const qkv = project(normed, wqkv, i, 0);
    const [qkFlat, vFlat] = g.nodeMulti("Split", [qkv, qkvSplit], 2, { axis: -1 });
    const qkRotated = g.node("RotaryEmbedding", [qkFlat, positions, cosCache, sinCache], { num_heads: H + KV, interleaved: 0 }, undefined, MS_DOMAIN);
    const [qFlat, kFlat] = g.nodeMulti("Split", [qkRotated, qkFlatSplit], 2, { axis: -1 });
    newKv.push(kFlat, vFlat);
    // Query head j attends with KV head floor(j / G), as in Llama's grouped-query attention; the
    // 1/sqrt(head_dim) scale is already in wq. Present K/V (past + new) are required outputs when
    // a past is given; the new rows alone go out through new_kv.
    const attn = split
      ? splitAttention(g, split, qFlat, kFlat, vFlat, { k: sharedParts[2 * i], v: sharedParts[2 * i + 1] }, { k: pastParts[2 * i], v: pastParts[2 * i + 1] })
      : g.nodeMulti("Attention", [qFlat, kFlat, vFlat, mask, pastParts[2 * i], pastParts[2 * i + 1]], 3, { q_num_heads: H, kv_num_heads: KV, scale: { float: 1 } })[0];
    const [mlpIn, afterAttn] = addNorm(project(attn, wo, i, 1), h, ffnNorm);
    h = afterAttn;
    const gateUp = project(mlpIn, wgu, i, 2);
    const [gate, up] = g.nodeMulti("Split", [gateUp, mlpSplit], 2, { axis: -1 });
    const act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up]);
    pendingMlp = project(act, wdown, i, 3);
  });
  g.output(g.node("Concat", newKv, { axis: 0 }), STAGE_IO.newKv, "float", ["LB2", "T", KV * hd]);

  if (opts.lastStage) {
    if (!weights.finalNorm || !weights.lmHead) throw new Error("last stage needs the final norm and LM head");
    const lastIndex = g.input(STAGE_IO.lastIndex, "int64", ["B"]);
    const finalNorm = g.weight("final_norm", weights.finalNorm, [D]);
    const [normed] = addNorm(pendingMlp!, h, finalNorm);
    const rows = g.node("Gather", [g.node("Reshape", [normed, g.ints([-1, D])]), lastIndex], { axis: 0 }); // [B,D]
    const lmHead = g.weight("lm_head", transpose(weights.lmHead, config.vocabSize, D), [D, config.vocabSize]);
    const logits = g.nodeAsOutput("MatMul", [rows, lmHead], STAGE_IO.logits, "float", ["B", config.vocabSize]);
    // TopK of 1 prefers the lower index among equal values, as argmax does; ~0.3 ms for 16 rows
    // of 32,000 here, where ArgMax took ~0.45 ms and argmax in JS ~0.7 ms.
    const [, top] = g.nodeMulti("TopK", [logits, g.ints([1])], 2, { axis: -1, largest: 1, sorted: 1 });
    g.output(g.node("Reshape", [top, g.ints([-1])]), STAGE_IO.greedyToken, "int64", ["B"]);
  } else {
    g.output(g.node("Add", [pendingMlp!, h]), STAGE_IO.hiddenOut, "float", ["B", "T", D]);
  }
  return g.toBytes(`stage_${weights.layerStart}_${weights.layerEnd}`);
}

/** What every layer's split attention shares, computed once per step. */
interface SplitAttention {
  H: number;
  KV: number;
  hd: number;
  /** The additive mask with its rows repeated for each query head of a group: [B, 1, G * T, Ps + P + T]. */
  groupMask: string;
  /** [Ps, P, T]: where a row of scores splits into shared past, own past and new keys. */
  keySizes: string;
  /** Shapes for the shared past's GEMMs: [KV, B, G * T, Ps], [KV, B, G * T, hd] and [KV, B * G * T, Ps]. */
  sharedScoresShape: string;
  sharedOutShape: string;
  sharedProbsShape: string;
  /**
   * [B, KV, R, M, hd], [B, KV, R, M, P] and [B, KV, G * T, P]: a KV head's G * T query rows as R
   * products of M rows each against its own past (see splitAttention), and the scores back.
   */
  queryRowsShape: string;
  pastProbsShape: string;
  pastScoresShape: string;
}

function splitAttentionShared(g: GraphBuilder, mask: string, sharedK: string, pastK: string, positions: string, H: number, KV: number, hd: number): SplitAttention {
  const G = H / KV;
  const groupMask = g.node("Tile", [mask, g.ints([1, 1, G, 1])]);
  const Ps = g.node("Slice", [g.node("Shape", [sharedK]), g.ints([1]), g.ints([2])]);
  const P = g.node("Slice", [g.node("Shape", [pastK]), g.ints([2]), g.ints([3])]);
  const batchShape = g.node("Shape", [positions]);
  const B = g.node("Slice", [batchShape, g.ints([0]), g.ints([1])]);
  const T = g.node("Slice", [batchShape, g.ints([1]), g.ints([2])]);
  // Every dimension spelled out: Ps may be 0, and Reshape can infer no -1 beside a 0.
  const GT = g.node("Mul", [T, g.ints([G])]);
  // A decode step (T of 1) multiplies the own past once per query row (R = G products of M = 1
  // row), any other step once per KV head (R = 1, M = G * T).
  const R = g.node("Where", [g.node("Equal", [T, g.ints([1])]), g.ints([G]), g.ints([1])]);
  const M = g.node("Div", [GT, R]);
  return {
    H,
    KV,
    hd,
    groupMask,
    keySizes: g.node("Concat", [Ps, P, T], { axis: 0 }),
    sharedScoresShape: g.node("Concat", [g.ints([KV]), B, GT, Ps], { axis: 0 }),
    sharedOutShape: g.node("Concat", [g.ints([KV]), B, GT, g.ints([hd])], { axis: 0 }),
    sharedProbsShape: g.node("Concat", [g.ints([KV]), g.node("Mul", [B, GT]), Ps], { axis: 0 }),
    queryRowsShape: g.node("Concat", [B, g.ints([KV]), R, M, g.ints([hd])], { axis: 0 }),
    pastProbsShape: g.node("Concat", [B, g.ints([KV]), R, M, P], { axis: 0 }),
    pastScoresShape: g.node("Concat", [B, g.ints([KV]), GT, P], { axis: 0 }),
  };
}

/**
 * Grouped-query attention over the shared past, each sequence's own past and the new keys
 * separately, so each past is read once where it lies (no past + new concatenation copied out as
 * present K/V). The shared past is one GEMM per KV head for the whole batch: with 16 sequences
 * behind one 1,024-token system prompt, a layer reads its 2 MB of shared K/V once, not 16 times.
 */
function splitAttention(g: GraphBuilder, a: SplitAttention, qFlat: string, kFlat: string, vFlat: string, shared: { k: string; v: string }, past: { k: string; v: string }): string {
  const { H, KV, hd } = a;
  const G = H / KV;
  // Query head j uses KV head floor(j / G): [B, T, KV, G, hd] -> [B, KV, G * T, hd], row g * T + t.
  const q = g.node("Reshape", [g.node("Transpose", [g.node("Reshape", [qFlat, g.ints([0, 0, KV, G, hd])])], { perm: [0, 2, 3, 1, 4] }), g.ints([0, KV, -1, hd])]);
  const heads = (x: string) => g.node("Transpose", [g.node("Reshape", [x, g.ints([0, 0, KV, hd])])], { perm: [0, 2, 1, 3] }); // [B, KV, T, hd]
  const kNew = heads(kFlat);
  const vNew = heads(vFlat);
  // [B, KV, G * T, x] <-> [KV, B * G * T, x]: every sequence's query rows of a KV head as one matrix.
  // allowzero: a 0 in a shape is a 0 (an empty shared past), not "keep this dimension".
  const byHead = (x: string, shape: string) => g.node("Reshape", [g.node("Transpose", [x], { perm: [1, 0, 2, 3] }), shape], { allowzero: 1 });
  const byBatch = (x: string, shape: string) => g.node("Transpose", [g.node("Reshape", [x, shape], { allowzero: 1 })], { perm: [1, 0, 2, 3] });
  // The shared past's scores as (K · qᵀ)ᵀ, so the GEMM packs the batch's few query rows, not the
  // shared K (1 MB a layer behind a 1,024-token prompt on the bench model): a layer's scores at
  // batch 16 took 0.36 ms against 0.47 as q · Kᵀ in a stage's profile; a prefill step of 16 x 16
  // tokens took as long either way (207-222 vs 208-238 ms, 5 layers).
  const queryColumns = g.node("Transpose", [byHead(q, g.ints([KV, -1, hd]))], { perm: [0, 2, 1] });
  const sharedScores = byBatch(g.node("Transpose", [g.node("MatMul", [shared.k, queryColumns])], { perm: [0, 2, 1] }), a.sharedScoresShape);
  // The own past against a KV head's query rows as [B, KV, R, M, x] by [B, KV, 1, P, hd]. In a
  // decode step each of the G rows is a product of its own (R = G, M = 1): matrix-vector products,
  // which onnxruntime runs over the past where it lies. One GEMM of G rows per KV head packed
  // (copied) all of past K and V every layer and step: 16 sequences 1,064 tokens in on the bench
  // model, scores 2.1 -> 0.8 ms and weighted values 1.4 -> 0.7 ms a layer. A prefill chunk's G * T
  // rows stay one GEMM (R = 1): as G of T rows each, its scores took 7-22% longer.
  const queryRows = g.node("Reshape", [q, a.queryRowsShape]);
  const pastByRows = (x: string) => g.node("Unsqueeze", [x, g.ints([2])]);
  const pastScores = g.node("Reshape", [g.node("FusedMatMul", [queryRows, pastByRows(past.k)], { transB: 1 }, undefined, MS_DOMAIN), a.pastScoresShape], { allowzero: 1 });
  const newScores = g.node("FusedMatMul", [q, kNew], { transB: 1 }, undefined, MS_DOMAIN);
  const probs = g.node("Softmax", [g.node("Add", [g.node("Concat", [sharedScores, pastScores, newScores], { axis: -1 }), a.groupMask])], { axis: -1 });
  const [pShared, pPast, pNew] = g.nodeMulti("Split", [probs, a.keySizes], 3, { axis: -1 });
  const oShared = byBatch(g.node("MatMul", [byHead(pShared, a.sharedProbsShape), shared.v]), a.sharedOutShape);
  const oPast = g.node("Reshape", [g.node("MatMul", [g.node("Reshape", [pPast, a.pastProbsShape], { allowzero: 1 }), pastByRows(past.v)]), g.ints([0, 0, -1, hd])]);
  const o = g.node("Add", [g.node("Add", [oPast, g.node("MatMul", [pNew, vNew])]), oShared]); // [B, KV, G * T, hd]
  return g.node("Reshape", [g.node("Transpose", [g.node("Reshape", [o, g.ints([0, KV, G, -1, hd])])], { perm: [0, 3, 1, 2, 4] }), g.ints([0, 0, H * hd])]);
}

/** Per LORA_GROUPS entry, its A and B inputs split into one [1, ...] slice per layer; undefined without LoRA. */
function loraInputs(g: GraphBuilder, config: ModelConfig, L: number, maxRank: number): [string[], string[]][] | undefined {
  if (maxRank <= 0) return undefined;
  const shapes = loraInputShapes(config, L, maxRank);
  const perLayer = (input: LoraInput): string[] => {
    const [, rows, cols] = shapes[input];
    const stacked = g.input(LORA_IO[input], "float", ["L", rows, cols]);
    return L === 1 ? [stacked] : g.nodeMulti("Split", [stacked], L, { axis: 0, num_outputs: L });
  };
  return LORA_GROUPS.map((group) => [perLayer(group.a), perLayer(group.b)]);
}

/** The fp32 shared past K/V input of KV pool j (split attention only): f32 [kv_heads, Ps, head_dim]. */
export function sharedPastKvPoolInput(j: number): string {
  return `${STAGE_IO.sharedPastKv}_${j}`;
}

/** The fp32 past K/V input of KV pool j (layer j / 2; K when j is even, V when odd): f32 [B, kv_heads, P, head_dim]. */
export function pastKvPoolInput(j: number): string {
  return `${STAGE_IO.pastKv}_${j}`;
}

// cos/sin per position and frequency, the cache layout onnxruntime's RotaryEmbedding reads.
function ropeTables(maxPositions: number, headDim: number, theta: number): [Float32Array, Float32Array] {
  const half = headDim / 2;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * Math.pow(theta, (-2 * i) / headDim);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return [cos, sin];
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
