export interface SamplingParams {
  temperature: number; // 0 = greedy
  topP: number; // 1 (or 0) = off
  topK: number; // 0 = off
}

export const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0 };

export function argmax(logits: Float32Array, offset = 0, length = logits.length - offset): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < length; i++) {
    const v = logits[offset + i];
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/**
 * Picks a token from one row of logits. `random` is a uniform draw in [0, 1) supplied by the caller
 * (the coordinator's seeded generator), so the same seed gives the same tokens wherever this runs.
 */
export function sampleToken(logits: Float32Array, params: SamplingParams, random: number, offset = 0, length = logits.length - offset): number {
  if (params.temperature <= 0) return argmax(logits, offset, length);
  const ids = Array.from({ length }, (_, i) => i);
  ids.sort((a, b) => logits[offset + b] - logits[offset + a] || a - b);
  const k = params.topK > 0 ? Math.min(params.topK, length) : length;
  const max = logits[offset + ids[0]];
  const weights = new Float64Array(k);
  let total = 0;
  for (let i = 0; i < k; i++) {
    weights[i] = Math.exp((logits[offset + ids[i]] - max) / params.temperature);
    total += weights[i];
  }
  // Nucleus: keep the smallest head of the sorted list whose mass reaches top_p.
  let kept = k;
  if (params.topP > 0 && params.topP < 1) {
    let mass = 0;
    for (let i = 0; i < k; i++) {
      mass += weights[i] / total;
      if (mass >= params.topP) {
        kept = i + 1;
        break;
      }
    }
  }
  let keptTotal = 0;
  for (let i = 0; i < kept; i++) keptTotal += weights[i];
  let target = random * keptTotal;
  for (let i = 0; i < kept; i++) {
    target -= weights[i];
    if (target < 0) return ids[i];
  }
  return ids[kept - 1];
}

/** Log-softmax of one row, for logprobs. */
export function logSoftmax(logits: Float32Array, offset = 0, length = logits.length - offset): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < length; i++) max = Math.max(max, logits[offset + i]);
  let sum = 0;
  for (let i = 0; i < length; i++) sum += Math.exp(logits[offset + i] - max);
  const logZ = max + Math.log(sum);
  const out = new Float64Array(length);
  for (let i = 0; i < length; i++) out[i] = logits[offset + i] - logZ;
  return out;
}
