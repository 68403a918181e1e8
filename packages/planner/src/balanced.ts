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

/** Multiply-adds per token of one transformer layer's projections and MLP. */
export function layerMacsPerToken(s: LayerCostShape): number {
  const qkv = s.hiddenSize * (s.numHeads + 2 * s.numKvHeads) * s.headDim;
  const out = s.numHeads * s.headDim * s.hiddenSize;
  const mlp = 3 * s.hiddenSize * s.intermediateSize;
  return qkv + out + mlp;
}

/** Multiply-adds per sampled token of the LM head, which only the last stage runs. */
export function lmHeadMacsPerToken(s: LayerCostShape): number {
  return s.hiddenSize * s.vocabSize;
}

/**
 * The contiguous partition whose busiest stage does the least work, counting the LM head on the
 * last stage (a 32k vocabulary costs as much as several layers). With one micro-batch per stage
 * in flight, the busiest stage sets the pace; an even split by layer count leaves the last stage
 * the bottleneck. Ties go to the more even split by layers.
 */
export function balancedPartition(shape: LayerCostShape, numStages: number): Partition {
  const L = shape.numLayers;
  if (!Number.isInteger(numStages) || numStages < 1) throw new PartitionError(`number of workers must be a positive integer, got ${numStages}`);
  if (numStages > L) throw new PartitionError(`${numStages} workers cannot share ${L} layers: each stage needs at least one layer`);
  const layer = layerMacsPerToken(shape);
  const head = lmHeadMacsPerToken(shape);
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
