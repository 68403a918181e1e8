import * as ort from "onnxruntime-node";
import { toRotateHalfLayout, type StageWeights } from "@strata/model";
import { buildStageGraph, STAGE_IO } from "./stage-graph.ts";

export type Device = "cpu" | "cuda";

/** One sequence's share of a micro-batch, with the physical blocks that hold its KV on this stage. */
export interface StageChunk {
  seqId: number;
  startPosition: number;
  numTokens: number;
  tokenIds?: ArrayLike<number>; // first stage only
  blockTable: readonly number[]; // must cover [0, startPosition + numTokens)
}

export interface StageOutput {
  hidden?: Float32Array; // [totalTokens, hidden] packed in chunk order (all but the last stage)
  logits?: Float32Array; // [chunks, vocab]: each chunk's last position (last stage)
}

export interface StageEngineOptions {
  numBlocks: number;
  blockSizeTokens: number;
  firstStage: boolean;
  lastStage: boolean;
  device?: Device;
  intraOpThreads?: number;
}

const MASKED = -1e30;

/**
 * Runs one stage's layers over a micro-batch. Owns the stage's KV tensors: for every layer, K and V
 * pools shaped [numBlocks, blockSizeTokens, kvHeads, headDim], so a block's tokens are contiguous
 * and gathering a sequence is one copy per block.
 */
export class StageEngine {
  readonly kvK: Float32Array[];
  readonly kvV: Float32Array[];
  readonly hiddenSize: number;
  readonly vocabSize: number;
  private readonly kvRow: number; // floats per token per layer

  private constructor(
    private readonly session: ort.InferenceSession,
    private readonly weights: StageWeights,
    private readonly opts: StageEngineOptions,
  ) {
    const c = weights.config;
    this.hiddenSize = c.hiddenSize;
    this.vocabSize = c.vocabSize;
    this.kvRow = c.numKvHeads * c.headDim;
    const poolFloats = opts.numBlocks * opts.blockSizeTokens * this.kvRow;
    const layerCount = weights.layerEnd - weights.layerStart;
    this.kvK = Array.from({ length: layerCount }, () => new Float32Array(poolFloats));
    this.kvV = Array.from({ length: layerCount }, () => new Float32Array(poolFloats));
  }

  static async create(weights: StageWeights, opts: StageEngineOptions): Promise<StageEngine> {
    const rotated = toRotateHalfLayout(weights);
    const graph = buildStageGraph(rotated, { firstStage: opts.firstStage, lastStage: opts.lastStage });
    const session = await ort.InferenceSession.create(graph, {
      executionProviders: [opts.device ?? "cpu"],
      graphOptimizationLevel: "all",
      executionMode: "sequential",
      intraOpNumThreads: opts.intraOpThreads ?? 1,
      interOpNumThreads: 1,
    });
    return new StageEngine(session, rotated, opts);
  }

  get layerCount(): number {
    return this.weights.layerEnd - this.weights.layerStart;
  }

  async forward(chunks: readonly StageChunk[], hidden?: Float32Array): Promise<StageOutput> {
    const { blockSizeTokens: bs, firstStage, lastStage } = this.opts;
    const D = this.hiddenSize;
    const hd = this.weights.config.headDim;
    const row = this.kvRow;
    const B = chunks.length;
    const T = Math.max(...chunks.map((c) => c.numTokens));
    // Past length padded to whole blocks: fewer distinct shapes, so onnxruntime's per-shape memory
    // plans are reused from step to step instead of rebuilt for every new length.
    const P = Math.ceil(Math.max(...chunks.map((c) => c.startPosition)) / bs) * bs;
    const S = P + T;
    const uniform = chunks.every((c) => c.numTokens === T);

    const feeds: Record<string, ort.Tensor> = {};
    if (firstStage) {
      const ids = new BigInt64Array(B * T);
      chunks.forEach((c, b) => {
        const tokens = c.tokenIds!;
        for (let t = 0; t < c.numTokens; t++) ids[b * T + t] = BigInt(tokens[t]);
      });
      feeds[STAGE_IO.inputIds] = new ort.Tensor("int64", ids, [B, T]);
    } else {
      feeds[STAGE_IO.hiddenIn] = new ort.Tensor("float32", uniform ? hidden! : padRows(hidden!, chunks, T, D), [B, T, D]);
    }

    const G = this.weights.config.numHeads / this.weights.config.numKvHeads;
    const positions = new BigInt64Array(B * T);
    const mask = new Float32Array(B * T * G * S).fill(MASKED);
    chunks.forEach((c, b) => {
      for (let t = 0; t < T; t++) {
        // Padded slots repeat the last real position; their outputs are never read.
        positions[b * T + t] = BigInt(c.startPosition + Math.min(t, c.numTokens - 1));
        // Past keys of this sequence, then this step's keys up to and including the query. Padded
        // query rows see only finite keys, so nothing turns into NaN.
        for (let g = 0; g < G; g++) {
          const maskRow = ((b * T + t) * G + g) * S;
          mask.fill(0, maskRow, maskRow + c.startPosition);
          mask.fill(0, maskRow + P, maskRow + P + t + 1);
        }
      }
    });
    feeds[STAGE_IO.positions] = new ort.Tensor("int64", positions, [B, T]);
    feeds[STAGE_IO.mask] = new ort.Tensor("float32", mask, [B, 1, T * G, S]);

    // Every layer's past K and V gathered from the blocks into one tensor, layer-major, K then V.
    const L = this.layerCount;
    const perPart = B * P * row;
    const past = new Float32Array(2 * L * perPart);
    for (let l = 0; l < L; l++) {
      this.gather(this.kvK[l], chunks, P, bs, row, past, 2 * l * perPart);
      this.gather(this.kvV[l], chunks, P, bs, row, past, (2 * l + 1) * perPart);
    }
    feeds[STAGE_IO.pastKv] = new ort.Tensor("float32", past, [2 * L * B, P, this.weights.config.numKvHeads, hd]);
    if (lastStage) {
      feeds[STAGE_IO.lastIndex] = new ort.Tensor(
        "int64",
        BigInt64Array.from(chunks, (c, b) => BigInt(b * T + c.numTokens - 1)),
        [B],
      );
    }

    const out = await this.session.run(feeds);
    const fresh = out[STAGE_IO.newKv].data as Float32Array;
    const perNew = B * T * row;
    for (let l = 0; l < L; l++) {
      this.scatter(this.kvK[l], fresh.subarray(2 * l * perNew, (2 * l + 1) * perNew), chunks, T, bs, row);
      this.scatter(this.kvV[l], fresh.subarray((2 * l + 1) * perNew, (2 * l + 2) * perNew), chunks, T, bs, row);
    }
    if (lastStage) return { logits: out[STAGE_IO.logits].data as Float32Array };
    const padded = out[STAGE_IO.hiddenOut].data as Float32Array;
    return { hidden: uniform ? padded : packRows(padded, chunks, T, D) };
  }

  // Copy each sequence's past K or V out of its blocks into out[offset..] as [B, P, kvHeads, headDim].
  private gather(pool: Float32Array, chunks: readonly StageChunk[], P: number, bs: number, row: number, out: Float32Array, offset: number): void {
    chunks.forEach((c, b) => {
      for (let start = 0; start < c.startPosition; start += bs) {
        const n = Math.min(bs, c.startPosition - start);
        const src = c.blockTable[start / bs] * bs * row;
        out.set(pool.subarray(src, src + n * row), offset + (b * P + start) * row);
      }
    });
  }

  // Write this step's K or V ([B, T, kvHeads, headDim]) into the sequences' blocks, a block's run at a time.
  private scatter(pool: Float32Array, values: Float32Array, chunks: readonly StageChunk[], T: number, bs: number, row: number): void {
    chunks.forEach((c, b) => {
      let t = 0;
      while (t < c.numTokens) {
        const pos = c.startPosition + t;
        const offset = pos % bs;
        const n = Math.min(bs - offset, c.numTokens - t);
        const dst = (c.blockTable[Math.floor(pos / bs)] * bs + offset) * row;
        const src = (b * T + t) * row;
        pool.set(values.subarray(src, src + n * row), dst);
        t += n;
      }
    });
  }
}

function padRows(packed: Float32Array, chunks: readonly StageChunk[], T: number, D: number): Float32Array {
  const out = new Float32Array(chunks.length * T * D);
  let offset = 0;
  chunks.forEach((c, b) => {
    out.set(packed.subarray(offset * D, (offset + c.numTokens) * D), b * T * D);
    offset += c.numTokens;
  });
  return out;
}

function packRows(padded: Float32Array, chunks: readonly StageChunk[], T: number, D: number): Float32Array {
  const total = chunks.reduce((a, c) => a + c.numTokens, 0);
  const out = new Float32Array(total * D);
  let offset = 0;
  chunks.forEach((c, b) => {
    out.set(padded.subarray(b * T * D, (b * T + c.numTokens) * D), offset * D);
    offset += c.numTokens;
  });
  return out;
}
