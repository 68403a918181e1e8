import { BlockPool } from "./block-pool.ts";
import { ContiguousAllocator } from "./contiguous.ts";

export interface KvWasteRequest {
  /** First step at which the request may be admitted. */
  arrivalStep: number;
  promptLen: number;
  /** Tokens it generates before finishing (≤ maxTokens). */
  outputLen: number;
  /** The request's max new tokens: what the contiguous allocator must reserve room for. */
  maxTokens: number;
}

export interface KvWasteOptions {
  allocator: "paged" | "contiguous";
  /** Pool size in tokens, a whole number of blocks; the contiguous range has the same size. */
  totalTokens: number;
  blockSizeTokens: number;
  requests: readonly KvWasteRequest[];
  /** The model's context: a contiguous reservation is min(prompt + maxTokens, contextTokens). Default: no cap. */
  contextTokens?: number;
  /** Steps not measured at the start, while the first cohort has not yet turned over. Default 0. */
  warmupSteps?: number;
  /**
   * Paged only: free blocks an admission must leave for running sequences to grow into (vLLM's
   * watermark), so admission does not immediately force preemptions. Default: 1% of the blocks, rounded up.
   */
  watermarkBlocks?: number;
  /** Cap on running sequences. Default: none. */
  maxNumSeqs?: number;
}

export interface KvWasteResult {
  /** Time-averaged (reserved - used) / total, in percent, over the measured steps. */
  wastePct: number;
  reservedPct: number;
  usedPct: number;
  /** Neither reserved nor used: free, or for the contiguous allocator free but possibly fragmented. */
  freePct: number;
  /** Time-averaged running (admitted) sequences. */
  meanAdmitted: number;
  stepsMeasured: number;
  stepsTotal: number;
  /** Paged only: sequences preempted (freed and recomputed later) because a running one could not grow. */
  preemptions: number;
}

interface SimSequence {
  readonly id: number;
  readonly req: KvWasteRequest;
  /** Tokens generated so far; survives preemption (recompute re-prefills prompt + generated). */
  generated: number;
  lengthTokens: number;
}

interface Allocator {
  /** Admits seq at its current length if there is room, else returns false with nothing changed. */
  tryAdmit(seq: SimSequence): boolean;
  canGrow(seq: SimSequence, newLength: number): boolean;
  grow(seq: SimSequence, newLength: number): void;
  free(seq: SimSequence): void;
  reservedTokens(): number;
}

function pagedAllocator(totalTokens: number, blockSizeTokens: number, watermarkBlocks: number | undefined): Allocator {
  const numBlocks = totalTokens / blockSizeTokens;
  const pool = new BlockPool({ numBlocks, blockSizeTokens });
  const watermark = watermarkBlocks ?? Math.ceil(numBlocks * 0.01);
  return {
    tryAdmit(seq) {
      const needed = pool.blocksNeeded(seq.id, seq.lengthTokens);
      if (pool.stats().blocksFree - needed < watermark) return false;
      pool.reserve(seq.id, seq.lengthTokens);
      return true;
    },
    canGrow: (seq, newLength) => pool.canReserve(seq.id, newLength),
    grow: (seq, newLength) => pool.reserve(seq.id, newLength),
    free: (seq) => void pool.free(seq.id),
    reservedTokens: () => pool.stats().blocksUsed * blockSizeTokens,
  };
}

function contiguousAllocator(totalTokens: number, contextTokens: number): Allocator {
  const alloc = new ContiguousAllocator({ totalTokens });
  return {
    tryAdmit(seq) {
      const reserve = Math.min(seq.req.promptLen + seq.req.maxTokens, contextTokens);
      if (!alloc.canAdmit(reserve)) return false;
      alloc.admit(seq.id, reserve, seq.lengthTokens);
      return true;
    },
    canGrow: (seq, newLength) => alloc.canGrow(seq.id, newLength),
    grow: (seq, newLength) => alloc.grow(seq.id, newLength),
    free: (seq) => void alloc.free(seq.id),
    reservedTokens: () => alloc.stats().tokensReserved,
  };
}

function checkRequests(opts: KvWasteOptions, contextTokens: number): void {
  opts.requests.forEach((r, i) => {
    const bad = (what: string): never => {
      throw new RangeError(`request ${i}: ${what}`);
    };
    if (!Number.isInteger(r.arrivalStep) || r.arrivalStep < 0) bad(`arrivalStep must be a non-negative integer, got ${r.arrivalStep}`);
    if (!Number.isInteger(r.promptLen) || r.promptLen < 1) bad(`promptLen must be a positive integer, got ${r.promptLen}`);
    if (!Number.isInteger(r.maxTokens) || r.maxTokens < 1) bad(`maxTokens must be a positive integer, got ${r.maxTokens}`);
    if (!Number.isInteger(r.outputLen) || r.outputLen < 1 || r.outputLen > r.maxTokens) {
      bad(`outputLen must be an integer in [1, maxTokens ${r.maxTokens}], got ${r.outputLen}`);
    }
    if (r.promptLen + r.outputLen - 1 > contextTokens) bad(`prompt ${r.promptLen} + output ${r.outputLen} exceeds the context of ${contextTokens}`);
  });
}

/**
 * Steady-state KV waste of an allocator, by simulation (no model, no clock). Each step:
 * running sequences each grow by one token (the paged pool preempts the latest-admitted sequence
 * when one cannot grow; it is recomputed later from prompt + generated tokens), then waiting
 * requests are admitted FIFO while the allocator can take the next one, then the step is
 * measured, then every running sequence emits a token and those at their output length finish
 * and are freed. A sequence holds prompt + generated - 1 tokens' KV at most (the last token's
 * KV is never written). Steps are measured from `warmupSteps` while any request is still
 * waiting or yet to arrive, so the drain at the end does not count.
 */
export function simulateKvWaste(opts: KvWasteOptions): KvWasteResult {
  const { totalTokens, blockSizeTokens } = opts;
  if (!Number.isInteger(blockSizeTokens) || blockSizeTokens < 1) {
    throw new RangeError(`blockSizeTokens must be a positive integer, got ${blockSizeTokens}`);
  }
  if (!Number.isInteger(totalTokens) || totalTokens < blockSizeTokens || totalTokens % blockSizeTokens !== 0) {
    throw new RangeError(`totalTokens must be a positive multiple of blockSizeTokens ${blockSizeTokens}, got ${totalTokens}`);
  }
  const contextTokens = opts.contextTokens ?? Number.MAX_SAFE_INTEGER;
  checkRequests(opts, contextTokens);
  const warmupSteps = opts.warmupSteps ?? 0;
  const maxNumSeqs = opts.maxNumSeqs ?? Number.POSITIVE_INFINITY;
  const alloc =
    opts.allocator === "paged" ? pagedAllocator(totalTokens, blockSizeTokens, opts.watermarkBlocks) : contiguousAllocator(totalTokens, contextTokens);

  // Stable by index, so equal arrival steps keep the caller's order.
  const arrivals = opts.requests.map((req, id) => ({ req, id })).sort((a, b) => a.req.arrivalStep - b.req.arrivalStep || a.id - b.id);
  let nextArrival = 0;
  const waiting: SimSequence[] = [];
  const running: SimSequence[] = [];
  let usedTokens = 0;
  let preemptions = 0;
  let measured = 0;
  let wasteSum = 0;
  let reservedSum = 0;
  let usedSum = 0;
  let admittedSum = 0;

  const preempt = (victim: SimSequence): void => {
    alloc.free(victim);
    usedTokens -= victim.lengthTokens;
    waiting.unshift(victim);
    preemptions++;
  };

  let step = 0;
  for (; nextArrival < arrivals.length || waiting.length > 0 || running.length > 0; step++) {
    while (nextArrival < arrivals.length && arrivals[nextArrival].req.arrivalStep <= step) {
      const { req, id } = arrivals[nextArrival++];
      waiting.push({ id, req, generated: 0, lengthTokens: 0 });
    }

    for (let i = 0; i < running.length; i++) {
      const seq = running[i];
      const newLength = seq.lengthTokens + 1;
      // Latest admitted goes first; when that is seq itself, it stops here.
      while (!alloc.canGrow(seq, newLength) && running[i] === seq) preempt(running.pop()!);
      if (running[i] !== seq) break;
      alloc.grow(seq, newLength);
      seq.lengthTokens = newLength;
      usedTokens++;
    }

    while (waiting.length > 0 && running.length < maxNumSeqs) {
      const seq = waiting[0];
      seq.lengthTokens = seq.req.promptLen + seq.generated;
      if (!alloc.tryAdmit(seq)) {
        if (running.length === 0) throw new RangeError(`request ${seq.id} needs more KV than the whole pool of ${totalTokens} tokens`);
        break;
      }
      waiting.shift();
      running.push(seq);
      usedTokens += seq.lengthTokens;
    }

    if (step >= warmupSteps && (waiting.length > 0 || nextArrival < arrivals.length)) {
      const reserved = alloc.reservedTokens();
      measured++;
      wasteSum += reserved - usedTokens;
      reservedSum += reserved;
      usedSum += usedTokens;
      admittedSum += running.length;
    }

    let kept = 0;
    for (const seq of running) {
      if (++seq.generated < seq.req.outputLen) running[kept++] = seq;
      else {
        alloc.free(seq);
        usedTokens -= seq.lengthTokens;
      }
    }
    running.length = kept;
  }

  if (measured === 0) {
    throw new RangeError(`no step measured: requests stopped waiting before warm-up step ${warmupSteps} (of ${step})`);
  }
  const pct = (sum: number): number => (100 * sum) / measured / totalTokens;
  return {
    wastePct: pct(wasteSum),
    reservedPct: pct(reservedSum),
    usedPct: pct(usedSum),
    freePct: 100 - pct(reservedSum),
    meanAdmitted: admittedSum / measured,
    stepsMeasured: measured,
    stepsTotal: step,
    preemptions,
  };
}
