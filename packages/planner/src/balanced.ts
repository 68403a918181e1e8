import { PartitionError, type Partition } from "./partition.ts";

/** The shape fields a stage's compute depends on (a subset of the model config). */
export interface LayerCostShape {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
}

/**
 * The decode load a partition is balanced for. A decode step reads every weight of a stage once
 * for the whole micro-batch, and each sequence's past K/V once per layer: which of the two
 * dominates (and so how many layers the LM head is worth) depends on the batch and the context.
 */
export interface PlanLoad {
  /** Sequences in one micro-batch. */
  batch: number;
  /** Tokens each sequence attends over (prompt plus output so far). */
  contextTokens: number;
  /**
   * Of those, the leading tokens every sequence of a micro-batch shares in the same physical
   * blocks (a prefix-cached system prompt), read once per micro-batch, not once per sequence,
   * where the stage reads a shared past (split attention). Default 0.
   */
  sharedPrefixTokens?: number;
  /** Bytes of one stored K or V element: 4 fp32, 2 fp16, 1 int8 or fp8. */
  kvBytesPerElement: number;
  /** Bytes of one weight as the stage computes with it. */
  weightBytesPerElement: number;
}

/**
 * The default: 16 sequences a micro-batch over 1,024 tokens of context, fp32. Operators plan for
 * their own load with `--plan-batch` / `--plan-context-tokens`.
 */
export const DEFAULT_PLAN_LOAD: PlanLoad = { batch: 16, contextTokens: 1024, kvBytesPerElement: 4, weightBytesPerElement: 4 };

/** Weights of one transformer layer's projections and MLP (its multiply-adds per token). */
export function layerWeightCount(s: LayerCostShape): number {
  const qkv = s.hiddenSize * (s.numHeads + 2 * s.numKvHeads) * s.headDim;
  const out = s.numHeads * s.headDim * s.hiddenSize;
  const mlp = 3 * s.hiddenSize * s.intermediateSize;
  return qkv + out + mlp;
}

/** Weights of the LM head, which only the last stage runs. */
export function lmHeadWeightCount(s: LayerCostShape): number {
  return s.hiddenSize * s.vocabSize;
}

/**
 * Bytes one layer reads in a decode step: its weights, every sequence's own past K and V, and the
 * shared prefix's K and V once.
 */
export function layerDecodeBytes(s: LayerCostShape, load: PlanLoad): number {
  const shared = load.sharedPrefixTokens ?? 0;
  const kvPerToken = 2 * s.numKvHeads * s.headDim * load.kvBytesPerElement;
  return layerWeightCount(s) * load.weightBytesPerElement + (load.batch * (load.contextTokens - shared) + shared) * kvPerToken;
}

/** Bytes the LM head reads in a decode step: its weights, once for the micro-batch. */
export function lmHeadDecodeBytes(s: LayerCostShape, load: PlanLoad): number {
  return lmHeadWeightCount(s) * load.weightBytesPerElement;
}

/**
 * The contiguous partition whose busiest stage does the least work in a decode step of `load`,
 * counting the LM head on the last stage. Decode is bound by memory traffic, not multiply-adds, on
 * CPUs and GPUs alike, so work is bytes read. On the bench's synthetic model (hidden 512, 8
 * layers, vocab 32000) over 2 workers with 2 micro-batches of 16 in flight, this picks [0,6)
 * [6,8) at 48 tokens of context (the 32k head worth ~5 layers), which kept both stages ~70% busy
 * where [0,7) [7,8) left them 81% / 65%; and [0,5) [5,8) at 512 and 1,040 tokens, which ran ~17%
 * faster than [0,7) [7,8) and ~15% faster than [0,6) [6,8) at 512, ~13% faster than [0,4) [4,8)
 * at 1,040. Counting multiply-adds put 7 layers before the head at every length. With one
 * micro-batch per stage in flight, the busiest stage sets the pace. Ties go to the more even split
 * by layers. Behind a shared 1,024-token system prompt (32 tokens of each sequence's own past at
 * 1,056), whose K/V are read once per micro-batch, this picks [0,6) [6,8): its stages' decode
 * steps took 14.4 / 12.6 ms against [0,5) [5,8)'s 11.4 / 14.2 (a 2-core Xeon), and the two ran
 * within 1-2% of each other (684-724 against 680-719 tok/s, 3 pairs): a layer is too coarse to
 * balance them closer. Counted per sequence, that load planned [0,5) [5,8); at 800 tokens of each
 * sequence's own past, where it still does, [0,5) [5,8) ran 538 tok/s against [0,6)'s 481.
 */
export function balancedPartition(shape: LayerCostShape, numStages: number, load: PlanLoad = DEFAULT_PLAN_LOAD): Partition {
  const L = shape.numLayers;
  if (!Number.isInteger(numStages) || numStages < 1) throw new PartitionError(`number of workers must be a positive integer, got ${numStages}`);
  if (numStages > L) throw new PartitionError(`${numStages} workers cannot share ${L} layers: each stage needs at least one layer`);
  const shared = load.sharedPrefixTokens ?? 0;
  if (!Number.isInteger(shared) || shared < 0 || shared > load.contextTokens) {
    throw new PartitionError(`a shared prefix of ${shared} tokens must be a whole number from 0 to the context (${load.contextTokens} tokens)`);
  }
  const layer = layerDecodeBytes(shape, load);
  const head = lmHeadDecodeBytes(shape, load);
  const cost = (start: number, end: number) => (end - start) * layer + (end === L ? head : 0);
  // best[s][i]: the least possible max stage cost covering layers [0, i) with s stages.
  const best = Array.from({ length: numStages + 1 }, () => new Array<number>(L + 1).fill(Infinity));
  const cut = Array.from({ length: numStages + 1 }, () => new Array<number>(L + 1).fill(-1));
  best[0][0] = 0;
  for (let s = 1; s <= numStages; s++) {
    for (let i = s; i <= L; i++) {
      for (let j = s - 1; j < i; j++) {
        const candidate = Math.max(best[s - 1][j], cost(j, i));
        // Strictly better only: among equals the earliest cut (fewer layers early) is kept, and
        // evenPartition's remainder-first split is what equal costs reduce to.
        if (candidate < best[s][i] || (candidate === best[s][i] && Math.abs(i - j - L / numStages) < Math.abs(i - cut[s][i] - L / numStages))) {
          best[s][i] = candidate;
          cut[s][i] = j;
        }
      }
    }
  }
  const partition: Partition = [];
  for (let s = numStages, i = L; s > 0; s--) {
    const j = cut[s][i];
    partition.unshift([j, i]);
    i = j;
  }
  return partition;
}
