import { SequenceExistsError, UnknownSequenceError } from "./errors.ts";

/**
 * The pre-PagedAttention baseline: every sequence reserves one contiguous extent of its maximum
 * length at admission (prompt + max new tokens, capped by the context), first fit over a token
 * range the size of the paged pool, and keeps it until it finishes. Exists so the fragmentation
 * difference against BlockPool is measured, not claimed.
 */
export interface ContiguousAllocatorOptions {
  totalTokens: number;
}

export interface ContiguousStats {
  tokensTotal: number;
  /** Tokens inside live sequences' extents. */
  tokensReserved: number;
  /** Of those, tokens that hold KV (each sequence's current length). */
  tokensUsed: number;
  /** tokensTotal - tokensReserved, possibly split into extents too small to admit anyone. */
  tokensFree: number;
  /** The longest reservation that could be admitted now: external fragmentation shows as this << tokensFree. */
  largestFreeExtentTokens: number;
  freeExtents: number;
  sequences: number;
}

export interface ContiguousExtent {
  startToken: number;
  reservedTokens: number;
  lengthTokens: number;
}

/** No free extent is long enough; the allocator is left as it was. */
export class KvExtentUnavailableError extends Error {
  override readonly name = "KvExtentUnavailableError";
  constructor(
    readonly tokensNeeded: number,
    readonly largestFreeExtentTokens: number,
  ) {
    super(`KV cache full: need ${tokensNeeded} contiguous tokens, largest free extent is ${largestFreeExtentTokens}`);
  }
}

/** A sequence tried to grow past the extent it reserved at admission. */
export class KvReservationExceededError extends Error {
  override readonly name = "KvReservationExceededError";
  constructor(
    readonly seqId: number,
    readonly lengthTokens: number,
    readonly reservedTokens: number,
  ) {
    super(`sequence ${seqId} needs ${lengthTokens} tokens but reserved ${reservedTokens}`);
  }
}

function checkTokens(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
}

function checkReserve(value: number): void {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`reserveTokens must be a positive integer, got ${value}`);
}

export class ContiguousAllocator {
  readonly totalTokens: number;
  // Free extents sorted by start, never adjacent (merged on free).
  private readonly freeExtents: { start: number; length: number }[] = [];
  private readonly seqs = new Map<number, ContiguousExtent>();
  private reservedTokens = 0;
  private usedTokens = 0;

  constructor(opts: ContiguousAllocatorOptions) {
    checkTokens("totalTokens", opts.totalTokens);
    this.totalTokens = opts.totalTokens;
    if (opts.totalTokens > 0) this.freeExtents.push({ start: 0, length: opts.totalTokens });
  }

  canAdmit(reserveTokens: number): boolean {
    checkReserve(reserveTokens);
    return this.firstFit(reserveTokens) >= 0;
  }

  /**
   * Reserves `reserveTokens` contiguous tokens for a new sequence that already holds
   * `lengthTokens` (its prompt); returns the extent's first token. Throws
   * KvExtentUnavailableError, with nothing changed, when no free extent is long enough.
   */
  admit(seqId: number, reserveTokens: number, lengthTokens = 0): number {
    checkReserve(reserveTokens);
    checkTokens("lengthTokens", lengthTokens);
    if (this.seqs.has(seqId)) throw new SequenceExistsError(seqId);
    if (lengthTokens > reserveTokens) throw new KvReservationExceededError(seqId, lengthTokens, reserveTokens);
    const i = this.firstFit(reserveTokens);
    if (i < 0) throw new KvExtentUnavailableError(reserveTokens, this.largestFreeExtent());
    const extent = this.freeExtents[i];
    const startToken = extent.start;
    extent.start += reserveTokens;
    extent.length -= reserveTokens;
    if (extent.length === 0) this.freeExtents.splice(i, 1);
    this.seqs.set(seqId, { startToken, reservedTokens: reserveTokens, lengthTokens });
    this.reservedTokens += reserveTokens;
    this.usedTokens += lengthTokens;
    return startToken;
  }

  /** True when seqId's reservation covers newLength: growing never allocates here. */
  canGrow(seqId: number, newLength: number): boolean {
    checkTokens("newLength", newLength);
    return newLength <= this.get(seqId).reservedTokens;
  }

  /** Records that seqId holds [0, newLength); never shrinks. Throws past the reservation. */
  grow(seqId: number, newLength: number): void {
    checkTokens("newLength", newLength);
    const seq = this.get(seqId);
    if (newLength > seq.reservedTokens) throw new KvReservationExceededError(seqId, newLength, seq.reservedTokens);
    if (newLength > seq.lengthTokens) {
      this.usedTokens += newLength - seq.lengthTokens;
      seq.lengthTokens = newLength;
    }
  }

  /** Releases seqId's extent; returns its reserved tokens (0 for an unknown id: frees may arrive twice). */
  free(seqId: number): number {
    const seq = this.seqs.get(seqId);
    if (seq === undefined) return 0;
    this.seqs.delete(seqId);
    this.reservedTokens -= seq.reservedTokens;
    this.usedTokens -= seq.lengthTokens;
    this.release(seq.startToken, seq.reservedTokens);
    return seq.reservedTokens;
  }

  extent(seqId: number): Readonly<ContiguousExtent> {
    return { ...this.get(seqId) };
  }

  has(seqId: number): boolean {
    return this.seqs.has(seqId);
  }

  stats(): ContiguousStats {
    return {
      tokensTotal: this.totalTokens,
      tokensReserved: this.reservedTokens,
      tokensUsed: this.usedTokens,
      tokensFree: this.totalTokens - this.reservedTokens,
      largestFreeExtentTokens: this.largestFreeExtent(),
      freeExtents: this.freeExtents.length,
      sequences: this.seqs.size,
    };
  }

  /** Recomputes every count from the extents and throws if any bookkeeping disagrees. */
  checkInvariants(): void {
    const fail = (msg: string): never => {
      throw new Error(`contiguous KV allocator invariant violated: ${msg}`);
    };
    const spans = [
      ...this.freeExtents.map((f) => ({ start: f.start, length: f.length, free: true })),
      ...[...this.seqs.values()].map((s) => ({ start: s.startToken, length: s.reservedTokens, free: false })),
    ].sort((a, b) => a.start - b.start);
    let cursor = 0;
    let prevFree = false;
    for (const s of spans) {
      if (s.start !== cursor) fail(`gap or overlap at token ${cursor} (next extent starts at ${s.start})`);
      if (s.free && prevFree) fail(`adjacent free extents at token ${s.start} were not merged`);
      prevFree = s.free;
      cursor += s.length;
    }
    if (cursor !== this.totalTokens) fail(`extents cover ${cursor} of ${this.totalTokens} tokens`);
    let reserved = 0;
    let used = 0;
    for (const s of this.seqs.values()) {
      if (s.lengthTokens > s.reservedTokens) fail(`a sequence holds ${s.lengthTokens} of ${s.reservedTokens} reserved tokens`);
      reserved += s.reservedTokens;
      used += s.lengthTokens;
    }
    if (reserved !== this.reservedTokens) fail(`reserved count ${this.reservedTokens}, actually ${reserved}`);
    if (used !== this.usedTokens) fail(`used count ${this.usedTokens}, actually ${used}`);
  }

  private get(seqId: number): ContiguousExtent {
    const seq = this.seqs.get(seqId);
    if (seq === undefined) throw new UnknownSequenceError(seqId);
    return seq;
  }

  /** Index of the lowest-addressed free extent of at least `tokens`, or -1. */
  private firstFit(tokens: number): number {
    return this.freeExtents.findIndex((f) => f.length >= tokens);
  }

  private largestFreeExtent(): number {
    let largest = 0;
    for (const f of this.freeExtents) if (f.length > largest) largest = f.length;
    return largest;
  }

  /** Returns [start, start + length) to the free list, merging with its neighbours. */
  private release(start: number, length: number): void {
    let lo = 0;
    let hi = this.freeExtents.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.freeExtents[mid].start < start) lo = mid + 1;
      else hi = mid;
    }
    const prev = lo > 0 ? this.freeExtents[lo - 1] : undefined;
    const next = lo < this.freeExtents.length ? this.freeExtents[lo] : undefined;
    const joinsPrev = prev !== undefined && prev.start + prev.length === start;
    const joinsNext = next !== undefined && start + length === next.start;
    if (joinsPrev && joinsNext) {
      prev.length += length + next.length;
      this.freeExtents.splice(lo, 1);
    } else if (joinsPrev) {
      prev.length += length;
    } else if (joinsNext) {
      next.start = start;
      next.length += length;
    } else {
      this.freeExtents.splice(lo, 0, { start, length });
    }
  }
}
