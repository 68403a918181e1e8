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
 * top k when top_k is set and the smallest head whose mass reaches top_p when top_p is set. With
 * top_k, only the k highest are selected and sorted. Without it, nothing is sorted but the one or
 * two narrow bands the draw and the top_p edge fall in (see drawByBands). Sorting every token the
 * walk reaches cost 3-4.5 ms a row where all of a 32,000-token vocabulary lay within a few
 * temperatures of the top (a synthetic model's flat logits, or a high temperature), ~55 ms a
 * 16-sequence step on the last stage beside ~20 ms of compute; the bands' walk takes 1-1.5 ms,
 * half of it the exp of every logit.
 */
export function sampleToken(logits: Float32Array, params: SamplingParams, random: number, offset = 0, length = logits.length - offset): number {
  if (isGreedy(params)) return argmax(logits, offset, length);
  let max = -Infinity;
  for (let i = 0; i < length; i++) if (logits[offset + i] > max) max = logits[offset + i];
  // No finite top to weigh the rest against (every logit NaN or -Infinity, or one +Infinity).
  if (!Number.isFinite(max)) return argmax(logits, offset, length);
  const row = { logits, offset, length, max, invT: 1 / params.temperature };
  const topP = params.topP > 0 && params.topP < 1 ? params.topP : 1;
  if (params.topK > 0 && params.topK < length) return drawFromHead(row, topKIds(row, params.topK), topP, random);
  return drawByBands(row, topP, random);
}

interface LogitRow {
  logits: Float32Array;
  offset: number;
  length: number;
  max: number; // the highest logit, finite
  invT: number; // 1 / temperature
}

/** A token's weight: exp((logit - max) / temperature), 0 for NaN. */
function weightOf(row: LogitRow, id: number): number {
  const w = Math.exp((row.logits[row.offset + id] - row.max) * row.invT);
  return w === w ? w : 0;
}

/**
 * The k highest logits' ids, sorted: keys are built only for the logits within 4 temperatures of
 * the top, else 4x as far, and so on (all of them past 4,096), until k are in.
 */
function topKIds(row: LogitRow, k: number): Uint32Array {
  for (let span = 4; ; span *= 4) {
    const threshold = span > 4096 ? -Infinity : row.max - span / row.invT;
    const ids = sortedByLogit(row.logits, row.offset, row.length, threshold, k);
    if (ids.length === k || threshold === -Infinity) return ids;
  }
}

/** The draw over `ids` (highest logit first): the smallest head of them reaching top_p, then its inverse CDF. */
function drawFromHead(row: LogitRow, ids: Uint32Array, topP: number, random: number): number {
  const n = ids.length;
  if (n === 0) return argmax(row.logits, row.offset, row.length);
  const weights = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) total += weights[i] = weightOf(row, ids[i]);
  let kept = n;
  let keptTotal = total;
  if (topP < 1) {
    keptTotal = 0;
    for (let i = 0; i < n; i++) {
      keptTotal += weights[i];
      if (keptTotal >= topP * total) {
        kept = i + 1;
        break;
      }
    }
  }
  let target = random * keptTotal;
  for (let i = 0; i < kept; i++) {
    target -= weights[i];
    if (target < 0) return ids[i];
  }
  return ids[kept - 1];
}

// Bands of a logit's distance below the top, in temperatures: BANDS_PER_TEMPERATURE to one
// temperature, the last band everything past BAND_LIMIT temperatures (weights under e^-40, beside
// the top token's 1).
const BANDS_PER_TEMPERATURE = 16;
const BAND_LIMIT = 40;
const BANDS = BAND_LIMIT * BANDS_PER_TEMPERATURE + 1;

/**
 * The draw over the whole row, in logit order without sorting it: each token falls in a band by
 * its distance below the top (a band holds only lower logits than the band before it), and the
 * walk steps over whole bands by their summed weight. Only the band the top_p edge falls in and
 * the band the draw lands in are sorted, to walk them token by token. The result is the sorted
 * walk's, but for sums grouped by band, which differ from a token-by-token sum in their last bits.
 */
function drawByBands(row: LogitRow, topP: number, random: number): number {
  const { logits, offset, length, max, invT } = row;
  const { bandOf, weights, bandMass } = bandScratch(length);
  let total = 0;
  for (let i = 0; i < length; i++) {
    const below = (max - logits[offset + i]) * invT;
    if (!(below >= 0)) {
      bandOf[i] = BANDS; // NaN: never drawn
      continue;
    }
    const w = Math.exp(-below);
    const band = below < BAND_LIMIT ? Math.floor(below * BANDS_PER_TEMPERATURE) : BANDS - 1;
    weights[i] = w;
    bandOf[i] = band;
    bandMass[band] += w;
    total += w;
  }
  // The top_p edge: the band where the mass reaches it, and within it, the last token kept.
  let edgeBand = BANDS; // none: every token is kept
  let edgeIds: Uint32Array | undefined;
  let keptTotal = total;
  if (topP < 1) {
    let mass = 0;
    for (let band = 0; band < BANDS && edgeBand === BANDS; band++) {
      if (mass + bandMass[band] < topP * total) mass += bandMass[band];
      else edgeBand = band;
    }
    if (edgeBand < BANDS) {
      const ids = bandIds(row, bandOf, edgeBand);
      let kept = ids.length;
      for (let i = 0; i < ids.length; i++) {
        mass += weights[ids[i]];
        if (mass >= topP * total) {
          kept = i + 1;
          break;
        }
      }
      edgeIds = ids.subarray(0, kept);
      keptTotal = mass;
    }
  }
  let target = random * keptTotal;
  let lastBand = -1;
  for (let band = 0; band < BANDS; band++) {
    if (band === edgeBand) return walk(edgeIds!, weights, target);
    if (bandMass[band] === 0) continue;
    lastBand = band;
    if (target < bandMass[band]) return walk(bandIds(row, bandOf, band), weights, target);
    target -= bandMass[band];
  }
  // Rounding left the draw past the last band's summed weight: its lowest token.
  const ids = bandIds(row, bandOf, lastBand);
  return ids[ids.length - 1];
}

// drawByBands' arrays, kept from row to row: a draw runs to its end before the next begins, and
// fresh ones (320 KB a 32,000-token row) cost more than their filling.
let scratch = { bandOf: new Uint16Array(0), weights: new Float64Array(0), bandMass: new Float64Array(BANDS) };

function bandScratch(length: number): typeof scratch {
  if (scratch.bandOf.length < length) scratch = { bandOf: new Uint16Array(length), weights: new Float64Array(length), bandMass: scratch.bandMass };
  scratch.bandMass.fill(0);
  return scratch;
}

/** The inverse CDF within `ids` (in walk order) for what is left of the draw. */
function walk(ids: Uint32Array, weights: Float64Array, target: number): number {
  for (let i = 0; i < ids.length; i++) {
    target -= weights[ids[i]];
    if (target < 0) return ids[i];
  }
  return ids[ids.length - 1];
}

/** The ids in `band`, highest logit first, ties by lower id. */
function bandIds(row: LogitRow, bandOf: Uint16Array, band: number): Uint32Array {
  let count = 0;
  for (let i = 0; i < row.length; i++) if (bandOf[i] === band) count++;
  const ids = new Uint32Array(count);
  count = 0;
  for (let i = 0; i < row.length; i++) if (bandOf[i] === band) ids[count++] = i;
  return sortedByLogit(row.logits, row.offset, row.length, ids);
}

/**
 * The ids of the logits at or above `from` (a threshold, or the ids to look at), highest first,
 * ties by lower id, NaN logits left out, at most `limit` of them: sorted as float64 keys (the
 * logit's order bits, then the id) by the typed array's own numeric sort, no comparator; past
 * `limit`, only the `limit` first are selected and sorted.
 */
function sortedByLogit(logits: Float32Array, offset: number, length: number, from: number | Uint32Array, limit = Infinity): Uint32Array {
  const ids = typeof from === "number" ? undefined : from;
  const threshold = typeof from === "number" ? from : -Infinity;
  const idBits = Math.max(1, 32 - Math.clz32(length - 1));
  const n = ids ? ids.length : length;
  if (idBits > 21) return sortedByComparator(logits, offset, ids ?? Uint32Array.from({ length }, (_, i) => i), threshold).subarray(0, limit);
  const bits = new Uint32Array(logits.buffer, logits.byteOffset + 4 * offset, length);
  const keys = new Float64Array(n);
  const idScale = 2 ** idBits;
  let count = 0;
  for (let j = 0; j < n; j++) {
    const i = ids ? ids[j] : j;
    if (!(logits[offset + i] >= threshold)) continue; // NaN too
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
  const sorted = new Uint32Array(head.length);
  for (let j = 0; j < head.length; j++) sorted[j] = head[j] % idScale;
  return sorted;
}

// From this many keys, two counting passes over 16-bit digits beat the typed array's sort
// (~2.4 ms for 32,000 float64 keys here).
const RADIX_FROM = 2048;

/**
 * The ids of `keys` (as sortedByLogit builds them, in id order) in key order: a stable LSD radix
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

function sortedByComparator(logits: Float32Array, offset: number, ids: Uint32Array, threshold: number): Uint32Array {
  const kept = Array.from(ids).filter((i) => logits[offset + i] >= threshold);
  kept.sort((a, b) => logits[offset + b] - logits[offset + a] || a - b);
  return Uint32Array.from(kept);
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
