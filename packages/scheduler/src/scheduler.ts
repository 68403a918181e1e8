import type { BlockEvent, ExtraKey, KvPoolStats } from "@strata/kv";
import { ContiguousKvAllocator, PagedKvAllocator, type SchedulerKvAllocator } from "./kv-allocators.ts";

/** What the scheduler knows of a request: token ids and how far the stages have computed them. */
export interface SchedulerSequence {
  /** Id on the stages; a preempted sequence comes back under a fresh one. */
  seqId: number;
  /** Arrival order: preemption takes the latest first. */
  readonly arrival: number;
  /** Prompt followed by generated ids. */
  readonly tokenIds: number[];
  readonly promptLength: number;
  /** Prompt + max new tokens: the most positions this sequence can ever hold. */
  readonly maxLength: number;
  /** Tenant salt, adapter with its load generation: kept apart in the prefix cache. */
  readonly extraKeys: readonly ExtraKey[];
  /** Positions whose KV every stage holds. */
  computed: number;
  /** The next chunk is the sequence's first on the stages (it may start past 0 on a prefix hit). */
  startsOnStages: boolean;
  inFlight: boolean;
  state: "waiting" | "running" | "finished";
  preemptions: number;
  /** Never part of a multi-step decode run (its caller wants every step's logits, say). */
  singleStep?: boolean;
}

export interface ScheduledChunk {
  seq: SchedulerSequence;
  seqId: number;
  startPosition: number;
  tokenIds: number[];
  /** Block ids covering [0, startPosition + tokenIds.length), the same on every stage. */
  blockIds: number[];
  newSequence: boolean;
  /** The chunk reaches the sequence's last known token: the stages produce its next token. */
  sample: boolean;
}

export interface MicroBatch {
  chunks: ScheduledChunk[];
  numTokens: number;
  /**
   * Decode steps the stages run back to back (default 1): every chunk is one decode token, its
   * blocks cover `steps` positions, and each step's sampled token feeds the next.
   */
  steps?: number;
}

export interface Preemption {
  seq: SchedulerSequence;
  /** The id whose blocks every stage must now free. */
  evictedSeqId: number;
}

export interface ScheduleResult {
  batch: MicroBatch | null;
  preempted: Preemption[];
}

export interface SchedulerOptions {
  blockSizeTokens: number;
  /** Blocks of the tightest stage: every stage must hold every running sequence. */
  kvBlocks: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** Longest prompt prefill per step; longer prompts are split over steps. */
  maxPrefillChunkTokens?: number;
  enablePrefixCaching?: boolean;
  /** Log prefix-cache block events for drainBlockEvents (default off). */
  recordBlockEvents?: boolean;
  /** "paged" (default) or "contiguous": max-length reservations, the baseline paging is measured against. */
  kvAllocator?: "paged" | "contiguous";
  /**
   * Micro-batches meant to be in flight at once (one per pipeline stage): each batch takes about
   * 1/depth of the running sequences, so every stage has work. Default 1.
   */
  pipelineDepth?: number;
  /** The model's sliding window: blocks wholly older than every later query's window are freed. */
  slidingWindowTokens?: number;
  /** Fresh sequence ids (for new sequences and recomputed preempted ones). */
  nextSeqId: () => number;
  /**
   * Longest decode run (multi-step scheduling, default 1): a batch of decodes only may run up to
   * this many steps without coming back, when every sequence has that many tokens to go and
   * its blocks for them can be had without preempting anyone.
   */
  maxDecodeSteps?: number;
}

export interface SchedulerStats extends KvPoolStats {
  running: number;
  waiting: number;
  preemptions: number;
  /** Sequences sent back to recompute because a stage lost a batch of theirs (see recomputeLost). */
  lostBatchRecomputes: number;
}

/** The smallest micro-batch the pipeline's fill is split from (see schedule). */
const MIN_SPLIT_FILL_BATCH = 4;

export class SchedulerCapacityError extends Error {
  override name = "SchedulerCapacityError";
}

/**
 * Continuous batching with chunked prefill and KV-budget admission. Pure: sequences in,
 * micro-batches out. The scheduler owns block allocation (one BlockPool sized to the tightest
 * stage) so every stage stores a sequence under the same block ids, and prefix sharing holds on
 * all of them. Decodes go first; a sequence that cannot grow preempts the latest-arrived running
 * sequence not in flight, which is recomputed later. Several micro-batches may be in flight; a
 * sequence is in at most one.
 */
export class Scheduler {
  private readonly waiting: SchedulerSequence[] = [];
  private readonly running: SchedulerSequence[] = [];
  private readonly pool: SchedulerKvAllocator;
  private preemptionCount = 0;
  private lostBatchRecomputeCount = 0;

  constructor(readonly opts: SchedulerOptions) {
    this.pool =
      opts.kvAllocator === "contiguous"
        ? new ContiguousKvAllocator(opts.kvBlocks, opts.blockSizeTokens)
        : new PagedKvAllocator({ numBlocks: opts.kvBlocks, blockSizeTokens: opts.blockSizeTokens, enablePrefixCaching: opts.enablePrefixCaching ?? true, recordBlockEvents: opts.recordBlockEvents });
  }

  add(seq: SchedulerSequence): void {
    // A sequence alone can always grow to its end (every other block can be preempted or
    // evicted), so nothing can deadlock, as long as its end fits at all.
    const blocks = Math.ceil(seq.maxLength / this.opts.blockSizeTokens);
    if (blocks > this.opts.kvBlocks) {
      throw new SchedulerCapacityError(
        `a request of up to ${seq.maxLength} positions needs ${blocks} KV blocks, but a stage holds only ${this.opts.kvBlocks}`,
      );
    }
    this.waiting.push(seq);
  }

  get numWaiting(): number {
    return this.waiting.length;
  }

  get numRunning(): number {
    return this.running.length;
  }

  stats(): SchedulerStats {
    return { ...this.pool.stats(), running: this.running.length, waiting: this.waiting.length, preemptions: this.preemptionCount, lostBatchRecomputes: this.lostBatchRecomputeCount };
  }

  /** Block table of a live sequence (for tests and debugging). */
  blockTable(seq: SchedulerSequence): readonly number[] {
    return this.pool.blockTable(seq.seqId);
  }

  /** `limits.maxDecodeSteps` caps this batch's decode run below the configured longest (see decodeRunCap). */
  schedule(limits: { maxDecodeSteps?: number } = {}): ScheduleResult {
    let budget = this.opts.maxNumBatchedTokens;
    const chunks: ScheduledChunk[] = [];
    const preempted: Preemption[] = [];
    const admissible = Math.min(this.waiting.length, Math.max(0, this.opts.maxNumSeqs - this.running.length));
    const depth = this.opts.pipelineDepth ?? 1;
    const steadyCap = Math.max(1, Math.ceil((this.running.length + admissible) / depth));
    // While the pipeline fills (every running sequence in flight with a prompt chunk, a
    // recompute's too, none decoding yet), micro-batches of half the size: the next stage starts
    // on the first one after half the prefill, and the rest of a burst joins the micro-batches as
    // their first tokens come back. Of 32 chat requests arriving together over 2 stages, the mean
    // time to first token fell 13-21% (345 -> 301, 421 -> 333 ms), the last as late as before;
    // rounds as fast, within 2%. A few requests are left together: the rest would wait a whole
    // cycle for little.
    const filling = depth > 1 && steadyCap >= MIN_SPLIT_FILL_BATCH && this.running.every((seq) => seq.inFlight && seq.tokenIds.length - seq.computed > 1);
    const seqCap = filling ? Math.max(1, Math.ceil(steadyCap / 2)) : steadyCap;
    // Blocks this batch's chunks write. A prompt whose cached prefix holds one waits for the
    // next batch and shares it there, rather than computing it a second time: every stage
    // gathers a batch's past before writing its K/V, and runs batches in order.
    const written = new Set<number>();

    const take = (seq: SchedulerSequence): boolean => {
      if (chunks.length >= seqCap) return false;
      const remaining = seq.tokenIds.length - seq.computed;
      const n = Math.min(remaining, budget, remaining > 1 ? (this.opts.maxPrefillChunkTokens ?? Infinity) : 1);
      if (n <= 0) return false;
      const end = seq.computed + n;
      while (!this.pool.canReserve(seq.seqId, end)) {
        const victim = this.pickVictim();
        if (!victim) return false; // everyone else is in flight: try again next step
        preempted.push(this.preempt(victim));
        if (victim === seq) return false;
      }
      this.pool.reserve(seq.seqId, end, seq.tokenIds);
      const table = this.pool.blockTable(seq.seqId);
      for (let i = Math.floor(seq.computed / this.opts.blockSizeTokens); i < Math.ceil(end / this.opts.blockSizeTokens); i++) written.add(table[i]);
      chunks.push({
        seq,
        seqId: seq.seqId,
        startPosition: seq.computed,
        tokenIds: seq.tokenIds.slice(seq.computed, end),
        blockIds: this.pool.blockTable(seq.seqId).slice(0, Math.ceil(end / this.opts.blockSizeTokens)),
        newSequence: seq.startsOnStages,
        sample: end === seq.tokenIds.length,
      });
      seq.startsOnStages = false;
      seq.inFlight = true;
      budget -= n;
      return true;
    };

    // Decodes first, then running prefills, in arrival order.
    for (const seq of [...this.running]) {
      if (budget <= 0 || chunks.length >= seqCap) break;
      if (seq.state === "running" && !seq.inFlight && seq.tokenIds.length - seq.computed === 1) take(seq);
    }
    for (const seq of [...this.running]) {
      if (budget <= 0 || chunks.length >= seqCap) break;
      if (seq.state === "running" && !seq.inFlight && seq.tokenIds.length - seq.computed > 1) take(seq);
    }
    // Admit waiting sequences while their prompt (after any cached prefix) fits. Never preempt
    // for a newcomer: that would only trade one recompute for another.
    while (budget > 0 && chunks.length < seqCap && preempted.length === 0 && this.waiting.length > 0 && this.running.length < this.opts.maxNumSeqs) {
      const seq = this.waiting[0];
      const cached = this.pool.admit(seq.seqId, seq.tokenIds, seq.extraKeys, seq.maxLength, Math.min(budget, this.opts.maxPrefillChunkTokens ?? Infinity), written);
      if (cached === null) break;
      this.waiting.shift();
      seq.computed = cached;
      seq.startsOnStages = true;
      seq.state = "running";
      this.running.push(seq);
      take(seq);
    }
    if (chunks.length === 0) return { batch: null, preempted };
    return { batch: { chunks, numTokens: chunks.reduce((a, c) => a + c.tokenIds.length, 0), steps: this.decodeRunSteps(chunks, limits.maxDecodeSteps) }, preempted };
  }

  // How many steps this batch can run back to back; reserves the blocks for them.
  private decodeRunSteps(chunks: ScheduledChunk[], cap = Infinity): number {
    const maxSteps = Math.min(this.opts.maxDecodeSteps ?? 1, cap);
    // A run's block tables are fixed when it starts; a sliding window frees blocks step by step.
    if (this.opts.slidingWindowTokens !== undefined) return 1;
    // Requests waiting for a seat join at the next step, not after a whole run.
    if (this.waiting.length > 0 && this.running.length < this.opts.maxNumSeqs) return 1;
    if (maxSteps <= 1 || chunks.some((c) => c.tokenIds.length !== 1 || !c.sample || c.seq.singleStep)) return 1;
    // Each step adds a token: no sequence may pass its maximum length.
    const steps = Math.min(maxSteps, ...chunks.map((c) => c.seq.maxLength - c.seq.tokenIds.length));
    if (steps <= 1) return 1;
    for (const c of chunks) {
      // Blocks taken before a later one fails stay with their sequence, which reaches them soon.
      if (!this.pool.canReserve(c.seqId, c.startPosition + steps)) return 1;
      this.pool.reserve(c.seqId, c.startPosition + steps, c.seq.tokenIds);
    }
    for (const c of chunks) c.blockIds = this.pool.blockTable(c.seqId).slice(0, Math.ceil((c.startPosition + steps) / this.opts.blockSizeTokens));
    return steps;
  }

  // Latest arrival first (possibly the sequence asking), among running sequences the pipeline is
  // not computing right now.
  private pickVictim(): SchedulerSequence | undefined {
    let victim: SchedulerSequence | undefined;
    for (const seq of this.running) {
      if (seq.inFlight || seq.state !== "running") continue;
      if (!victim || seq.arrival > victim.arrival) victim = seq;
    }
    return victim;
  }

  private preempt(seq: SchedulerSequence, why: "blocks" | "lost" = "blocks"): Preemption {
    const evictedSeqId = seq.seqId;
    // Its full blocks stay in the prefix cache, so the recompute often finds them again.
    this.pool.free(evictedSeqId);
    this.running.splice(this.running.indexOf(seq), 1);
    seq.seqId = this.opts.nextSeqId();
    seq.computed = 0;
    seq.state = "waiting";
    seq.preemptions++;
    if (why === "blocks") this.preemptionCount++;
    else this.lostBatchRecomputeCount++;
    // Back to the head of the queue, in arrival order among the preempted.
    const at = this.waiting.findIndex((w) => w.arrival > seq.arrival);
    this.waiting.splice(at < 0 ? this.waiting.length : at, 0, seq);
    return { seq, evictedSeqId };
  }

  /**
   * The stages computed step `step` of this batch (0 unless it is a decode run); sampled[i] is
   * the token for chunks[i] when it sampled. Sequences stay in flight until the last step.
   */
  complete(batch: MicroBatch, sampled: ReadonlyArray<number | undefined>, step = 0): void {
    const lastStep = step === (batch.steps ?? 1) - 1;
    batch.chunks.forEach((chunk, i) => {
      const seq = chunk.seq;
      if (lastStep) seq.inFlight = false;
      if (seq.state !== "running" || seq.seqId !== chunk.seqId) return;
      seq.computed = chunk.startPosition + chunk.tokenIds.length + step;
      const token = sampled[i];
      if (chunk.sample && token !== undefined) seq.tokenIds.push(token);
      // Every stage has finished this batch, so blocks no later query can see go back now.
      const window = this.opts.slidingWindowTokens;
      if (window !== undefined) this.pool.dropBlocksBefore(seq.seqId, seq.computed - window + 1);
    });
  }

  /**
   * A stage restarted empty: every block's content there is gone. Forgets the prefix cache and
   * sends every running sequence not in flight back to recompute under a fresh id (ones in
   * flight fail with their batch). Returns the preemptions, whose old ids the stages must free.
   */
  restartAll(): Preemption[] {
    const preempted = this.running.filter((seq) => !seq.inFlight && seq.state === "running").map((seq) => this.preempt(seq));
    this.pool.reset();
    return preempted;
  }

  /**
   * The batch failed on some stage: its blocks may hold nothing, so drop every content hash
   * (nothing may match them) and let the caller finish its sequences or recompute them
   * (recomputeLost).
   */
  fail(batch: MicroBatch): void {
    for (const chunk of batch.chunks) chunk.seq.inFlight = false;
    this.pool.reset();
  }

  /**
   * A stage lost a batch of this sequence's (it went down with it, say: see fail): the sequence
   * goes back to recompute under a fresh id, as a preempted one does, keeping the tokens it has.
   * Returns the preemption, whose old id the stages must free; undefined when it is not running
   * between steps.
   */
  recomputeLost(seq: SchedulerSequence): Preemption | undefined {
    if (seq.state !== "running" || seq.inFlight) return undefined;
    return this.preempt(seq, "lost");
  }

  /** Prefix-cache block events since the last call (with recordBlockEvents). */
  drainBlockEvents(): BlockEvent[] {
    return this.pool.drainBlockEvents();
  }

  /** Hashes of every block the prefix cache can match now: the state the events describe. */
  blockHashes(): string[] {
    return this.pool.blockHashes();
  }

  /**
   * Removes a finished or aborted sequence; its full blocks stay cached for later prefixes. Blocks
   * are hashed when reserved, with the tokens known then, so the ones a decode run filled after
   * its start (the tokens it sampled) are hashed here, up to the positions whose KV every stage
   * wrote: a conversation's next turn, its prompt the last one's answer, can match them too.
   * `kvWritten: false` (the sequence's last batch failed) hashes nothing more.
   */
  finish(seq: SchedulerSequence, kvWritten = true): void {
    if (kvWritten && seq.state === "running") this.pool.hashWrittenBlocks(seq.seqId, seq.tokenIds.slice(0, seq.computed));
    const waitingIndex = this.waiting.indexOf(seq);
    if (waitingIndex >= 0) this.waiting.splice(waitingIndex, 1);
    const runningIndex = this.running.indexOf(seq);
    if (runningIndex >= 0) this.running.splice(runningIndex, 1);
    this.pool.free(seq.seqId);
    seq.state = "finished";
  }
}
