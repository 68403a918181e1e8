export interface SamplingParams {
  temperature: number; // 0 = greedy
  topP: number; // 1 (or 0) = off
  topK: number; // 0 = off
}

export const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0 };

/** Whether a draw takes the argmax (temperature 0 or below; no parameters at all: greedy) and needs no random. */
export function isGreedy(params: SamplingParams | undefined): boolean {
  return (params?.temperature ?? 0) <= 0;
}

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
 *
 * The draw walks the distribution in order of logit (highest first, ties by lower id), within the
 * top k when top_k is set and the smallest head whose mass reaches top_p when top_p is set. Only
 * the head the walk reaches is sorted: tokens within 4 temperatures of the top logit first, then
 * 4x as far, and so on (all of them past 4,096); with top_k, only the k highest are selected.
 * Sorting the whole vocabulary with a comparator took 11-14 ms a sequence at 32,000 tokens, ~200
 * ms a 16-sequence step on the last stage beside ~20 ms of compute; now 0.4-0.9 ms with a few
 * high logits over the rest, 3-4 ms where all 32,000 are within 4 temperatures of each other.
 */
export function sampleToken(logits: Float32Array, params: SamplingParams, random: number, offset = 0, length = logits.length - offset): number {
  if (isGreedy(params)) return argmax(logits, offset, length);
  const T = params.temperature;
  let max = -Infinity;
  for (let i = 0; i < length; i++) max = Math.max(max, logits[offset + i]);
  const weight = (id: number) => Math.exp((logits[offset + id] - max) / T);
  const k = params.topK > 0 ? Math.min(params.topK, length) : length;
  const nucleus = params.topP > 0 && params.topP < 1;
  // With top_k off, every token's weight (kept, by id) and their mass, summed in id order (the
  // sorted order's sum differs from it only in its last bits).
  let allTotal = 0;
  const allWeights = k === length ? new Float64Array(length) : undefined;
  if (allWeights) for (let i = 0; i < length; i++) allTotal += allWeights[i] = weight(i);
  for (let span = 4; ; span *= 4) {
    const threshold = span > 4096 ? -Infinity : max - span * T;
    const ids = sortedIdsAbove(logits, offset, length, threshold, k);
    const n = ids.length; // at most k
    // The head holds all of the top k (or all there is: NaN logits are never in it), so what it
    // does not settle is settled at its end.
    const last = threshold === -Infinity;
    const whole = n === k || last;
    if (k < length && !whole) continue;
    const weights = new Float64Array(n);
    let headTotal = 0;
    for (let i = 0; i < n; i++) headTotal += weights[i] = allWeights ? allWeights[ids[i]] : weight(ids[i]);
    const total = k < length ? headTotal : allTotal;
    let kept = k;
    if (nucleus) {
      // Nucleus: keep the smallest head of the sorted list whose mass reaches top_p.
      let mass = 0;
      for (let i = 0; i < n && kept === k; i++) {
        mass += weights[i] / total;
        if (mass >= params.topP) kept = i + 1;
      }
      if (kept === k && !whole) continue;
    }
    let keptTotal = total;
    if (kept < k) {
      keptTotal = 0;
      for (let i = 0; i < kept; i++) keptTotal += weights[i];
    }
    let target = random * keptTotal;
    for (let i = 0; i < Math.min(kept, n); i++) {
      target -= weights[i];
      if (target < 0) return ids[i];
    }
    if (kept <= n) return ids[kept - 1];
    if (last) return n > 0 ? ids[n - 1] : argmax(logits, offset, length);
  }
}

/**
 * Ids of the logits at or above `threshold`, highest first, ties by lower id, at most `limit` of
 * them: sorted as float64 keys (the logit's order bits, then the id) by the typed array's own
 * numeric sort, no comparator; past `limit`, only the `limit` first are selected and sorted.
 */
function sortedIdsAbove(logits: Float32Array, offset: number, length: number, threshold: number, limit = length): Uint32Array {
  const idBits = Math.max(1, 32 - Math.clz32(length - 1));
  if (idBits > 21) return sortedIdsByComparator(logits, offset, length, threshold).subarray(0, limit);
  const bits = new Uint32Array(logits.buffer, logits.byteOffset + 4 * offset, length);
  const keys = new Float64Array(length);
  const idScale = 2 ** idBits;
  let count = 0;
  for (let i = 0; i < length; i++) {
    if (!(logits[offset + i] >= threshold)) continue;
    const b = bits[i];
    // Float bits to an unsigned order ascending with the value, turned to descending.
    const ascending = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
    keys[count++] = (0xffffffff - ascending) * idScale + i;
  }
  let head = keys.subarray(0, count);
  if (count > limit) {
    selectSmallest(head, limit);
    head = head.subarray(0, limit);
  } else if (count >= RADIX_FROM) {
    return radixSortedIds(head, idScale);
  }
  head.sort();
  const ids = new Uint32Array(head.length);
  for (let j = 0; j < head.length; j++) ids[j] = head[j] % idScale;
  return ids;
}

// From this many keys, two counting passes over 16-bit digits beat the typed array's sort
// (~2.4 ms for 32,000 float64 keys here).
const RADIX_FROM = 2048;

/**
 * The ids of `keys` (as sortedIdsAbove builds them, in id order) in key order: a stable LSD radix
 * sort of their 32-bit logit order, so equal logits keep id order.
 */
function radixSortedIds(keys: Float64Array, idScale: number): Uint32Array {
  const n = keys.length;
  let order = new Uint32Array(n);
  let ids = new Uint32Array(n);
  for (let j = 0; j < n; j++) {
    order[j] = Math.floor(keys[j] / idScale);
    ids[j] = keys[j] % idScale;
  }
  let orderOut = new Uint32Array(n);
  let idsOut = new Uint32Array(n);
  const starts = new Uint32Array(65537);
  for (const shift of [0, 16]) {
    starts.fill(0);
    for (let j = 0; j < n; j++) starts[((order[j] >>> shift) & 0xffff) + 1]++;
    for (let d = 1; d <= 65536; d++) starts[d] += starts[d - 1];
    for (let j = 0; j < n; j++) {
      const at = starts[(order[j] >>> shift) & 0xffff]++;
      orderOut[at] = order[j];
      idsOut[at] = ids[j];
    }
    [order, orderOut] = [orderOut, order];
    [ids, idsOut] = [idsOut, ids];
  }
  return ids;
}

/** Reorders `a` so its `n` smallest values come first, in no order (quickselect). */
function selectSmallest(a: Float64Array, n: number): void {
  let lo = 0;
  let hi = a.length - 1;
  while (lo < hi) {
    const pivot = a[(lo + hi) >>> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i++] = a[j];
        a[j--] = t;
      }
    }
    if (n - 1 <= j) hi = j;
    else if (n - 1 >= i) lo = i;
    else return;
  }
}

function sortedIdsByComparator(logits: Float32Array, offset: number, length: number, threshold: number): Uint32Array {
  const ids: number[] = [];
  for (let i = 0; i < length; i++) if (logits[offset + i] >= threshold) ids.push(i);
  ids.sort((a, b) => logits[offset + b] - logits[offset + a] || a - b);
  return Uint32Array.from(ids);
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
