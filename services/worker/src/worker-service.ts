import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { parseKvDtype, type KvDtype } from "@strata/kv";
import { openModel } from "@strata/model";
import { isGreedy, sampleToken } from "@strata/sampling";
import { checkEventScope, type EventBus, type EvictReason } from "@strata/events";
import {
  AdapterInfoSchema,
  LoadAdapterResponseSchema,
  UnloadAdapterResponseSchema,
  type LoadAdapterRequest,
  type LoadAdapterResponse,
  type UnloadAdapterRequest,
  type UnloadAdapterResponse,
  DescribeResponseSchema,
  ForwardRequestSchema,
  ForwardResponseSchema,
  FreeSequencesResponseSchema,
  HealthResponseSchema,
  KvStatsSchema,
  SequenceBlocksSchema,
  LoadResponseSchema,
  ResultsBatchSchema,
  ResultsResponseSchema,
  SequenceOutputSchema,
  StageTimingSchema,
  StageErrorSchema,
  WorkerService,
  f32Tensor,
  grpcChannelOptions,
  grpcClientConstructor,
  grpcServiceDefinition,
  readF32Tensor,
  type DescribeRequest,
  type DescribeResponse,
  type ForwardRequest,
  type ForwardResponse,
  type FreeSequencesRequest,
  type LoadRequest,
  type ResultsBatch,
  type ResultsResponse,
  type SequenceChunk,
  type StageError,
  type StageTiming,
} from "@strata/proto";
import { runStepTraceparent, wallClockMs } from "@strata/telemetry";
import type { StageChunk, StageOutput } from "@strata/compute";
import { errorMessage, grpcCodeFor, StageRequestError } from "./errors.ts";
import type { StageObserver } from "./telemetry.ts";
import { DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_KV_CACHE_BYTES, LoadedStage } from "./stage.ts";

const WorkerClient = grpcClientConstructor(WorkerService);

export interface WorkerOptions {
  workerId: string;
  intraOpThreads?: number;
  /** onnxruntime on its own thread, so gRPC keeps flowing while a stage computes (default off). */
  computeThread?: boolean;
  events?: EventBus;
  log?: (line: string) => void;
  /**
   * How long a decode run's intermediate step results may wait to go out together with later
   * steps' (default 50 ms; 0 sends every step at once).
   */
  resultHoldMs?: number;
}

type ForwardCall = grpc.ServerDuplexStream<ForwardRequest, ForwardResponse>;

export const DEFAULT_RESULT_HOLD_MS = 50;
// Held results go out once this many wait (the coordinator then keeps pace with a long run), and
// a run's last steps are never held (see processBatch).
const MAX_HELD_RESULTS = 32;
const UNHELD_LAST_STEPS = 2;
// Decode runs a stage remembers at once (one per micro-batch in flight, normally); a run that
// never finishes (its coordinator went away) is forgotten after this many newer ones.
const MAX_RUNS = 256;
// How long a load waits for NATS to confirm the stage's event subscriptions (see takeEventsOf).
const SUBSCRIBE_WAIT_MS = 2000;

/** A decode run's chunks as its first step brought them, with their first positions. */
interface RunState {
  seqs: SequenceChunk[];
  starts: number[];
  // Trace parent of the run's step 1 (when traced): step k's stage spans belong to the
  // coordinator's span runStepTraceparent(traceparent, k).
  traceparent: string;
}

/**
 * A pipeline stage as a gRPC service. Micro-batches are processed strictly in arrival order (the
 * KV of a sequence depends on its previous chunk). Compute runs on this thread by default (a
 * step's session.run blocks the loop, and bytes wait in the socket meanwhile), or on a compute
 * thread of its own.
 */
export class WorkerNode {
  private stage: LoadedStage | undefined;
  // Hidden states go on to the next stage; a decode run's sampled tokens loop back to the first.
  private readonly nextStage = new StageLink("next stage", (line) => this.log(line), () => this.stageIndex);
  private readonly firstStage = new StageLink("first stage", (line) => this.log(line), () => this.stageIndex);
  private readonly resultSubscribers = new Set<grpc.ServerWritableStream<unknown, ResultsBatch>>();
  private queue: Promise<void> = Promise.resolve();
  // Something went to another process since the last batch started (see enqueue).
  private wrotePeer = false;
  // Set by close: batches still arriving or computing fail as lost, not as the request's fault.
  private closing = false;
  // Held results of decode runs, by batch id (see publishResult).
  private readonly heldResults = new Map<number, { results: ResultsResponse[]; sinceMs: number }>();
  // Decode runs in progress on this stage, by batch id: their later steps carry no chunks.
  private readonly runs = new Map<number, RunState>();
  private readonly log: (line: string) => void;
  /** Metrics and stage spans; set by the server that hosts this node. */
  observer: StageObserver | undefined;

  constructor(private readonly opts: WorkerOptions) {
    this.log = opts.log ?? (() => {});
  }

  // The cluster scope this stage takes events under, and how to stop taking them.
  private eventScope = "";
  private unsubscribeEvents: (() => void)[] = [];

  /**
   * Takes eviction and adapter events under the scope of the cluster that loaded this stage (see
   * LoadRequest.event_scope), and no others: another cluster on the same NATS server evicting its
   * own sequence 1 must not free this one's. Resolves once the server has the subscriptions, so no
   * event the coordinator publishes after the load is lost; or after SUBSCRIBE_WAIT_MS with NATS
   * away, so a stage still loads then (the client subscribes when it reconnects, and what was
   * published meanwhile is what the coordinator's reconciling is for).
   */
  private async takeEventsOf(scope: string): Promise<void> {
    const events = this.opts.events;
    if (!events || scope === this.eventScope) return;
    for (const unsubscribe of this.unsubscribeEvents.splice(0)) unsubscribe();
    this.eventScope = scope;
    if (scope === "") return;
    const malformed = (error: Error, subject: string) => this.log(`ignored malformed event on ${subject}: ${error.message}`);
    this.unsubscribeEvents.push(
      events.onEvict(scope, (event) => this.stage?.tables.evict(event.seqId, event.reason === ("preempted" satisfies EvictReason)), malformed),
      events.onAdapterInvalidate(scope, (event) => {
        if (this.stage?.unloadAdapter(event.adapterId, event.generation)) this.log(`dropped adapter ${event.adapterId} (generation ${event.generation} invalidated)`);
      }, malformed),
    );
    await Promise.race([events.flush().catch(() => {}), new Promise((resolve) => setTimeout(resolve, SUBSCRIBE_WAIT_MS).unref())]);
  }

  serviceImplementation(): grpc.UntypedServiceImplementation {
    return {
      load: (call: grpc.ServerWritableStream<LoadRequest, unknown>) => void this.handleLoad(call),
      describe: (call: grpc.ServerUnaryCall<DescribeRequest, unknown>, callback: grpc.sendUnaryData<DescribeResponse>) =>
        callback(null, this.describe(call.request.seqIds)),
      forward: (call: ForwardCall) => this.handleForward(call),
      results: (call: grpc.ServerWritableStream<unknown, ResultsBatch>) => {
        this.resultSubscribers.add(call);
        call.on("cancelled", () => this.resultSubscribers.delete(call));
        call.on("close", () => this.resultSubscribers.delete(call));
      },
      freeSequences: (call: grpc.ServerUnaryCall<FreeSequencesRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        const tables = this.stage?.tables;
        const unknown = call.request.seqIds.filter((id) => !tables?.has(id));
        let blocksFreed = 0;
        for (const id of call.request.seqIds) blocksFreed += tables?.free(id) ?? 0;
        if (unknown.length > 0) {
          callback({ code: grpc.status.NOT_FOUND, details: `unknown sequence ids: ${unknown.join(", ")} (freed ${blocksFreed} blocks of the others)` });
          return;
        }
        callback(null, create(FreeSequencesResponseSchema, { blocksFreed }));
      },
      loadAdapter: (call: grpc.ServerUnaryCall<LoadAdapterRequest, unknown>, callback: grpc.sendUnaryData<LoadAdapterResponse>) => {
        const { adapterId, path, generation } = call.request;
        // Between batches, so no micro-batch sees a half-replaced adapter.
        const loaded = this.queue.then(async () => {
          if (!this.stage) throw new StageRequestError(grpc.status.FAILED_PRECONDITION, "no layers loaded on this worker");
          return this.stage.loadAdapter(adapterId, path, generation);
        });
        this.queue = loaded.then(() => {}, () => {});
        loaded.then(
          (r) => {
            this.log(`loaded adapter ${adapterId} (generation ${generation}, rank ${r.rank}) from ${path}`);
            callback(null, create(LoadAdapterResponseSchema, { rank: r.rank, bytesRead: BigInt(r.bytesRead) }));
          },
          (error) => callback({ code: grpcCodeFor(error), details: errorMessage(error) }),
        );
      },
      unloadAdapter: (call: grpc.ServerUnaryCall<UnloadAdapterRequest, unknown>, callback: grpc.sendUnaryData<UnloadAdapterResponse>) =>
        callback(null, create(UnloadAdapterResponseSchema, { wasLoaded: this.stage?.unloadAdapter(call.request.adapterId) ?? false })),
      health: (_call: unknown, callback: grpc.sendUnaryData<unknown>) =>
        // A stage whose compute thread is gone is loaded but serves nothing: /ready says so.
        callback(null, create(HealthResponseSchema, { serving: !this.stage?.engine.failure, loaded: this.stage !== undefined })),
    };
  }

  describe(blockTablesOf: readonly number[] = []): DescribeResponse {
    const s = this.stage;
    if (!s) return create(DescribeResponseSchema, { workerId: this.opts.workerId, loaded: false });
    const t = s.tables;
    return create(DescribeResponseSchema, {
      workerId: this.opts.workerId,
      loaded: true,
      layerStart: s.spec.layerStart,
      layerEnd: s.spec.layerEnd,
      numLayers: s.config.numLayers,
      hiddenSize: s.config.hiddenSize,
      vocabSize: s.config.vocabSize,
      maxPositionEmbeddings: s.config.maxPositionEmbeddings,
      firstStage: s.firstStage,
      lastStage: s.lastStage,
      stageIndex: s.spec.stageIndex,
      numStages: s.spec.numStages,
      device: s.spec.device,
      weightBytesRead: BigInt(s.weightBytesRead),
      kv: create(KvStatsSchema, {
        blockSizeTokens: t.blockSizeTokens,
        blocksTotal: t.numBlocks,
        blocksUsed: t.blocksUsed,
        blocksFree: t.blocksFree,
        blocksCached: t.blocksCached,
        kvBytesPerToken: BigInt(s.kvBytesPerToken),
        sequences: t.sequenceIds().length,
        kvDtype: s.spec.kvDtype,
        sequencesEvicted: BigInt(t.sequencesEvicted),
        sharedPastPositionsRead: BigInt(s.engine.sharedPast.positionsRead),
        sharedPastPositionReadsSaved: BigInt(s.engine.sharedPast.positionReadsSaved),
        prefixQueries: BigInt(t.prefixQueries),
        prefixHits: BigInt(t.prefixHits),
        prefixHitTokens: BigInt(t.prefixHitTokens),
        preemptions: BigInt(t.preemptions),
      }),
      seqIds: t.sequenceIds(),
      maxLoraRank: s.spec.maxLoraRank,
      adapters: [...s.adapters].map(([adapterId, a]) => create(AdapterInfoSchema, { adapterId, generation: a.generation, rank: a.rank })),
      blockTables: blockTablesOf
        .filter((id) => t.has(id))
        .map((id) => create(SequenceBlocksSchema, { seqId: id, length: t.length(id), blockIds: [...t.blockTable(id)] })),
    });
  }

  private async handleLoad(call: grpc.ServerWritableStream<LoadRequest, unknown>): Promise<void> {
    const req = call.request;
    try {
      const device = req.device === "" ? "cpu" : req.device;
      if (device !== "cpu" && device !== "cuda") {
        throw new StageRequestError(grpc.status.INVALID_ARGUMENT, `device "${req.device}" is not one of cpu, cuda`);
      }
      if (!(req.kvMemoryFraction >= 0 && req.kvMemoryFraction <= 1)) {
        throw new StageRequestError(grpc.status.INVALID_ARGUMENT, `kv_memory_fraction ${req.kvMemoryFraction} is not between 0 and 1`);
      }
      if (req.eventScope !== "") {
        try {
          checkEventScope(req.eventScope);
        } catch (error) {
          throw new StageRequestError(grpc.status.INVALID_ARGUMENT, (error as Error).message);
        }
      }
      const source = await openModel(req.modelDir);
      try {
        const stage = await LoadedStage.load(
          source,
          {
            layerStart: req.layerStart,
            layerEnd: req.layerEnd,
            stageIndex: req.stageIndex,
            numStages: req.numStages,
            blockSizeTokens: req.blockSizeTokens || DEFAULT_BLOCK_SIZE_TOKENS,
            kvCacheBytes: Number(req.kvCacheBytes) || DEFAULT_KV_CACHE_BYTES,
            kvMemoryFraction: req.kvMemoryFraction,
            device,
            kvDtype: kvDtypeOf(req.kvDtype),
            intraOpThreads: this.opts.intraOpThreads ?? 1,
            computeThread: this.opts.computeThread ?? false,
            maxLoraRank: req.maxLoraRank,
          },
          (loaded, total) =>
            call.write(create(LoadResponseSchema, { event: { case: "progress", value: { bytesLoaded: BigInt(loaded), bytesTotal: BigInt(total), phase: "weights" } } })),
        );
        const previous = this.stage;
        this.stage = stage;
        this.runs.clear();
        // Batches already queued on the old stage finish first; its compute thread goes after.
        void this.queue.then(() => previous?.engine.close());
      } finally {
        await source.close();
      }
      this.nextStage.connect(req.nextStageAddress);
      this.firstStage.connect(req.firstStageAddress);
      await this.takeEventsOf(req.eventScope);
      this.log(`loaded layers [${req.layerStart}, ${req.layerEnd}) of ${req.modelDir}`);
      call.write(create(LoadResponseSchema, { event: { case: "ready", value: this.describe() } }));
      call.end();
    } catch (error) {
      // grpc-js sends a server stream's status from its 'error' handler (which ends the call);
      // destroy() would skip that and leave the client waiting forever.
      call.emit("error", Object.assign(new Error(errorMessage(error)), { code: grpcCodeFor(error), details: errorMessage(error) }));
    }
  }

  private handleForward(call: ForwardCall): void {
    call.on("data", (req: ForwardRequest) => {
      const receivedUnixMs = wallClockMs();
      this.enqueue(() => this.processBatch(req, call, receivedUnixMs));
    });
    call.on("end", () => call.end());
    call.on("error", () => {});
  }

  /**
   * Runs a batch after those queued before it. With compute on this thread, a batch that follows
   * one that wrote to another process (hidden states on, tokens looped back, results out) starts
   * after the event loop's next check phase: gRPC's HTTP/2 session sends what was written then,
   * and a step's compute is synchronous, so the next micro-batch's compute would otherwise hold
   * the previous one's bytes in this process for its whole length, and the stage that waits for
   * them idle. A compute thread holds nothing here, and the next batch is taken as soon as this
   * one is handed to it (see processBatch).
   */
  private enqueue(batch: () => Promise<void>): void {
    this.queue = this.queue.then(async () => {
      if (this.wrotePeer && !this.stage?.engine.computesAside) {
        this.wrotePeer = false;
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      return batch();
    });
  }

  /**
   * Checks and admits a batch and starts its step. Compute on this thread finishes the step
   * before the next batch is taken. A compute thread (computesAside) only queues it: the next
   * micro-batch is then read, admitted and queued behind it while it computes, so the thread goes
   * from one step straight to the next, and steps finish in the order they were queued.
   */
  private async processBatch(req: ForwardRequest, sender: ForwardCall, receivedUnixMs: number): Promise<void> {
    const queuedUnixMs = wallClockMs();
    const stage = this.stage;
    if (req.error) {
      this.runs.delete(req.batchId);
      return this.passOnError(req, req.error, sender);
    }
    let step: Promise<StageOutput>;
    let chunks: StageChunk[];
    try {
      if (this.closing) throw new StageRequestError(grpc.status.UNAVAILABLE, "not taking batches");
      // Not loaded, this worker does not know which stage it is: the message names the worker.
      if (!stage) throw new StageRequestError(grpc.status.FAILED_PRECONDITION, `no layers loaded on ${this.opts.workerId} (a restarted worker waits for the coordinator to load them again)`);
      this.expandRunStep(req, stage.firstStage);
      const totalTokens = req.seqs.reduce((sum, c) => sum + c.numTokens, 0);
      const hidden = stage.firstStage ? undefined : readF32Tensor(req.hidden, [totalTokens, stage.config.hiddenSize], `batch ${req.batchId} hidden state`);
      chunks = stage.admit(req.seqs);
      // Greedy steps take the graph's own argmax; only sampling or a caller's request needs the logits.
      const wantLogits = stage.lastStage && req.seqs.some((c) => c.returnLogits || (c.sample && !isGreedy(c.sampling)));
      step = stage.engine.forward(chunks, hidden, { logits: wantLogits });
    } catch (error) {
      return this.failBatch(req, sender, receivedUnixMs, error);
    }
    const done = this.finishBatch(req, sender, receivedUnixMs, queuedUnixMs, stage, chunks, step);
    if (!stage.engine.computesAside) await done;
  }

  /** Sends a step's output on: the hidden state to the next stage, or tokens to the coordinator and back to the first stage. */
  private async finishBatch(req: ForwardRequest, sender: ForwardCall, receivedUnixMs: number, queuedUnixMs: number, stage: LoadedStage, chunks: StageChunk[], step: Promise<StageOutput>): Promise<void> {
    let output: StageOutput;
    try {
      output = await step;
    } catch (error) {
      // The batch's positions were reserved but never filled: free them so nothing leaks.
      for (const c of chunks) stage.tables.free(c.seqId);
      return this.failBatch(req, sender, receivedUnixMs, error);
    }
    // A step on a compute thread may have waited there behind the one before it.
    const startedUnixMs = output.startedUnixMs ?? queuedUnixMs;
    try {
      if (!stage.lastStage) {
        // The request goes on as the next stage's, changed in place: building a fresh message
        // through protobuf-es's reflection cost more per step than the rest of this bookkeeping.
        const hiddenOut = f32Tensor(output.hidden!, [output.hidden!.length / stage.config.hiddenSize, stage.config.hiddenSize]);
        const timing = this.stageTiming(stage, receivedUnixMs, startedUnixMs, hiddenOut.data.byteLength);
        this.observer?.batchDone(req, timing);
        for (const c of req.seqs) c.tokenIds = [];
        req.hidden = hiddenOut;
        req.stageTimings.push(timing);
        // The next stage kept the run's chunks (and trace parents) from its first step.
        if (req.step > 0) {
          req.seqs = [];
          req.traceContext = {};
        }
        this.passOn(this.nextStage, req, sender);
        return;
      }
      const { logits, greedyTokens } = output;
      const V = stage.config.vocabSize;
      const outputs = req.seqs.map((c, i) =>
        create(SequenceOutputSchema, {
          seqId: c.seqId,
          tokenId: !c.sample ? 0 : isGreedy(c.sampling) ? greedyTokens![i] : sampleToken(logits!, c.sampling!, c.random, i * V, V),
          logits: c.returnLogits ? f32Tensor(logits!.slice(i * V, (i + 1) * V), [V]) : undefined,
        }),
      );
      const timing = this.stageTiming(stage, receivedUnixMs, startedUnixMs, 0);
      const runGoesOn = req.step + 1 < req.numSteps;
      // The run's last steps go out as they come: the coordinator works through what was held
      // while the stages compute them, so little is left for it when the run ends and the next
      // one waits on it.
      const hold = req.numSteps - 1 - req.step > UNHELD_LAST_STEPS;
      this.publishResult(create(ResultsResponseSchema, { batchId: req.batchId, outputs, stageTimings: [...req.stageTimings, timing], step: req.step }), hold);
      this.observer?.batchDone(req, timing);
      if (runGoesOn) this.loopBack(req, outputs.map((o) => o.tokenId), sender);
    } catch (error) {
      this.failBatch(req, sender, receivedUnixMs, error);
    }
  }

  private failBatch(req: ForwardRequest, sender: ForwardCall, receivedUnixMs: number, error: unknown): void {
    const failure = this.stageError(error);
    this.runs.delete(req.batchId);
    this.log(`rejected batch ${req.batchId}: ${failure.message}`);
    this.sendOn(sender, create(ForwardResponseSchema, { batchId: req.batchId, error: failure }));
    this.passOnError(req, failure, sender);
    this.observer?.batchFailed(req, failure, receivedUnixMs);
  }

  /**
   * A decode run's step after the first comes without chunks: every stage kept them from the
   * run's first step, and each step is one position on (the first stage also gets the tokens
   * sampled at the step before). Sets req.seqs to this step's chunks. A step 0 of a run is kept.
   */
  private expandRunStep(req: ForwardRequest, firstStage: boolean): void {
    if (req.numSteps <= 1) return;
    if (req.step === 0) {
      this.runs.set(req.batchId, { seqs: req.seqs, starts: req.seqs.map((c) => c.startPosition), traceparent: req.runTraceparent });
      if (this.runs.size > MAX_RUNS) this.runs.delete(this.runs.keys().next().value!);
      return;
    }
    if (req.seqs.length > 0) return; // a sender that spells the chunks out
    const run = this.runs.get(req.batchId);
    if (!run) {
      throw new StageRequestError(grpc.status.FAILED_PRECONDITION, `decode run ${req.batchId}: step ${req.step} came without its chunks, and this stage did not see the run's first step`);
    }
    if (firstStage && req.runTokenIds.length !== run.seqs.length) {
      throw new StageRequestError(grpc.status.INVALID_ARGUMENT, `decode run ${req.batchId}: ${req.runTokenIds.length} run token ids for ${run.seqs.length} chunks`);
    }
    // The step's span on the coordinator, reserved when the run was sent: its stage spans' parent.
    if (run.traceparent && !req.traceContext.traceparent) req.traceContext = { traceparent: runStepTraceparent(run.traceparent, req.step) };
    run.seqs.forEach((c, i) => {
      c.startPosition = run.starts[i] + req.step;
      c.tokenIds = firstStage ? [req.runTokenIds[i]] : [];
      c.newSequence = false;
      c.random = c.randoms[req.step] ?? 0;
    });
    req.seqs = run.seqs;
    if (req.step + 1 >= req.numSteps) this.runs.delete(req.batchId);
  }

  /**
   * The next step of a decode run: the tokens just sampled go back to the first stage, which
   * (like every stage) kept the run's chunks. On a single stage that is this one, behind whatever
   * is queued already. The step's request becomes the next step's, changed in place.
   */
  private loopBack(req: ForwardRequest, sampled: number[], sender: ForwardCall): void {
    const next = req;
    next.step = req.step + 1;
    // Every stage kept the run's trace parents from its first step and finds each step's own.
    next.traceContext = {};
    next.runTraceparent = "";
    next.hidden = undefined;
    next.stageTimings = [];
    next.seqs = [];
    next.runTokenIds = sampled;
    if (this.stage?.firstStage) {
      const receivedUnixMs = wallClockMs();
      this.enqueue(() => this.processBatch(next, sender, receivedUnixMs));
      return;
    }
    try {
      this.passOn(this.firstStage, next, sender);
    } catch (error) {
      this.passOnError(next, this.stageError(error), sender);
    }
  }

  private stageTiming(stage: LoadedStage, receivedUnixMs: number, startedUnixMs: number, hiddenBytesSent: number): StageTiming {
    return create(StageTimingSchema, {
      stageIndex: stage.spec.stageIndex,
      workerId: this.opts.workerId,
      receivedUnixMs,
      startedUnixMs,
      sentUnixMs: wallClockMs(),
      kvBlocksUsed: stage.tables.blocksUsed,
      kvBlocksTotal: stage.tables.numBlocks,
      hiddenBytesSent: BigInt(hiddenBytesSent),
    });
  }

  /** This stage's index; 0 while no layers are loaded (a worker then does not know its stage). */
  private get stageIndex(): number {
    return this.stage?.spec.stageIndex ?? 0;
  }

  /** `error` as the StageError this stage reports a batch's failure with. */
  private stageError(error: unknown): StageError {
    // A step cut short by the shutdown (its session disposed, say) is the worker's going away.
    if (this.closing) return create(StageErrorSchema, { code: grpc.status.UNAVAILABLE, message: `${this.opts.workerId} is shutting down (${errorMessage(error)})`, stageIndex: this.stageIndex });
    return create(StageErrorSchema, { code: grpcCodeFor(error), message: errorMessage(error), stageIndex: this.stageIndex });
  }

  // A rejected batch still reaches the coordinator, through the remaining stages, so its requests fail fast.
  private passOnError(req: ForwardRequest, error: StageError, sender: ForwardCall): void {
    if (!this.stage || this.stage.lastStage) {
      this.publishResult(create(ResultsResponseSchema, { batchId: req.batchId, error }));
      return;
    }
    try {
      this.passOn(this.nextStage, create(ForwardRequestSchema, { batchId: req.batchId, seqs: req.seqs, error, traceContext: req.traceContext, numSteps: req.numSteps, step: req.step }), sender);
    } catch (e) {
      this.log(`could not pass on the failure of batch ${req.batchId}: ${errorMessage(e)}`);
    }
  }

  /**
   * A batch this stage passed on was lost (the link to the stage after it broke, or a stage
   * further on could not pass it on either): the failure goes back the way the batch came, to
   * the coordinator, which would otherwise wait for it forever with its micro-batch slot taken.
   * The last stage has the coordinator's results stream; any other replies to the batch's sender
   * (the coordinator, or the stage before, which sends it further back).
   */
  private reportLost(batchId: number, error: StageError, sender: ForwardCall): void {
    this.runs.delete(batchId);
    if (this.stage?.lastStage) {
      this.publishResult(create(ResultsResponseSchema, { batchId, error }));
      return;
    }
    try {
      sender.write(create(ForwardResponseSchema, { batchId, error }));
    } catch (e) {
      this.log(`could not report the loss of batch ${batchId}: ${errorMessage(e)}`);
    }
  }

  /**
   * Sends a result to the coordinator. A decode run's earlier steps may be held (`hold`) and go
   * out together with later ones of the same run, once MAX_HELD_RESULTS wait, the oldest has
   * waited resultHoldMs, or a step of the run that is not held comes: one wake-up of the
   * coordinator (and one chunk per client stream) for several steps instead of one each, at a
   * cost in token latency no larger than that bound. Holding is per run: with micro-batches
   * pipelined, one run's unheld last steps would otherwise release the other's every step.
   */
  private publishResult(result: ResultsResponse, hold = false): void {
    const held = this.heldResults.get(result.batchId);
    if (hold) {
      const now = performance.now();
      if (!held) {
        this.heldResults.set(result.batchId, { results: [result], sinceMs: now });
        // Results of runs whose later steps never come (their coordinator went away) are dropped.
        if (this.heldResults.size > MAX_RUNS) this.heldResults.delete(this.heldResults.keys().next().value!);
        return;
      }
      held.results.push(result);
      if (held.results.length < MAX_HELD_RESULTS && now - held.sinceMs < (this.opts.resultHoldMs ?? DEFAULT_RESULT_HOLD_MS)) return;
    } else if (held) {
      held.results.push(result);
    }
    this.heldResults.delete(result.batchId);
    // One message for all of them: each gRPC message costs both ends about as much to send and
    // take apart as a step's bookkeeping, and went out in a syscall of its own.
    const batch = create(ResultsBatchSchema, { results: held ? held.results : [result] });
    for (const subscriber of this.resultSubscribers) this.sendOn(subscriber, batch);
  }

  /** Writes to another process's stream; the next batch lets it go out before computing (see enqueue). */
  private sendOn<T>(stream: { write(message: T): unknown }, message: T): void {
    stream.write(message);
    this.wrotePeer = true;
  }

  /** Passes a batch on to another stage, like sendOn; if it is lost on the way, `sender` hears of it (see reportLost). */
  private passOn(link: StageLink, req: ForwardRequest, sender: ForwardCall): void {
    const batchId = req.batchId;
    link.send(req, (error) => this.reportLost(batchId, error, sender));
    this.wrotePeer = true;
  }

  close(): void {
    this.closing = true;
    this.nextStage.close();
    this.firstStage.close();
    for (const s of this.resultSubscribers) s.end();
    void this.stage?.engine.close();
  }
}

function kvDtypeOf(value: string): KvDtype {
  try {
    return parseKvDtype(value);
  } catch (error) {
    throw new StageRequestError(grpc.status.INVALID_ARGUMENT, (error as Error).message);
  }
}

export function workerServiceDefinition(): grpc.ServiceDefinition {
  return grpcServiceDefinition(WorkerService);
}

/**
 * Batches a StageLink remembers having sent. The coordinator keeps a micro-batch or so per stage
 * in flight, and a decode run's batch is sent again at every step, so any batch still in flight
 * is among the last few sent.
 */
const MAX_TRACKED_BATCHES = 64;

/**
 * A long-lived Forward stream to another stage, opened on first use and again after a failure.
 * It remembers the batches last sent on it (it never learns when one is done) with how to report
 * each lost: when the stream breaks, every one of them is, and when the stage it feeds replies
 * that it could not take or pass on a batch, that one is. The coordinator ignores a report of a
 * batch it finished already. After a break the next stream opens on a fresh channel: grpc-js's
 * channel would otherwise refuse new streams for its reconnect backoff, after the stage it
 * reaches is back.
 */
class StageLink {
  private address = "";
  private client: grpc.Client | undefined;
  private current: grpc.ClientDuplexStream<ForwardRequest, ForwardResponse> | undefined;
  private readonly sent = new Map<number, (error: StageError) => void>();

  constructor(
    private readonly name: string,
    private readonly log: (line: string) => void,
    private readonly stageIndex: () => number,
  ) {}

  connect(address: string): void {
    if (address === this.address) return;
    this.close();
    this.address = address;
  }

  send(req: ForwardRequest, onLost: (error: StageError) => void): void {
    const stream = this.stream();
    // Re-inserted, so a decode run's batch (sent at every step) counts as recent.
    this.sent.delete(req.batchId);
    this.sent.set(req.batchId, onLost);
    if (this.sent.size > MAX_TRACKED_BATCHES) this.sent.delete(this.sent.keys().next().value!);
    stream.write(req);
  }

  private stream(): grpc.ClientDuplexStream<ForwardRequest, ForwardResponse> {
    if (!this.current) {
      if (!this.address) throw new StageRequestError(grpc.status.FAILED_PRECONDITION, `this stage has no ${this.name} address`);
      this.client ??= new WorkerClient(this.address, grpc.credentials.createInsecure(), grpcChannelOptions);
      const stream = (this.client as unknown as { forward(): grpc.ClientDuplexStream<ForwardRequest, ForwardResponse> }).forward();
      stream.on("data", (reply: ForwardResponse) => {
        if (!reply.error) return;
        this.log(`${this.name} rejected batch ${reply.batchId}: ${reply.error.message}`);
        const onLost = this.sent.get(reply.batchId);
        this.sent.delete(reply.batchId);
        onLost?.(reply.error);
      });
      // A stream this link closed itself (connect, close) loses nothing; one that broke, or that
      // the peer ended (it is shutting down), loses what was sent on it.
      const broken = (why: string) => {
        if (this.current !== stream) return;
        this.log(`stream to ${this.name} ${why}`);
        this.current = undefined;
        this.client?.close();
        this.client = undefined;
        const lost = [...this.sent.values()];
        this.sent.clear();
        const failure = create(StageErrorSchema, { code: grpc.status.UNAVAILABLE, message: `the ${this.name} could not be reached: stream ${why}`, stageIndex: this.stageIndex() });
        for (const onLost of lost) onLost(failure);
      };
      stream.on("error", (error: Error) => broken(`failed: ${error.message}`));
      stream.on("end", () => broken("ended by the peer"));
      this.current = stream;
    }
    return this.current;
  }

  close(): void {
    const stream = this.current;
    this.current = undefined;
    stream?.end();
    this.client?.close();
    this.client = undefined;
    this.address = "";
    this.sent.clear();
  }
}
