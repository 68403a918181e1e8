import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import type { Partition } from "@strata/planner";
import { runStepTraceparent } from "@strata/telemetry";
import {
  DescribeRequestSchema,
  FreeSequencesRequestSchema,
  ForwardRequestSchema,
  HealthRequestSchema,
  LoadRequestSchema,
  LoadAdapterRequestSchema,
  UnloadAdapterRequestSchema,
  type LoadAdapterResponse,
  type UnloadAdapterResponse,
  ResultsRequestSchema,
  WorkerService,
  grpcChannelOptions,
  grpcClientConstructor,
  type DescribeResponse,
  type FreeSequencesResponse,
  type ForwardRequest,
  type ForwardResponse,
  type HealthResponse,
  type LoadResponse,
  type ResultsBatch,
  type StageError,
  type ResultsResponse,
  type SequenceChunk,
} from "@strata/proto";

const WorkerClient = grpcClientConstructor(WorkerService);

// grpc-js generic clients are untyped; these are the calls made on them.
export interface WorkerStub extends grpc.Client {
  load(req: unknown): grpc.ClientReadableStream<LoadResponse>;
  describe(req: unknown, cb: (err: grpc.ServiceError | null, res: DescribeResponse) => void): void;
  freeSequences(req: unknown, cb: (err: grpc.ServiceError | null, res: FreeSequencesResponse) => void): void;
  health(req: unknown, options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: HealthResponse) => void): void;
  forward(): grpc.ClientDuplexStream<ForwardRequest, ForwardResponse>;
  results(req: unknown): grpc.ClientReadableStream<ResultsBatch>;
  loadAdapter(req: unknown, cb: (err: grpc.ServiceError | null, res: LoadAdapterResponse) => void): void;
  unloadAdapter(req: unknown, cb: (err: grpc.ServiceError | null, res: UnloadAdapterResponse) => void): void;
}

export class StageFailure extends Error {
  override name = "StageFailure";
  constructor(
    readonly code: number,
    message: string,
    readonly stageIndex: number,
  ) {
    super(message);
  }
}

export interface LoadOptions {
  modelDir: string;
  /** The cluster's NATS event scope (see LoadRequest.event_scope). */
  eventScope: string;
  partition: Partition;
  blockSizeTokens: number;
  kvCacheBytes: number;
  /** When set, each stage sizes its KV cache as this fraction of its host's available memory instead. */
  kvMemoryFraction?: number;
  device: string;
  kvDtype?: string;
  /** Largest LoRA rank the stages will serve (0: no adapter support). */
  maxLoraRank?: number;
  onProgress?: (stage: number, bytesLoaded: number, bytesTotal: number) => void;
}

interface Pending {
  resolve(result: ResultsResponse): void;
  reject(error: Error): void;
  /** A decode run's steps before the last. */
  onStep?(result: ResultsResponse): void;
  steps: number;
}

/** What an observer (tracing, metrics, the trace ring) makes of one micro-batch's trip. */
export interface StepObservation {
  /** W3C trace context to send with the batch; every stage's span becomes its child. */
  traceContext?: Record<string, string>;
  finished(result: ResultsResponse): void;
  failed(error: Error): void;
}

/** A decode run's later step: sent by the last stage (`fromStage`) back to the first at `sentUnixMs`. */
export interface LoopedBack {
  sentUnixMs: number;
  fromStage: number;
}

export interface PipelineObserver {
  /** A step's observation; a decode run's later steps come with `loopedBack` and a reserved context. */
  stepStarted(batchId: number, seqs: readonly SequenceChunk[], loopedBack?: LoopedBack & { traceparent?: string }): StepObservation | undefined;
  /** A W3C traceparent for a decode run's step 1, from which its later steps' derive (runStepTraceparent), when tracing. */
  reserveRunTraceparent?(): string;
}

/** A decode run (MicroBatch.steps): how many steps, and who hears about each one before the last. */
export interface DecodeRun {
  steps: number;
  onStep?(result: ResultsResponse): void;
}

/**
 * The coordinator's view of one pipeline replica: micro-batches go to stage 0 on a long-lived
 * stream, results come back from the last stage on another; batch ids match them up.
 */
export class PipelineClient {
  private readonly stubs: WorkerStub[];
  private toFirstStage: grpc.ClientDuplexStream<ForwardRequest, ForwardResponse> | undefined;
  private fromLastStage: grpc.ClientReadableStream<ResultsBatch> | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextBatchId = 1;
  stages: DescribeResponse[] = [];
  observer: PipelineObserver | undefined;

  constructor(readonly addresses: string[]) {
    this.stubs = addresses.map((a) => new WorkerClient(a, grpc.credentials.createInsecure(), grpcChannelOptions) as unknown as WorkerStub);
  }

  private loadOptions: LoadOptions | undefined;

  /** Loads every stage in parallel, telling each where its next stage listens. */
  async load(opts: LoadOptions): Promise<DescribeResponse[]> {
    if (opts.partition.length !== this.stubs.length) {
      throw new Error(`partition has ${opts.partition.length} stages for ${this.stubs.length} workers`);
    }
    this.loadOptions = opts;
    this.stages = await Promise.all(this.stubs.map((_, i) => this.loadStage(i, opts)));
    this.openStreams();
    return this.stages;
  }

  private loadStage(i: number, opts: LoadOptions): Promise<DescribeResponse> {
    return new Promise<DescribeResponse>((resolve, reject) => {
      const call = this.stubs[i].load(
        create(LoadRequestSchema, {
          modelDir: opts.modelDir,
          layerStart: opts.partition[i][0],
          layerEnd: opts.partition[i][1],
          device: opts.device,
          kvDtype: opts.kvDtype ?? "fp32",
          blockSizeTokens: opts.blockSizeTokens,
          kvCacheBytes: BigInt(opts.kvCacheBytes),
          kvMemoryFraction: opts.kvMemoryFraction ?? 0,
          nextStageAddress: this.addresses[i + 1] ?? "",
          // The last of several stages sends decode runs' next steps back to the first.
          firstStageAddress: i === this.stubs.length - 1 && i > 0 ? this.addresses[0] : "",
          stageIndex: i,
          numStages: this.stubs.length,
          maxLoraRank: opts.maxLoraRank ?? 0,
          eventScope: opts.eventScope,
        }),
      );
      let ready: DescribeResponse | undefined;
      call.on("data", (msg: LoadResponse) => {
        if (msg.event.case === "progress") opts.onProgress?.(i, Number(msg.event.value.bytesLoaded), Number(msg.event.value.bytesTotal));
        if (msg.event.case === "ready") ready = msg.event.value;
      });
      call.on("error", (err: grpc.ServiceError) => reject(new StageFailure(err.code, `stage ${i} (${this.addresses[i]}): ${err.details || err.message}`, i)));
      call.on("end", () => (ready ? resolve(ready) : reject(new Error(`stage ${i} ended its load without reporting ready`))));
    });
  }

  /**
   * A worker that restarted (same address, empty process) has no layers: load them again and
   * reopen the streams. Returns the stages reloaded and those that did not answer, which are left
   * for the next call. Whatever a restarted stage held is gone, so the caller must drop its
   * prefix cache and recompute its running sequences.
   */
  async recover(): Promise<{ reloaded: number[]; unreachable: number[] }> {
    const opts = this.loadOptions;
    if (!opts) return { reloaded: [], unreachable: [] };
    const reloaded: number[] = [];
    const unreachable: number[] = [];
    await Promise.all(
      this.stubs.map(async (_, i) => {
        const health = await this.health(i, 1000).catch(() => undefined);
        if (!health) return void unreachable.push(i);
        if (health.loaded) return;
        this.stages[i] = await this.loadStage(i, { ...opts, onProgress: undefined });
        reloaded.push(i);
      }),
    );
    unreachable.sort((a, b) => a - b);
    if (reloaded.length > 0) {
      reloaded.sort((a, b) => a - b);
      // Whatever was in flight went through, or was still to reach, a stage that lost it all.
      this.failAll(new StageFailure(grpc.status.UNAVAILABLE, `stage ${reloaded.join(", ")} restarted: the batches in flight were lost`, reloaded[0]));
      this.openStreams();
    }
    return { reloaded, unreachable };
  }

  private openStreams(): void {
    this.toFirstStage?.end();
    this.fromLastStage?.cancel();
    const results = this.stubs[this.stubs.length - 1].results(create(ResultsRequestSchema, {}));
    results.on("data", (batch: ResultsBatch) => {
      for (const msg of batch.results) this.deliver(msg);
    });
    results.on("error", (err: grpc.ServiceError) => {
      // Both streams are reopened on the next batch: results must flow before batches go out.
      if (this.fromLastStage === results) this.toFirstStage = undefined;
      if (err.code !== grpc.status.CANCELLED) this.failAll(new StageFailure(err.code, `results stream from the last stage failed: ${err.details}`, this.stubs.length - 1));
    });
    // The last stage ended it (it is shutting down): no result in flight will come.
    results.on("end", () => {
      if (this.fromLastStage !== results) return;
      this.toFirstStage = undefined;
      this.failAll(new StageFailure(grpc.status.UNAVAILABLE, "the last stage ended its results stream (shutting down)", this.stubs.length - 1));
    });
    this.fromLastStage = results;
    const forward = this.stubs[0].forward();
    // Stage 0 replies only to fail a batch: one it rejected (the rejection also travels on to the
    // results stream), or one lost further on, which nothing else reports.
    forward.on("data", (reply: ForwardResponse) => {
      if (reply.error) this.failBatch(reply.batchId, reply.error);
    });
    forward.on("error", (err: grpc.ServiceError) => {
      if (err.code !== grpc.status.CANCELLED) this.failAll(new StageFailure(err.code, `stream to stage 0 failed: ${err.details}`, 0));
      if (this.toFirstStage === forward) this.toFirstStage = undefined;
    });
    // Stage 0 ended it (it is shutting down): what it had not passed on is lost.
    forward.on("end", () => {
      if (this.toFirstStage !== forward) return;
      this.toFirstStage = undefined;
      this.failAll(new StageFailure(grpc.status.UNAVAILABLE, "stage 0 ended the stream of batches (shutting down)", 0));
    });
    this.toFirstStage = forward;
  }

  /**
   * Sends one micro-batch into the pipeline; resolves with the last stage's outputs. A decode run
   * (run.steps > 1) loops through the stages that many times without coming back here; every step
   * before the last reaches run.onStep, and the observer sees each step as one.
   */
  forward(seqs: SequenceChunk[], traceContext: Record<string, string> = {}, run: DecodeRun = { steps: 1 }): Promise<ResultsResponse> {
    const batchId = this.nextBatchId;
    this.nextBatchId = (this.nextBatchId % 0xffffffff) + 1;
    if (!this.toFirstStage) this.openStreams();
    let step = this.observer?.stepStarted(batchId, seqs);
    const lastStage = this.stubs.length - 1;
    // A run's later steps are traced when its first is.
    const runTraceparent = run.steps > 1 && step?.traceContext ? (this.observer?.reserveRunTraceparent?.() ?? "") : "";
    return new Promise<ResultsResponse>((resolve, reject) => {
      this.pending.set(batchId, {
        steps: run.steps,
        onStep: (result) => {
          step?.finished(result);
          run.onStep?.(result);
          const sentUnixMs = result.stageTimings[result.stageTimings.length - 1]?.sentUnixMs ?? Date.now();
          step = this.observer?.stepStarted(batchId, seqs, { sentUnixMs, fromStage: lastStage, traceparent: runTraceparent ? runStepTraceparent(runTraceparent, result.step + 1) : undefined });
        },
        resolve: (result) => {
          step?.finished(result);
          resolve(result);
        },
        reject: (error) => {
          step?.failed(error);
          reject(error);
        },
      });
      this.toFirstStage!.write(create(ForwardRequestSchema, { batchId, seqs, traceContext: step?.traceContext ?? traceContext, numSteps: run.steps, runTraceparent }));
    });
  }

  private deliver(msg: ResultsResponse): void {
    const waiter = this.pending.get(msg.batchId);
    if (!waiter) return;
    if (msg.error) return this.failBatch(msg.batchId, msg.error);
    if (msg.step + 1 < waiter.steps) return waiter.onStep?.(msg);
    this.pending.delete(msg.batchId);
    waiter.resolve(msg);
  }

  /** A stage's report that a batch failed; the first report of it counts. */
  private failBatch(batchId: number, error: StageError): void {
    const waiter = this.pending.get(batchId);
    if (!waiter) return;
    this.pending.delete(batchId);
    waiter.reject(new StageFailure(error.code, `stage ${error.stageIndex}: ${error.message}`, error.stageIndex));
  }

  private failAll(error: Error): void {
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
  }

  /** A stage's description; with seqIds, also those sequences' block tables on that stage. */
  describe(stage: number, seqIds: number[] = []): Promise<DescribeResponse> {
    return new Promise((resolve, reject) =>
      this.stubs[stage].describe(create(DescribeRequestSchema, { seqIds }), (err, res) => (err ? reject(err) : resolve(res))),
    );
  }

  async describeAll(): Promise<DescribeResponse[]> {
    return Promise.all(this.stubs.map((_, i) => this.describe(i)));
  }

  /** Frees sequences on one stage directly (the eviction event's fallback); unknown ids are fine. */
  freeSequences(stage: number, seqIds: number[]): Promise<void> {
    return new Promise((resolve, reject) =>
      this.stubs[stage].freeSequences(create(FreeSequencesRequestSchema, { seqIds }), (err) =>
        err && err.code !== grpc.status.NOT_FOUND ? reject(err) : resolve(),
      ),
    );
  }

  loadAdapter(stage: number, adapterId: string, path: string, generation: number): Promise<LoadAdapterResponse> {
    return new Promise((resolve, reject) =>
      this.stubs[stage].loadAdapter(create(LoadAdapterRequestSchema, { adapterId, path, generation }), (err, res) =>
        err ? reject(new StageFailure(err.code, `stage ${stage}: ${err.details || err.message}`, stage)) : resolve(res),
      ),
    );
  }

  unloadAdapter(stage: number, adapterId: string): Promise<boolean> {
    return new Promise((resolve, reject) =>
      this.stubs[stage].unloadAdapter(create(UnloadAdapterRequestSchema, { adapterId }), (err, res) => (err ? reject(err) : resolve(res.wasLoaded))),
    );
  }

  health(stage: number, timeoutMs = 2000): Promise<HealthResponse> {
    return new Promise((resolve, reject) =>
      this.stubs[stage].health(create(HealthRequestSchema, {}), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res))),
    );
  }

  close(): void {
    this.toFirstStage?.end();
    this.fromLastStage?.cancel();
    this.failAll(new Error("pipeline closed"));
    for (const stub of this.stubs) stub.close();
  }
}
