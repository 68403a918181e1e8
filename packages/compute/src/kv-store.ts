import { kvBytesPerBlock, kvBytesPerElement, kvSideBytesPerBlockHead, type KvDtype, NO_BLOCK } from "@strata/kv";
import { f16BitsFromF32Bits, f16BitsToF32, f32ToF16Bits } from "@strata/model";

/** The part of a StageChunk the KV store reads: where the sequence is and which blocks hold it. */
export interface KvChunk {
  startPosition: number;
  numTokens: number;
  blockTable: readonly number[];
}

/** A pool's storage: float32, half bits, int8 codes or e4m3 codes. */
export type KvCodes = Float32Array | Uint16Array | Int8Array | Uint8Array;

export interface KvPoolShape {
  numBlocks: number;
  blockSizeTokens: number;
  numKvHeads: number;
  headDim: number;
}

/**
 * One layer's K or V, shaped [numBlocks, kvHeads, blockSizeTokens, headDim]: within a block, each
 * head's tokens are contiguous, so gatherDecoded copies (fp32) or decodes a batch's past one run
 * per block and head, straight into the head-major layout the stage graph's attention reads (no
 * transpose in the graph). scatter encodes a step's float32 K/V (token-major, as the graph emits
 * them) into the blocks, and gather decodes the past token-major: the plain definition the
 * head-major gathers are tested against.
 */
export abstract class KvPool {
  abstract readonly dtype: KvDtype;
  readonly numBlocks: number;
  readonly blockSizeTokens: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** Floats per token: kvHeads * headDim. */
  protected readonly row: number;
  /**
   * Per block, a count bumped whenever the block begins afresh (its first slot written, or a copy
   * over it): equal counts mean slots written before still hold what they held. Shared by a
   * KvStore's pools.
   */
  readonly blockEpochs: Uint32Array;

  constructor(shape: KvPoolShape, blockEpochs: Uint32Array = new Uint32Array(shape.numBlocks)) {
    this.numBlocks = shape.numBlocks;
    this.blockSizeTokens = shape.blockSizeTokens;
    this.numKvHeads = shape.numKvHeads;
    this.headDim = shape.headDim;
    this.row = shape.numKvHeads * shape.headDim;
    this.blockEpochs = blockEpochs;
  }

  static create(dtype: KvDtype, shape: KvPoolShape, blockEpochs?: Uint32Array): KvPool {
    switch (dtype) {
      case "fp32":
        return new Fp32Pool(shape, blockEpochs);
      case "fp16":
        return new Fp16Pool(shape, blockEpochs);
      case "int8":
        return new Int8Pool(shape, blockEpochs);
      case "fp8":
        return new Fp8Pool(shape, blockEpochs);
    }
  }

  /** Storage index of `slot`'s first value for `head` in `block`. */
  protected at(block: number, head: number, slot: number): number {
    return ((block * this.numKvHeads + head) * this.blockSizeTokens + slot) * this.headDim;
  }

  /** Bytes this pool holds, scales included. */
  get byteLength(): number {
    return this.numBlocks * (this.blockSizeTokens * this.row * kvBytesPerElement(this.dtype) + this.numKvHeads * kvSideBytesPerBlockHead(this.dtype, this.headDim));
  }

  /**
   * Each chunk's past, positions [0, startPosition), into out[outOffset..] as [chunks, P, kvHeads,
   * headDim] (P ≥ every startPosition). Slots past a sequence's length are left as they are.
   */
  gather(chunks: readonly KvChunk[], P: number, out: Float32Array, outOffset = 0): void {
    const bs = this.blockSizeTokens;
    const row = this.row;
    for (let b = 0; b < chunks.length; b++) {
      const c = chunks[b];
      for (let start = 0; start < c.startPosition; start += bs) {
        const block = c.blockTable[start / bs];
        if (block === NO_BLOCK) continue; // outside the sliding window: masked
        this.readRun(block, Math.min(bs, c.startPosition - start), out, outOffset + (b * P + start) * row);
      }
    }
  }

  /**
   * This step's values, [chunks, T, kvHeads, headDim] from values[valuesOffset..] (T ≥ every
   * numTokens; padded slots are ignored), into positions [startPosition, startPosition +
   * numTokens) of each chunk's blocks. A sequence's positions must arrive in order: a run
   * starting at a block's first slot begins that block afresh.
   */
  scatter(values: Float32Array, chunks: readonly KvChunk[], T: number, valuesOffset = 0): void {
    const bs = this.blockSizeTokens;
    const row = this.row;
    for (let b = 0; b < chunks.length; b++) {
      const c = chunks[b];
      let t = 0;
      while (t < c.numTokens) {
        const pos = c.startPosition + t;
        const slot = pos % bs;
        const n = Math.min(bs - slot, c.numTokens - t);
        const block = c.blockTable[Math.floor(pos / bs)];
        if (slot === 0) this.blockEpochs[block]++;
        this.writeRun(block, slot, n, values, valuesOffset + (b * T + t) * row);
        t += n;
      }
    }
  }

  /**
   * Like gather, but head-major, [chunks, kvHeads, P, headDim], a block's head run at a time: the
   * layout the stage graph reads a layer's past K or V in. With `from`, chunk b's positions before
   * from[b] are taken to be in `out` already (see resumeFrom) and only the rest is decoded.
   */
  gatherDecoded(chunks: readonly KvChunk[], P: number, out: Float32Array, outOffset = 0, from?: readonly number[]): void {
    const { blockSizeTokens: bs, numKvHeads: kv, headDim: hd } = this;
    for (let b = 0; b < chunks.length; b++) {
      const c = chunks[b];
      const first = from ? this.resumeFrom(from[b]) : 0;
      for (let start = first - (first % bs); start < c.startPosition; start += bs) {
        const block = c.blockTable[start / bs];
        if (block === NO_BLOCK) continue; // outside the sliding window: masked
        const lo = Math.max(start, first) - start;
        const n = Math.min(bs, c.startPosition - start) - lo;
        for (let h = 0; h < kv; h++) this.decodeHeadRun(block, h, lo, n, out, outOffset + ((b * kv + h) * P + start + lo) * hd);
      }
    }
  }

  /**
   * Where a gather that holds positions [0, p) must start again: p, for storage whose codes never
   * change once written.
   */
  protected resumeFrom(p: number): number {
    return p;
  }

  /** Slots [slot, slot + n) of one head of `block`, decoded to float32 at out[outOffset..], head dim innermost. */
  protected abstract decodeHeadRun(block: number, head: number, slot: number, n: number, out: Float32Array, outOffset: number): void;

  /** Copies block `from` (values and scales) over block `to`: a forked sequence's partial last block. */
  copyBlock(from: number, to: number): void {
    this.blockEpochs[to]++;
    const size = this.blockSizeTokens * this.row;
    this.storage().copyWithin(to * size, from * size, (from + 1) * size);
  }

  protected abstract storage(): KvCodes;

  /** Tokens [0, n) of `block`, decoded to float32 at out[outOffset..]. */
  protected abstract readRun(block: number, n: number, out: Float32Array, outOffset: number): void;

  /** n tokens from values[src..] into slots [slot, slot + n) of `block`. */
  protected abstract writeRun(block: number, slot: number, n: number, values: Float32Array, src: number): void;
}

class Fp32Pool extends KvPool {
  readonly dtype = "fp32";
  readonly data: Float32Array;

  constructor(shape: KvPoolShape, blockEpochs?: Uint32Array) {
    super(shape, blockEpochs);
    this.data = new Float32Array(shape.numBlocks * shape.blockSizeTokens * this.row);
  }

  protected storage(): Float32Array {
    return this.data;
  }

  protected decodeHeadRun(block: number, head: number, slot: number, n: number, out: Float32Array, outOffset: number): void {
    copyValues(out, this.data, this.at(block, head, slot), n * this.headDim, outOffset);
  }

  protected readRun(block: number, n: number, out: Float32Array, outOffset: number): void {
    const { data, numKvHeads: kv, headDim: hd, row } = this;
    for (let h = 0; h < kv; h++) {
      const src = this.at(block, h, 0);
      for (let t = 0; t < n; t++) {
        const o = outOffset + t * row + h * hd;
        for (let d = 0; d < hd; d++) out[o + d] = data[src + t * hd + d];
      }
    }
  }

  protected writeRun(block: number, slot: number, n: number, values: Float32Array, src: number): void {
    const { data, numKvHeads: kv, headDim: hd, row } = this;
    // Head rows are a few floats: a plain loop beats a subarray() and set() per row.
    for (let h = 0; h < kv; h++) {
      const dst = this.at(block, h, slot);
      for (let t = 0; t < n; t++) {
        const v = src + t * row + h * hd;
        for (let d = 0; d < hd; d++) data[dst + t * hd + d] = values[v + d];
      }
    }
  }
}

let f16Decode: Float32Array | undefined;
function f16Table(): Float32Array {
  if (f16Decode === undefined) {
    f16Decode = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Decode[h] = f16BitsToF32(h);
  }
  return f16Decode;
}

class Fp16Pool extends KvPool {
  readonly dtype = "fp16";
  readonly data: Uint16Array;
  private readonly decode = f16Table();

  constructor(shape: KvPoolShape, blockEpochs?: Uint32Array) {
    super(shape, blockEpochs);
    this.data = new Uint16Array(shape.numBlocks * shape.blockSizeTokens * this.row);
  }

  protected storage(): Uint16Array {
    return this.data;
  }

  protected decodeHeadRun(block: number, head: number, slot: number, n: number, out: Float32Array, outOffset: number): void {
    const { data, decode } = this;
    const src = this.at(block, head, slot);
    for (let i = 0, len = n * this.headDim; i < len; i++) out[outOffset + i] = decode[data[src + i]];
  }

  protected readRun(block: number, n: number, out: Float32Array, outOffset: number): void {
    const { data, decode, numKvHeads: kv, headDim: hd, row } = this;
    for (let h = 0; h < kv; h++) {
      const src = this.at(block, h, 0);
      for (let t = 0; t < n; t++) {
        const o = outOffset + t * row + h * hd;
        for (let d = 0; d < hd; d++) out[o + d] = decode[data[src + t * hd + d]];
      }
    }
  }

  protected writeRun(block: number, slot: number, n: number, values: Float32Array, src: number): void {
    // The float32 bits, read in place: no per-element scratch round trip.
    const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
    const { data, numKvHeads: kv, headDim: hd, row } = this;
    for (let h = 0; h < kv; h++) {
      const dst = this.at(block, h, slot);
      for (let t = 0; t < n; t++) {
        const v = src + t * row + h * hd;
        for (let d = 0; d < hd; d++) data[dst + t * hd + d] = f16BitsFromF32Bits(bits[v + d]);
      }
    }
  }
}

/**
 * Storage with one float32 scale per block and KV head: value = decode(code) * scale (+ the
 * block-head's centre, for pools that keep one), with scale chosen so the block-head's largest
 * magnitude maps to `qmax`. Blocks fill a few tokens at a time; when a new token is larger than
 * the block-head's scale can hold, the entries already there are re-encoded at the new, larger
 * scale. Each re-encoding adds at most half a step of the new scale to those entries' error
 * (none for fp8, whose scales are powers of two).
 */
export abstract class ScaledPool extends KvPool {
  readonly scales: Float32Array;
  /**
   * Per block, KV head and channel, float16 bits of the value codes are taken from (fp8), or
   * undefined (int8: codes are of the values themselves). A block's centres are set by its first
   * write and never change after.
   */
  readonly centres?: Uint16Array;
  protected abstract readonly qmax: number;
  // One head row at a time, reused.
  protected readonly scratch: Float32Array;
  private readonly f16 = f16Table();

  constructor(shape: KvPoolShape, blockEpochs?: Uint32Array, centred = false) {
    super(shape, blockEpochs);
    this.scales = new Float32Array(shape.numBlocks * shape.numKvHeads);
    this.scratch = new Float32Array(shape.headDim);
    if (centred) this.centres = new Uint16Array(shape.numBlocks * shape.numKvHeads * shape.headDim);
  }

  /** The scale of one block's KV head. */
  scale(block: number, head: number): number {
    return this.scales[block * this.numKvHeads + head];
  }

  /** Channel d's centre in one block's KV head (0 for a pool without centres). */
  centre(block: number, head: number, d: number): number {
    return this.centres ? this.f16[this.centres[(block * this.numKvHeads + head) * this.headDim + d]] : 0;
  }

  override copyBlock(from: number, to: number): void {
    super.copyBlock(from, to);
    const kv = this.numKvHeads;
    this.scales.copyWithin(to * kv, from * kv, (from + 1) * kv);
    const hd = this.headDim;
    this.centres?.copyWithin(to * kv * hd, from * kv * hd, (from + 1) * kv * hd);
  }

  /**
   * The start of the block holding p: writing at p may have grown that block's scale and
   * re-encoded the entries before it (not exactly, for int8), so they are decoded again.
   */
  protected override resumeFrom(p: number): number {
    return p - (p % this.blockSizeTokens);
  }

  protected decodeHeadRun(block: number, head: number, slot: number, n: number, out: Float32Array, outOffset: number): void {
    const { headDim: hd, centres, f16 } = this;
    const si = block * this.numKvHeads + head;
    const scale = this.scales[si];
    const src = this.at(block, head, slot);
    for (let t = 0; t < n; t++) {
      const o = outOffset + t * hd;
      this.decodeRow(src + t * hd, hd, scale, out, o);
      if (centres) for (let d = 0; d < hd; d++) out[o + d] += f16[centres[si * hd + d]];
    }
  }

  /** The scale for a block-head whose largest magnitude is maxAbs. */
  protected scaleFor(maxAbs: number): number {
    return maxAbs / this.qmax;
  }

  /** len values at src[srcOff..] times `inv` -> codes at codes()[dst..]. */
  protected abstract encodeRow(src: Float32Array, srcOff: number, len: number, inv: number, dst: number): void;
  /** len codes at codes()[srcIdx..] times `scale` -> out[outOff..]. */
  protected abstract decodeRow(srcIdx: number, len: number, scale: number, out: Float32Array, outOff: number): void;

  protected readRun(block: number, n: number, out: Float32Array, outOffset: number): void {
    const { numKvHeads: kv, headDim: hd, row } = this;
    for (let t = 0; t < n; t++) {
      for (let h = 0; h < kv; h++) this.decodeHeadRun(block, h, t, 1, out, outOffset + t * row + h * hd);
    }
  }

  protected writeRun(block: number, slot: number, n: number, values: Float32Array, src: number): void {
    const { numKvHeads: kv, headDim: hd, row, scales, scratch, qmax, centres, f16 } = this;
    for (let h = 0; h < kv; h++) {
      const base = this.at(block, h, 0);
      const si = block * kv + h;
      const c = si * hd;
      // Slot 0 starts the block afresh: its centres are the mean of this first run's tokens.
      if (centres && slot === 0) {
        for (let d = 0; d < hd; d++) {
          let sum = 0;
          for (let t = 0; t < n; t++) sum += values[src + t * row + h * hd + d];
          centres[c + d] = f32ToF16Bits(sum / n);
        }
      }
      let maxAbs = 0;
      for (let t = 0; t < n; t++) {
        const off = src + t * row + h * hd;
        for (let d = 0; d < hd; d++) {
          const a = Math.abs(centres ? values[off + d] - f16[centres[c + d]] : values[off + d]);
          if (a > maxAbs) maxAbs = a;
        }
      }
      // Slot 0 starts the block afresh: whatever scale a previous owner left is meaningless.
      let scale = slot === 0 ? 0 : scales[si];
      if (maxAbs > scale * qmax) {
        const grown = this.scaleFor(maxAbs);
        if (scale > 0) {
          const ratio = scale / grown;
          for (let t = 0; t < slot; t++) {
            const idx = base + t * hd;
            this.decodeRow(idx, hd, ratio, scratch, 0);
            this.encodeRow(scratch, 0, hd, 1, idx);
          }
        }
        scale = grown;
        scales[si] = grown;
      }
      const inv = scale > 0 ? 1 / scale : 0;
      for (let t = 0; t < n; t++) {
        const off = src + t * row + h * hd;
        if (centres) {
          for (let d = 0; d < hd; d++) scratch[d] = values[off + d] - f16[centres[c + d]];
          this.encodeRow(scratch, 0, hd, inv, base + (slot + t) * hd);
        } else {
          this.encodeRow(values, off, hd, inv, base + (slot + t) * hd);
        }
      }
    }
  }
}

/** Symmetric int8: code = round(x / scale) in [-127, 127], scale = maxAbs / 127. */
class Int8Pool extends ScaledPool {
  readonly dtype = "int8";
  protected readonly qmax = 127;
  readonly data: Int8Array;

  constructor(shape: KvPoolShape, blockEpochs?: Uint32Array) {
    super(shape, blockEpochs);
    this.data = new Int8Array(shape.numBlocks * shape.blockSizeTokens * this.row);
  }

  protected storage(): Int8Array {
    return this.data;
  }

  protected encodeRow(src: Float32Array, srcOff: number, len: number, inv: number, dst: number): void {
    const data = this.data;
    for (let i = 0; i < len; i++) {
      const q = Math.round(src[srcOff + i] * inv);
      // Int8Array stores wrap, so clamp the one-ulp overshoot of maxAbs * (1 / scale).
      data[dst + i] = q > 127 ? 127 : q < -127 ? -127 : q;
    }
  }

  protected decodeRow(srcIdx: number, len: number, scale: number, out: Float32Array, outOff: number): void {
    const data = this.data;
    for (let i = 0; i < len; i++) out[outOff + i] = data[srcIdx + i] * scale;
  }
}

/** Largest finite e4m3 (OCP FP8 E4M3FN: no infinities, S.1111.111 is NaN). */
export const E4M3_MAX = 448;

/** e4m3 byte -> value, for all 256 codes. */
export const E4M3_DECODE: Float32Array = (() => {
  const table = new Float32Array(256);
  for (let c = 0; c < 256; c++) {
    const sign = c & 0x80 ? -1 : 1;
    const e = (c >> 3) & 0xf;
    const m = c & 7;
    if (e === 0xf && m === 7) table[c] = NaN;
    else if (e === 0) table[c] = sign * m * 2 ** -9;
    else table[c] = sign * (1 + m / 8) * 2 ** (e - 7);
  }
  return table;
})();

/** float32 bits -> e4m3 byte, round to nearest even, saturating at ±448 (NaN stays NaN). */
export function e4m3FromF32Bits(x: number): number {
  const sign = (x >>> 24) & 0x80;
  const abs = x & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7f;
  if (abs >= 0x43e00000) return sign | 0x7e; // ≥ 448, infinity included
  const exp = abs >>> 23;
  if (exp < 121) {
    // Below e4m3's smallest normal (2^-6): a multiple of 2^-9. Half the smallest step and less is 0.
    if (exp < 117) return sign;
    const m = (abs & 0x7fffff) | 0x800000;
    const shift = 141 - exp; // value * 2^9 = m * 2^(exp - 150 + 9)
    let q = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rest > mid || (rest === mid && q & 1)) q++;
    return sign | q; // q = 8 carries into the smallest normal's encoding
  }
  let code = ((exp - 120) << 3) | ((abs >>> 20) & 7);
  const rest = abs & 0xfffff;
  if (rest > 0x80000 || (rest === 0x80000 && code & 1)) code++;
  return sign | (code > 0x7e ? 0x7e : code);
}

/**
 * FP8 e4m3, emulated: code = e4m3((x - centre) / scale), scale the power of two that maps
 * max |x - centre| within 448, decoded through a 256-entry table. e4m3 keeps 3 mantissa bits, so
 * a code is off by up to 2^-4 of what it encodes whatever the scale. Keys and values sit on
 * per-channel offsets that neighbouring tokens share, so coding each value's distance from its
 * block-head's centre (the per-channel mean of the block's first write, float16: 2 bytes a
 * channel) keeps the error to that distance. On stories260K's greedy run this took the mean
 * per-step logit error from ~0.73 to 0.40, and greedy's choices are kept (they were not).
 */
class Fp8Pool extends ScaledPool {
  readonly dtype = "fp8";
  protected readonly qmax = E4M3_MAX;
  readonly data: Uint8Array;
  private readonly scaled: Float32Array;
  private readonly scaledBits: Uint32Array;

  constructor(shape: KvPoolShape, blockEpochs?: Uint32Array) {
    super(shape, blockEpochs, true);
    this.data = new Uint8Array(shape.numBlocks * shape.blockSizeTokens * this.row);
    this.scaled = new Float32Array(shape.headDim);
    this.scaledBits = new Uint32Array(this.scaled.buffer);
  }

  protected storage(): Uint8Array {
    return this.data;
  }

  /**
   * The smallest power of two that maps maxAbs within ±448. Re-encoding at a grown scale is then
   * a shift of the exponent: exact (down to the subnormals), not a second rounding. A block
   * filled token by token grows its scale many times, and with maxAbs / 448 those re-roundings
   * were most of the error.
   */
  protected override scaleFor(maxAbs: number): number {
    let scale = 2 ** Math.ceil(Math.log2(maxAbs / E4M3_MAX));
    if (maxAbs > scale * E4M3_MAX) scale *= 2; // log2's rounding, either way
    else if (maxAbs <= (scale / 2) * E4M3_MAX) scale /= 2;
    return scale;
  }

  protected encodeRow(src: Float32Array, srcOff: number, len: number, inv: number, dst: number): void {
    const { data, scaled, scaledBits } = this;
    for (let i = 0; i < len; i++) scaled[i] = src[srcOff + i] * inv;
    for (let i = 0; i < len; i++) data[dst + i] = e4m3FromF32Bits(scaledBits[i]);
  }

  protected decodeRow(srcIdx: number, len: number, scale: number, out: Float32Array, outOff: number): void {
    const data = this.data;
    for (let i = 0; i < len; i++) out[outOff + i] = E4M3_DECODE[data[srcIdx + i]] * scale;
  }
}

/** n values from src[from..] to out[to..]. */
function copyValues(out: Float32Array, src: Float32Array, from: number, n: number, to: number): void {
  // A decode step copies one token per block and head: a few values, where creating a subarray
  // for set() costs more than the copy. Long runs are a memcpy.
  if (n <= 64) {
    for (let i = 0; i < n; i++) out[to + i] = src[from + i];
  } else {
    out.set(src.subarray(from, from + n), to);
  }
}

const MAX_POOL_GATHERS = 4;

/** A past length with room to grow: half again, in whole blocks, at least one block more. */
function withRoom(P: number, blockSizeTokens: number): number {
  return P + Math.max(blockSizeTokens, Math.ceil(P / 2 / blockSizeTokens) * blockSizeTokens);
}

// An array moved to a compute thread comes back detached.
const isDetached = (a: Float32Array): boolean => a.buffer.byteLength === 0;

/**
 * What a per-pool gather left in its arrays: chunk b's positions [0, starts[b]) from blocks
 * tables[b], as they were at blockEpochs epochs[b].
 */
interface PoolsGather {
  P: number;
  arrays: Float32Array[]; // views of `buffers`, exactly [chunks, kvHeads, P, headDim] each
  buffers: Float32Array[]; // with room for a longer past (see gatherPools)
  starts: number[];
  tables: number[][];
  epochs: number[][];
}

/** Whether `last` holds a prefix of each chunk's past: the same sequences in the same slots, their blocks unchanged since. */
function holdsPastOf(last: PoolsGather, chunks: readonly KvChunk[], blockEpochs: Uint32Array): boolean {
  if (last.starts.length !== chunks.length || last.buffers.some(isDetached)) return false;
  for (let b = 0; b < chunks.length; b++) {
    const c = chunks[b];
    const table = last.tables[b];
    const epochs = last.epochs[b];
    if (c.startPosition < last.starts[b]) return false;
    for (let i = 0; i < table.length; i++) {
      // A block freed and reused since, or rewritten from its start, no longer holds what was copied.
      if (c.blockTable[i] !== table[i] || (table[i] !== NO_BLOCK && blockEpochs[table[i]] !== epochs[i])) return false;
    }
  }
  return true;
}

/**
 * Lays `gather`'s arrays out again for a longer past P, in place: row r (a chunk's head), P_old
 * values long, moves to r * P. Rows move from the last down, each to an offset at least its own,
 * so none is overwritten before it has moved. Positions past the old ones hold stale values
 * (masked) until the caller copies the new ones in.
 */
function restride(gather: PoolsGather, P: number, rows: number, headDim: number): void {
  const oldRow = gather.P * headDim;
  const newRow = P * headDim;
  gather.arrays = gather.buffers.map((buffer) => {
    for (let r = rows - 1; r > 0; r--) buffer.copyWithin(r * newRow, r * oldRow, (r + 1) * oldRow);
    return buffer.subarray(0, rows * newRow);
  });
  gather.P = P;
}

export interface KvStoreOptions extends KvPoolShape {
  numLayers: number;
  kvDtype: KvDtype;
}

/**
 * A stage's whole KV cache: for every layer a K pool and a V pool, in the order the stage graph
 * packs them (layer-major, K then V). gatherPools / scatter move a micro-batch's K/V between the
 * pools and the graph's past_kv_<j> inputs / new_kv output.
 */
export class KvStore {
  readonly kvDtype: KvDtype;
  readonly numLayers: number;
  /** 2 * numLayers pools: pools[2l] is layer l's K, pools[2l + 1] its V. */
  readonly pools: readonly KvPool[];
  private readonly row: number;
  private readonly poolGathers: PoolsGather[] = []; // most recent first
  private readonly sharedGathers: PoolsGather[] = []; // gatherSharedPools', most recent first
  // Every pool's, shared: scatter and copyBlock bump a block's count in whichever pool they write.
  private readonly blockEpochs: Uint32Array;

  constructor(opts: KvStoreOptions) {
    for (const [name, value] of Object.entries({ numLayers: opts.numLayers, numBlocks: opts.numBlocks, blockSizeTokens: opts.blockSizeTokens, numKvHeads: opts.numKvHeads, headDim: opts.headDim })) {
      if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
    }
    this.kvDtype = opts.kvDtype;
    this.numLayers = opts.numLayers;
    this.row = opts.numKvHeads * opts.headDim;
    this.blockEpochs = new Uint32Array(opts.numBlocks);
    this.pools = Array.from({ length: 2 * opts.numLayers }, () => KvPool.create(opts.kvDtype, opts, this.blockEpochs));
  }

  /** Bytes held, scales included: numBlocks × kvBytesPerBlock. */
  get byteLength(): number {
    const p = this.pools[0];
    return p.numBlocks * kvBytesPerBlock({ numLayers: this.numLayers, numKvHeads: p.numKvHeads, headDim: p.headDim, blockSizeTokens: p.blockSizeTokens, kvDtype: this.kvDtype });
  }

  /** Every layer's past K and V decoded into `out`, token-major: [2 * layers * chunks, P, kvHeads, headDim]. */
  gather(chunks: readonly KvChunk[], P: number, out: Float32Array): void {
    const perPool = chunks.length * P * this.row;
    this.pools.forEach((pool, i) => pool.gather(chunks, P, out, i * perPool));
  }

  /** This step's K and V from `values`, [2 * layers * chunks, T, kvHeads, headDim] (new_kv), into the blocks. */
  scatter(chunks: readonly KvChunk[], T: number, values: Float32Array): void {
    const perPool = chunks.length * T * this.row;
    this.pools.forEach((pool, i) => pool.scatter(values, chunks, T, i * perPool));
  }

  /**
   * Every layer's past K and V decoded to float32, one array per pool (the order of `pools`), each
   * [chunks, kvHeads, P, headDim]: the stage graph's past inputs. The arrays hold until a later
   * call reuses them. When an earlier call's arrays are still here and every chunk is a sequence
   * of that call in the same slot (the same physical blocks up to where it was, none begun afresh
   * since: same block epochs, so the same contents) and no shorter, only the positions since are
   * decoded (from the start of their block, for pools that re-encode a block when its scale
   * grows): a decode step decodes about one token per sequence instead of its whole past. The few
   * most recent gathers are kept, one per micro-batch a pipelined stage alternates between.
   * Decoding here, once per position, and not in the graph every step made an fp8 stage's decode
   * step ~7x and an int8 or fp16 one ~2x as slow as fp32's.
   */
  gatherPools(chunks: readonly KvChunk[], P: number): Float32Array[] {
    return this.gatherInto(this.poolGathers, chunks, P);
  }

  /**
   * The past a step's sequences share, positions [0, P) of `blockTable` (whole blocks), decoded
   * to float32, one array per pool, each [kvHeads, P, headDim]: the stage graph's shared past
   * inputs. Kept like gatherPools' arrays, apart from them, so the micro-batches a pipelined stage
   * alternates between, behind one system prompt, decode it once.
   */
  gatherSharedPools(blockTable: readonly number[], P: number): Float32Array[] {
    return this.gatherInto(this.sharedGathers, [{ startPosition: P, numTokens: 0, blockTable }], P);
  }

  private gatherInto(poolGathers: PoolsGather[], chunks: readonly KvChunk[], P: number): Float32Array[] {
    const bs = this.pools[0].blockSizeTokens;
    const perPool = chunks.length * P * this.row;
    const roomy = (g: PoolsGather) => g.buffers[0].length >= perPool && !g.buffers.some(isDetached);
    let found = poolGathers.findIndex((g) => g.P === P && holdsPastOf(g, chunks, this.blockEpochs));
    let entry: PoolsGather;
    let from: number[] | undefined;
    if (found < 0) {
      // The same sequences' past grown into a new block: their arrays, laid out again in place
      // for the longer past, then extended. Copying every past afresh from the blocks at each
      // block boundary was ~80 ms a micro-batch here (16 sequences of ~1,040 tokens, 5 layers):
      // a copy per block and head, each with a view object for the collector.
      found = poolGathers.findIndex((g) => g.P < P && roomy(g) && holdsPastOf(g, chunks, this.blockEpochs));
      if (found >= 0) restride(poolGathers[found], P, chunks.length * this.pools[0].numKvHeads, this.pools[0].headDim);
    }
    if (found >= 0) {
      [entry] = poolGathers.splice(found, 1);
      from = entry.starts;
    } else {
      // Other sequences: the least recently used gather of another length whose arrays have room
      // takes it (a full gather), else one is made with room for half as long a past again.
      // Fresh arrays at every block boundary were ~7 MB a micro-batch (batch 16, 7 layers, hidden
      // 512) left to the collector; now a sequence's growth allocates a logarithmic number of times.
      let victim = -1;
      for (let i = poolGathers.length - 1; i >= 0 && victim < 0; i--) {
        if (poolGathers[i].P !== P && roomy(poolGathers[i])) victim = i;
      }
      if (victim < 0 && poolGathers.length >= MAX_POOL_GATHERS) victim = poolGathers.length - 1;
      const [old] = victim >= 0 ? poolGathers.splice(victim, 1) : [];
      const buffers = old && roomy(old) ? old.buffers : this.pools.map(() => new Float32Array(chunks.length * withRoom(P, bs) * this.row));
      entry = { P, arrays: buffers.map((b) => b.subarray(0, perPool)), buffers, starts: [], tables: [], epochs: [] };
    }
    this.pools.forEach((pool, i) => pool.gatherDecoded(chunks, P, entry.arrays[i], 0, from));
    entry.P = P;
    entry.starts = chunks.map((c) => c.startPosition);
    entry.tables = chunks.map((c) => c.blockTable.slice(0, Math.ceil(c.startPosition / bs)));
    entry.epochs = entry.tables.map((table) => table.map((block) => (block === NO_BLOCK ? 0 : this.blockEpochs[block])));
    poolGathers.unshift(entry);
    return entry.arrays;
  }

  copyBlock(from: number, to: number): void {
    for (const pool of this.pools) pool.copyBlock(from, to);
  }
}
