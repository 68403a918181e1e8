import { create } from "@bufbuild/protobuf";
import { status as grpcStatus } from "@grpc/grpc-js";
import { toSubjectToken, type EventBus, type EvictReason } from "@strata/events";
import { decodeRunCap, MovingMean, Scheduler, type MicroBatch, type SchedulerOptions, type SchedulerSequence, type SchedulerStats } from "@strata/scheduler";
import { isGreedy, SeededRandom, type SamplingParams } from "@strata/sampling";
import { KvBlockEventSchema, SequenceChunkSchema, readF32Tensor, type KvBlockEvent, type ResultsResponse } from "@strata/proto";
import type { BlockEvent, ExtraKey } from "@strata/kv";
import { StageFailure, type PipelineClient } from "./pipeline-client.ts";

export class RequestValidationError extends Error {
  override name = "RequestValidationError";
}

export class ContextLengthError extends RequestValidationError {
  override name = "ContextLengthError";
}

/** Throws ContextLengthError when a prompt and the tokens to generate do not fit the context. */
export function checkContextLength(promptTokens: number, maxTokens: number, contextTokens: number): void {
  if (promptTokens + maxTokens > contextTokens) {
    throw new ContextLengthError(
      `this model's maximum context length is ${contextTokens} tokens, but ${promptTokens + maxTokens} were requested ` +
        `(${promptTokens} in the prompt, ${maxTokens} to generate)`,
    );
  }
}

export class RequestAbortedError extends Error {
  override name = "RequestAbortedError";
}

export type FinishReason = "stop" | "length";

export interface GenerateRequest {
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingParams;
  seed?: number;
  /** Ids that end generation (not emitted); defaults to the model's end tokens. */
  stopTokenIds?: number[];
  returnLogits?: boolean;
  /** Tenant salt: requests with different salts never share cached KV blocks. */
  cacheSalt?: string;
  /** A loaded LoRA adapter (id and load generation, which also key its cached KV blocks). */
  adapter?: AdapterRef;
  signal?: AbortSignal;
  onToken?: (tokenId: number, logits?: Float32Array) => void;
}

export interface AdapterRef {
  id: string;
  generation: number;
}

/** What a request's KV depends on besides its tokens: its adapter (at one load generation), its salt. */
export function requestExtraKeys(req: Pick<GenerateRequest, "adapter" | "cacheSalt">): ExtraKey[] {
  const keys: ExtraKey[] = [];
  if (req.adapter) keys.push({ kind: "adapter", value: `${req.adapter.id}\u0000${req.adapter.generation}` });
  if (req.cacheSalt !== undefined) keys.push({ kind: "salt", value: req.cacheSalt });
  return keys;
}

export interface GenerateResult {
  promptTokenIds: number[];
  tokenIds: number[];
  finishReason: FinishReason;
  /** Per generated position (including a final stop token's), when returnLogits. */
  logits?: Float32Array[];
}

export interface ModelLimits {
  maxPositionEmbeddings: number;
  vocabSize: number;
  eosTokenIds: number[];
}

/** A new token for a caller's onToken callback. */
interface TokenDelivery {
  onToken: NonNullable<GenerateRequest["onToken"]>;
  token: number;
  logits?: Float32Array;
}

interface ActiveRequest {
  seq: SchedulerSequence;
  req: GenerateRequest;
  rng: SeededRandom;
  /** Draws taken for steps a lost batch never computed: the recompute takes them first (see schedulePending). */
  unusedRandoms: number[];
  /** How many times a stage lost a batch of this request's and it went back to recompute. */
  lostBatches: number;
  logits: Float32Array[];
  abortRequested: boolean;
  /**
   * Ended inside a decode run: its later steps still write the sequence's KV, so it is finished
   * (and freed) after the run's last step. `outputEnd` is where its tokens end in seq.tokenIds.
   */
  ended?: { finishReason: FinishReason; droppedStopToken: boolean; outputEnd: number };
  /** The caller has its result (or error); the sequence may still hold KV until its batch is back. */
  answered?: boolean;
  resolve(result: GenerateResult): void;
  reject(error: Error): void;
}

const fromHex = (h: string) => Uint8Array.from(Buffer.from(h, "hex"));

function blockEventMessage(e: BlockEvent): KvBlockEvent {
  switch (e.kind) {
    case "stored":
      return create(KvBlockEventSchema, { event: { case: "stored", value: { blockHash: fromHex(e.blockHash), parentHash: e.parentHash ? fromHex(e.parentHash) : new Uint8Array() } } });
    case "removed":
      return create(KvBlockEventSchema, { event: { case: "removed", value: { blockHash: fromHex(e.blockHash) } } });
    case "cleared":
      return create(KvBlockEventSchema, { event: { case: "cleared", value: {} } });
  }
}

// How long an eviction event may take to reach every stage before reconcile frees by hand.
const EVICTION_GRACE_MS = 2000;

/**
 * How many lost batches one request survives: a request caught in more crashes than this (or a
 * batch that keeps failing as if lost) fails with the last one.
 */
const MAX_LOST_BATCHES = 3;

/**
 * A stage went down with the batch, or lost what the batch needed (a restarted worker, with no
 * layers or none of the sequences' KV): the request did nothing wrong and can be recomputed.
 * Errors of the request's own (a bad tensor, an unknown adapter, no KV room) cannot.
 */
function isLostBatch(error: Error): boolean {
  return error instanceof StageFailure && LOST_BATCH_CODES.includes(error.code);
}
const LOST_BATCH_CODES: number[] = [grpcStatus.UNAVAILABLE, grpcStatus.FAILED_PRECONDITION, grpcStatus.NOT_FOUND];

/** Decode runs aim to last about this long, and take at least MIN_RUN_STEPS (see decodeRunCap). */
const RUN_TARGET_MS = 25;
const MIN_RUN_STEPS = 8;

let seqCounter = 0;
let arrivalCounter = 0;

function nextSeqId(): number {
  seqCounter = (seqCounter % 0xffffffff) + 1;
  return seqCounter;
}

export type EngineSchedulerOptions = Omit<SchedulerOptions, "nextSeqId">;

/**
 * The step loop: schedule → forward through the stages → take the sampled tokens → emit → free.
 * Up to `maxInFlight` micro-batches (one per stage) move through the pipeline at once.
 */
export class Engine {
  private readonly scheduler: Scheduler;
  // The longest decode run configured; runs are sized below it by time (decodeRunCap).
  private readonly maxDecodeSteps: number;
  private readonly active = new Map<SchedulerSequence, ActiveRequest>();
  // Callers of adapterDrained, by adapter id.
  private readonly adapterDrainWaiters = new Map<string, Array<() => void>>();
  // See requestOf: null marks an id that is gone.
  private requestsBySeqId = new Map<number, ActiveRequest | null>();
  private inFlight = 0;
  // Wall time per step of recent decode runs, round trip included: what sizes the next runs.
  private readonly runStepMs = new MovingMean();
  tokensGenerated = 0;
  private blockEventId = 0n;
  // Sequence ids evicted over NATS lately, with when: reconcile leaves them to their event.
  private readonly recentEvictions = new Map<number, number>();
  /** Names this engine's block pool in strata.kv.events.<pool id> (one NATS subject token). */
  readonly poolId: string;
  /**
   * Whether requests whose batch a stage lost are recomputed (see onFailure) rather than failed,
   * and how long the engine then holds all scheduling for the stages' recovery (see
   * stagesRecovered). Set by whoever recovers the stages (LocalCluster.start, whose recoverStages
   * calls stagesRecovered): without one, nothing would end the wait but its deadline.
   */
  lostBatchRecovery: { waitMs: number } | undefined;
  /** Told when scheduling starts waiting on the stages after a lost batch, and how the wait ends. */
  onRecoveryWait: ((event: "waiting" | "recovered" | "timed out", requests: number) => void) | undefined;
  // A batch was lost: nothing is scheduled until the stages recover or `timer` fires.
  private outage: { timer: NodeJS.Timeout } | undefined;
  // The last wait ran out with the stages still down: lost batches fail until they recover.
  private failLostBatches = false;

  constructor(
    private readonly pipeline: PipelineClient,
    private readonly events: EventBus,
    readonly limits: ModelLimits,
    schedulerOptions: EngineSchedulerOptions,
    private readonly maxInFlight: number,
    /** Any string: made one subject token here (the cluster passes host, pid and event scope). */
    poolId: string,
  ) {
    this.maxDecodeSteps = schedulerOptions.maxDecodeSteps ?? 1;
    this.scheduler = new Scheduler({ ...schedulerOptions, recordBlockEvents: true, nextSeqId });
    this.poolId = toSubjectToken(poolId);
  }

  /**
   * The prefix cache's matchable block hashes and the event id they are current at: what a
   * strata.kv.events consumer loads after a gap. Pending events go out first, so the two agree.
   */
  blockSnapshot(): { poolId: string; eventId: bigint; blockHashes: string[] } {
    this.publishBlockEvents();
    return { poolId: this.poolId, eventId: this.blockEventId, blockHashes: this.scheduler.blockHashes() };
  }

  private evict(seqId: number, reason: EvictReason): void {
    this.events.publishEvict(seqId, reason);
    this.recentEvictions.set(seqId, Date.now());
  }

  private publishBlockEvents(): void {
    const events = this.scheduler.drainBlockEvents();
    if (events.length === 0) return;
    this.blockEventId++;
    this.events.publishKvBlockEvents({ poolId: this.poolId, eventId: this.blockEventId, events: events.map(blockEventMessage) });
  }

  stats(): SchedulerStats {
    return this.scheduler.stats();
  }

  /**
   * Frees, on every stage, sequences the engine no longer runs: the fallback for eviction events
   * lost while NATS was away (core NATS does not replay). A sequence is live in the engine from
   * before its first chunk leaves until after its last result is back, so nothing live is freed.
   * Returns how many stale sequences it found.
   */
  async reconcile(): Promise<number> {
    let stale = 0;
    const now = Date.now();
    for (const [id, at] of this.recentEvictions) if (now - at > EVICTION_GRACE_MS) this.recentEvictions.delete(id);
    await Promise.all(
      this.pipeline.stages.map(async (_, stage) => {
        const onStage = (await this.pipeline.describe(stage)).seqIds;
        const live = new Set(this.liveSequenceIds());
        // An eviction published a moment ago may still be on its way: not lost (yet).
        const orphans = onStage.filter((id) => !live.has(id) && !this.recentEvictions.has(id));
        stale += orphans.length;
        if (orphans.length > 0) await this.pipeline.freeSequences(stage, orphans);
      }),
    );
    return stale;
  }

  /**
   * Some stage restarted empty (see PipelineClient.recover): nothing cached there can be trusted,
   * and sequences between steps are recomputed from their tokens.
   */
  stagesRestarted(): void {
    for (const p of this.scheduler.restartAll()) this.evict(p.evictedSeqId, "preempted");
    this.pump();
  }

  /**
   * Every stage answers with its layers loaded again: requests held since a lost batch go on
   * (see onFailure).
   */
  stagesRecovered(): void {
    if (this.outage) this.onRecoveryWait?.("recovered", this.active.size);
    clearTimeout(this.outage?.timer);
    this.outage = undefined;
    this.failLostBatches = false;
    this.pump();
  }

  /** Whether scheduling waits on the stages' recovery after a lost batch. */
  get holdingForRecovery(): boolean {
    return this.outage !== undefined;
  }

  /** Called when a micro-batch fails (a stage may be down). */
  onBatchFailure: ((error: Error) => void) | undefined;

  /** Stage-side ids of the live requests, oldest first (debugging and tests). */
  liveSequenceIds(): number[] {
    return [...this.active.keys()].sort((a, b) => a.arrival - b.arrival).map((s) => s.seqId);
  }

  /**
   * The live request whose sequence has id `seqId` on the stages, if any. Asked for every sequence
   * of every step (telemetry), so the map is kept and rebuilt only when an id is not in it: a new
   * request, a preempted one back under a fresh id, or one gone (remembered as gone: ids are never
   * reused).
   */
  requestOf(seqId: number): GenerateRequest | undefined {
    const known = this.requestsBySeqId.get(seqId);
    if (known === null) return undefined;
    if (known && known.seq.seqId === seqId && this.active.get(known.seq) === known) return known.req;
    const rebuilt = new Map<number, ActiveRequest | null>();
    for (const active of this.active.values()) rebuilt.set(active.seq.seqId, active);
    const found = rebuilt.get(seqId);
    if (!found) rebuilt.set(seqId, null);
    this.requestsBySeqId = rebuilt;
    return found?.req;
  }

  /** Live requests running with adapter `id` (any generation). */
  requestsWithAdapter(id: string): number {
    let n = 0;
    for (const a of this.active.values()) if (a.req.adapter?.id === id) n++;
    return n;
  }

  /** Resolves once no live request runs with adapter `id` (an unload waits for this). */
  adapterDrained(id: string): Promise<void> {
    if (this.requestsWithAdapter(id) === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const waiting = this.adapterDrainWaiters.get(id);
      if (waiting) waiting.push(resolve);
      else this.adapterDrainWaiters.set(id, [resolve]);
    });
  }

  // A request with adapter `id` ended: its unload goes on once none is left.
  private wakeAdapterDrainWaiters(id: string): void {
    const waiting = this.adapterDrainWaiters.get(id);
    if (!waiting || this.requestsWithAdapter(id) > 0) return;
    this.adapterDrainWaiters.delete(id);
    for (const resolve of waiting) resolve();
  }

  get numRunning(): number {
    return this.scheduler.numRunning;
  }

  get numWaiting(): number {
    return this.scheduler.numWaiting;
  }

  generate(req: GenerateRequest): Promise<GenerateResult> {
    this.validate(req);
    const seq: SchedulerSequence = {
      seqId: nextSeqId(),
      // Logprobs need every step's logits, which decode runs do not send back.
      singleStep: req.returnLogits === true,
      arrival: arrivalCounter++,
      tokenIds: [...req.promptIds],
      promptLength: req.promptIds.length,
      maxLength: req.promptIds.length + req.maxTokens,
      extraKeys: requestExtraKeys(req),
      computed: 0,
      startsOnStages: true,
      inFlight: false,
      state: "waiting",
      preemptions: 0,
    };
    return new Promise<GenerateResult>((resolve, reject) => {
      const active: ActiveRequest = {
        seq,
        req,
        rng: new SeededRandom(req.seed ?? Math.floor(Math.random() * 2 ** 32)),
        logits: [],
        unusedRandoms: [],
        lostBatches: 0,
        abortRequested: false,
        resolve,
        reject,
      };
      this.scheduler.add(seq);
      this.active.set(seq, active);
      req.signal?.addEventListener("abort", () => this.abort(active), { once: true });
      if (req.signal?.aborted) this.abort(active);
      this.pumpSoon();
    });
  }

  private pumpScheduled = false;

  // Requests that arrive together (one tick of the event loop: a burst of HTTP requests, a
  // Promise.all) are scheduled together, not the first alone in a batch of its own.
  private pumpSoon(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private validate(req: GenerateRequest): void {
    const ctx = this.limits.maxPositionEmbeddings;
    if (req.promptIds.length === 0) throw new RequestValidationError("prompt is empty: it must hold at least one token");
    if (!Number.isInteger(req.maxTokens) || req.maxTokens < 1) throw new RequestValidationError(`max_tokens must be a positive integer, got ${req.maxTokens}`);
    const bad = req.promptIds.find((id) => !Number.isInteger(id) || id < 0 || id >= this.limits.vocabSize);
    if (bad !== undefined) throw new RequestValidationError(`token id ${bad} is outside the vocabulary of ${this.limits.vocabSize}`);
    checkContextLength(req.promptIds.length, req.maxTokens, ctx);
  }

  private pump(): void {
    // One block-event batch per pump: what scheduling (and any reset before it) did to the cache.
    try {
      this.schedulePending();
    } finally {
      this.publishBlockEvents();
    }
  }

  private schedulePending(): void {
    while (this.inFlight < this.maxInFlight && !this.outage) {
      const { batch, preempted } = this.scheduler.schedule({
        maxDecodeSteps: decodeRunCap(this.runStepMs.value, { minSteps: MIN_RUN_STEPS, maxSteps: this.maxDecodeSteps, targetMs: RUN_TARGET_MS }),
      });
      // Every stage frees a preempted sequence; it comes back under a fresh id and recomputes.
      for (const p of preempted) this.evict(p.evictedSeqId, "preempted");
      if (!batch) return;
      this.inFlight++;
      const steps = batch.steps ?? 1;
      // Each chunk's draws: a lost batch gives back those of the steps it never computed.
      const randomsByChunk: number[][] = [];
      const chunks = batch.chunks.map((c) => {
        const active = this.active.get(c.seq)!;
        // One seeded draw per step that samples, in step order: a run samples as single steps would.
        const randoms = c.sample && !isGreedy(active.req.sampling) ? Array.from({ length: steps }, () => active.unusedRandoms.shift() ?? active.rng.next()) : [];
        randomsByChunk.push(randoms);
        return create(SequenceChunkSchema, {
          seqId: c.seqId,
          startPosition: c.startPosition,
          numTokens: c.tokenIds.length,
          tokenIds: c.tokenIds,
          blockIds: c.blockIds,
          newSequence: c.newSequence,
          sample: c.sample,
          sampling: active.req.sampling,
          random: randoms[0] ?? 0,
          randoms: steps > 1 ? randoms : [],
          returnLogits: c.sample && active.req.returnLogits === true,
          adapter: active.req.adapter?.id ?? "",
        });
      });
      let stepsBack = 0;
      const run = {
        steps,
        onStep: (result: ResultsResponse) => {
          stepsBack++;
          this.deliver(this.onResult(batch, result));
        },
      };
      const sentMs = performance.now();
      this.pipeline.forward(chunks, {}, run).then(
        (result) => {
          let tokens: TokenDelivery[] = [];
          try {
            if (steps > 1) this.runStepMs.add((performance.now() - sentMs) / steps);
            tokens = this.onResult(batch, result);
          } finally {
            // The stages wait on the next micro-batch, the callers' token callbacks (detokenizing,
            // stop strings, a stream's chunks) on nothing: the batch goes out first.
            this.inFlight--;
            this.pump();
          }
          this.deliver(tokens);
        },
        (error: Error) => {
          this.onFailure(batch, error, randomsByChunk.map((randoms) => randoms.slice(stepsBack)));
          this.inFlight--;
          this.pump();
        },
      );
    }
  }

  /**
   * Takes in one step's results: every sequence's new token, its end (stop token, max_tokens) and
   * what the scheduler makes of it. Returns the tokens for the callers' onToken callbacks (see
   * deliver), which change nothing here.
   */
  private onResult(batch: MicroBatch, result: ResultsResponse): TokenDelivery[] {
    const tokens: TokenDelivery[] = [];
    const step = result.step;
    const lastStep = step === (batch.steps ?? 1) - 1;
    const sampled = batch.chunks.map((c, i) => (c.sample ? result.outputs[i]?.tokenId : undefined));
    this.scheduler.complete(batch, sampled, step);
    batch.chunks.forEach((chunk, i) => {
      const active = this.active.get(chunk.seq);
      if (!active) return;
      // The run goes on writing this sequence's KV: nothing is freed before its last step.
      if (active.ended) return lastStep ? this.finish(active, "finished", undefined, active.ended.finishReason, active.ended.droppedStopToken, active.ended.outputEnd) : undefined;
      if (active.abortRequested) return lastStep ? this.finish(active, "aborted", new RequestAbortedError("request aborted")) : undefined;
      if (!chunk.sample) return;
      const output = result.outputs[i];
      const token = output.tokenId;
      const logits = active.req.returnLogits ? readF32Tensor(output.logits, [this.limits.vocabSize], "logits") : undefined;
      if (logits) active.logits.push(logits);
      const stopIds = active.req.stopTokenIds ?? this.limits.eosTokenIds;
      const outputEnd = active.seq.tokenIds.length;
      if (stopIds.includes(token)) return this.end(active, lastStep, "stop", true, outputEnd);
      this.tokensGenerated++;
      if (active.req.onToken) tokens.push({ onToken: active.req.onToken, token, logits });
      const generated = active.seq.tokenIds.length - active.seq.promptLength;
      if (generated >= active.req.maxTokens) this.end(active, lastStep, "length", false, outputEnd);
    });
    return tokens;
  }

  /**
   * Runs the onToken callbacks of a step's tokens. Synchronously, before any caller's promise
   * settles (answer only resolves): a caller sees every token of its request before its result.
   */
  private deliver(tokens: TokenDelivery[]): void {
    for (const t of tokens) t.onToken(t.token, t.logits);
  }

  private end(active: ActiveRequest, lastStep: boolean, finishReason: FinishReason, droppedStopToken: boolean, outputEnd: number): void {
    if (lastStep) return this.finish(active, "finished", undefined, finishReason, droppedStopToken, outputEnd);
    // The caller is answered now; the blocks go after the run's last step.
    active.ended = { finishReason, droppedStopToken, outputEnd };
    this.answer(active, undefined, finishReason, droppedStopToken, outputEnd);
  }

  /**
   * A batch failed. Where a stage lost it (isLostBatch) and lostBatchRecovery is on, its requests
   * go back to recompute from the tokens they have, as preempted ones do, so their output is what
   * it would have been, and the engine schedules nothing more until the stages have recovered:
   * batches sent meanwhile would be lost too. `unusedRandoms[i]` are chunk i's draws for the steps
   * that never came back. Any other failure fails the batch's requests.
   */
  private onFailure(batch: MicroBatch, error: Error, unusedRandoms: number[][]): void {
    this.scheduler.fail(batch);
    const recovery = this.lostBatchRecovery;
    const recompute = recovery !== undefined && !this.failLostBatches && isLostBatch(error);
    let recomputing = false;
    batch.chunks.forEach((chunk, i) => {
      const active = this.active.get(chunk.seq);
      if (!active) return;
      const lost = recompute && !active.ended && !active.abortRequested && active.lostBatches < MAX_LOST_BATCHES ? this.scheduler.recomputeLost(chunk.seq) : undefined;
      if (!lost) return this.finish(active, "aborted", error);
      active.lostBatches++;
      active.unusedRandoms.unshift(...unusedRandoms[i]);
      this.evict(lost.evictedSeqId, "preempted");
      recomputing = true;
    });
    if (recomputing && !this.outage) {
      const timer = setTimeout(() => {
        // The stages did not come back in time: what was held is sent, and fails if they are still down.
        this.outage = undefined;
        this.failLostBatches = true;
        this.onRecoveryWait?.("timed out", this.active.size);
        this.pump();
      }, recovery!.waitMs);
      timer.unref();
      this.outage = { timer };
      this.onRecoveryWait?.("waiting", this.active.size);
    }
    this.onBatchFailure?.(error);
  }

  private abort(active: ActiveRequest): void {
    if (!this.active.has(active.seq)) return;
    // A batch in flight still writes this sequence's KV; free it once that batch is back.
    if (!active.seq.inFlight) return this.finish(active, "aborted", new RequestAbortedError("request aborted"));
    active.abortRequested = true;
    this.answer(active, new RequestAbortedError("request aborted"));
  }

  private finish(
    active: ActiveRequest,
    reason: "finished" | "aborted",
    error?: Error,
    finishReason: FinishReason = "length",
    droppedStopToken = false,
    outputEnd = active.seq.tokenIds.length,
  ): void {
    this.answer(active, error, finishReason, droppedStopToken, outputEnd);
    const seq = active.seq;
    this.active.delete(seq);
    const adapterId = active.req.adapter?.id;
    if (adapterId !== undefined) this.wakeAdapterDrainWaiters(adapterId);
    // A sequence that never reached the stages (or was preempted, already evicted) has nothing there to free.
    const onStages = seq.state === "running" && !seq.startsOnStages;
    // A failed batch (any error but an abort) may have left its blocks unwritten.
    this.scheduler.finish(seq, error === undefined || error instanceof RequestAbortedError);
    if (onStages) this.evict(seq.seqId, reason);
  }

  /** Settles the caller's promise, once. */
  private answer(active: ActiveRequest, error?: Error, finishReason: FinishReason = "length", droppedStopToken = false, outputEnd = active.seq.tokenIds.length): void {
    if (active.answered) return;
    active.answered = true;
    if (error) return active.reject(error);
    const seq = active.seq;
    const generated = seq.tokenIds.slice(seq.promptLength, droppedStopToken ? outputEnd - 1 : outputEnd);
    active.resolve({
      promptTokenIds: seq.tokenIds.slice(0, seq.promptLength),
      tokenIds: generated,
      finishReason,
      logits: active.req.returnLogits ? active.logits : undefined,
    });
  }

  /** Fails everything still queued or running (shutdown). */
  close(): void {
    clearTimeout(this.outage?.timer);
    this.outage = undefined;
    for (const active of [...this.active.values()]) this.finish(active, "aborted", new RequestAbortedError("engine closed"));
  }
}
