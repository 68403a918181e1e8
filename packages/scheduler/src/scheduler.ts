/** What the scheduler knows of a request: token ids and how far the stages have computed them. */
export interface SchedulerSequence {
  readonly seqId: number;
  /** Prompt followed by generated ids. */
  readonly tokenIds: number[];
  readonly promptLength: number;
  /** Prompt + max new tokens: the most positions this sequence can ever hold. */
  readonly maxLength: number;
  /** Positions whose KV every stage holds. */
  computed: number;
  inFlight: boolean;
  state: "waiting" | "running" | "finished";
}

export interface ScheduledChunk {
  seq: SchedulerSequence;
  startPosition: number;
  tokenIds: number[];
  /** The chunk reaches the sequence's last known token: the stages produce its next token. */
  sample: boolean;
}

export interface MicroBatch {
  chunks: ScheduledChunk[];
  numTokens: number;
}

export interface SchedulerOptions {
  blockSizeTokens: number;
  /** Blocks of the tightest stage: every stage must hold every admitted sequence. */
  kvBlocks: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
}

export class SchedulerCapacityError extends Error {
  override name = "SchedulerCapacityError";
}

/**
 * Continuous batching with chunked prefill. Pure: sequences in, micro-batches out. A sequence is
 * admitted only when the blocks for its whole possible length fit on every stage, so a running
 * sequence never needs to be preempted; decodes go first so long prompts cannot starve them.
 * Several micro-batches may be in flight; a sequence is in at most one.
 */
export class Scheduler {
  private readonly waiting: SchedulerSequence[] = [];
  private readonly running: SchedulerSequence[] = [];
  private reservedBlocks = 0;

  constructor(readonly opts: SchedulerOptions) {}

  blocksFor(length: number): number {
    return Math.ceil(length / this.opts.blockSizeTokens);
  }

  add(seq: SchedulerSequence): void {
    if (this.blocksFor(seq.maxLength) > this.opts.kvBlocks) {
      throw new SchedulerCapacityError(
        `sequence needs ${this.blocksFor(seq.maxLength)} KV blocks for ${seq.maxLength} positions, but a stage holds only ${this.opts.kvBlocks}`,
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

  get usedBlocks(): number {
    return this.reservedBlocks;
  }

  hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  schedule(): MicroBatch | null {
    let budget = this.opts.maxNumBatchedTokens;
    const chunks: ScheduledChunk[] = [];
    const take = (seq: SchedulerSequence): void => {
      const remaining = seq.tokenIds.length - seq.computed;
      const n = Math.min(remaining, budget);
      if (n <= 0) return;
      chunks.push({
        seq,
        startPosition: seq.computed,
        tokenIds: seq.tokenIds.slice(seq.computed, seq.computed + n),
        sample: seq.computed + n === seq.tokenIds.length,
      });
      seq.inFlight = true;
      budget -= n;
    };
    // Decodes first, then running prefills, in arrival order.
    for (const seq of this.running) if (!seq.inFlight && seq.tokenIds.length - seq.computed === 1) take(seq);
    for (const seq of this.running) if (!seq.inFlight && seq.tokenIds.length - seq.computed > 1) take(seq);
    while (budget > 0 && this.waiting.length > 0 && this.running.length < this.opts.maxNumSeqs) {
      const seq = this.waiting[0];
      const blocks = this.blocksFor(seq.maxLength);
      if (this.reservedBlocks + blocks > this.opts.kvBlocks) break;
      this.waiting.shift();
      this.reservedBlocks += blocks;
      seq.state = "running";
      this.running.push(seq);
      take(seq);
    }
    if (chunks.length === 0) return null;
    return { chunks, numTokens: chunks.reduce((a, c) => a + c.tokenIds.length, 0) };
  }

  /** The stages computed this batch; sampled[i] is the token for chunks[i] when it sampled. */
  complete(batch: MicroBatch, sampled: ReadonlyArray<number | undefined>): void {
    batch.chunks.forEach((chunk, i) => {
      const seq = chunk.seq;
      seq.inFlight = false;
      if (seq.state !== "running") return;
      seq.computed = chunk.startPosition + chunk.tokenIds.length;
      const token = sampled[i];
      if (chunk.sample && token !== undefined) seq.tokenIds.push(token);
    });
  }

  /** The batch failed: its sequences are dropped by the caller, nothing was computed. */
  release(batch: MicroBatch): void {
    for (const chunk of batch.chunks) chunk.seq.inFlight = false;
  }

  /** Removes a finished or aborted sequence and returns its blocks to the budget. */
  finish(seq: SchedulerSequence): void {
    const waitingIndex = this.waiting.indexOf(seq);
    if (waitingIndex >= 0) this.waiting.splice(waitingIndex, 1);
    const runningIndex = this.running.indexOf(seq);
    if (runningIndex >= 0) {
      this.running.splice(runningIndex, 1);
      this.reservedBlocks -= this.blocksFor(seq.maxLength);
    }
    seq.state = "finished";
  }
}
