import { spawn, type ChildProcess } from "node:child_process";
import { availableParallelism, hostname } from "node:os";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { EventBus, isReachable, newEventScope, startNatsServer, type NatsServerProcess } from "@strata/events";
import { BUNDLED_MODEL_DIR, openModel, type ModelConfig } from "@strata/model";
import { checkKvMemoryFraction, defaultAttentionForm } from "@strata/compute";
import { kvBytesPerElement } from "@strata/kv";
import { balancedPartition, DEFAULT_PLAN_LOAD, validatePartition, type Partition } from "@strata/planner";
import { startWorkerServer, DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_KV_CACHE_BYTES, type RunningWorker } from "@strata/worker";
import { startTracing, TRACING_OFF, type Tracing } from "@strata/telemetry";
import { AdapterManager } from "./adapters.ts";
import { Engine } from "./engine.ts";
import { ModelRegistry } from "./models.ts";
import { CoordinatorMetrics } from "./metrics.ts";
import { PipelineClient } from "./pipeline-client.ts";
import { CoordinatorTelemetry } from "./tracing.ts";

const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const WORKER_MAIN = fileURLToPath(new URL("../../worker/src/main.ts", import.meta.url));

const DEFAULT_MAX_LORA_RANK = 16;
// Longest decode run; the engine keeps runs near 25 ms (at least 8 steps), so fast steps run long.
// On the bundled model over 2 workers (~0.4 ms a step) 32 cut runs to ~13 ms, and one stream
// measured ~2,500-2,600 tok/s against ~2,600-2,800 with 64 (alternating runs).
const DEFAULT_SCHEDULER_STEPS = 64;

/** The name the base model is served under: the bundled model's name, else its folder. */
export function servedModelName(modelDir: string): string {
  return modelDir === BUNDLED_MODEL_DIR ? "stories260K" : modelDir;
}

export interface ClusterOptions {
  modelDir: string;
  workers: number;
  partition?: Partition;
  /**
   * The decode load the default partition is balanced for (see balancedPartition; default 16
   * sequences over 1,024 tokens, none of them a shared prefix).
   */
  planLoad?: { batch?: number; contextTokens?: number; sharedPrefixTokens?: number };
  /** Use this NATS server when reachable; otherwise one is spawned on a free port. */
  natsUrl?: string;
  /** Workers as gRPC servers inside this process (tests) instead of child processes. */
  inProcessWorkers?: boolean;
  device?: string;
  blockSizeTokens?: number;
  kvCacheBytes?: number;
  /**
   * Instead of kvCacheBytes: each worker's KV cache is this fraction (0 to 1) of the memory its
   * host has available once it has loaded its weights, so workers on different hosts, or with
   * different layers, get what their own memory allows; the scheduler admits against the tightest.
   */
  kvMemoryFraction?: number;
  threadsPerWorker?: number;
  /** Each stage's compute on a thread of its own (see the worker's --compute-thread; default off). */
  computeThread?: boolean;
  /** Workers' hold on a decode run's step results (see WorkerOptions.resultHoldMs; default 50 ms). */
  resultHoldMs?: number;
  maxNumSeqs?: number;
  maxNumBatchedTokens?: number;
  /** Longest prefill chunk per step (chunked prefill); default maxNumBatchedTokens. */
  maxPrefillChunkTokens?: number;
  /** Content-addressed sharing of full KV blocks between requests (default on). */
  enablePrefixCaching?: boolean;
  kvDtype?: "fp32" | "fp16" | "int8" | "fp8";
  /** The name clients use as `model` for the base model (default: servedModelName(modelDir)). */
  modelName?: string;
  /** LoRA adapters to load before serving (PEFT folders), by the name requests use. */
  loras?: { name: string; path: string }[];
  /** Largest LoRA rank servable, for these and runtime-loaded adapters (default 16 with loras, else 0: no adapter support). */
  maxLoraRank?: number;
  /** "paged" (default) or "contiguous": max-length reservations, the pre-PagedAttention baseline. */
  kvAllocator?: "paged" | "contiguous";
  /** Up to one micro-batch per stage in flight (default on); off sends one at a time. */
  pipelining?: boolean;
  /**
   * Longest decode run (default 8): a batch of decodes loops through the stages up to this many
   * steps, the last stage feeding its sampled tokens straight back to the first, before the
   * coordinator schedules again. 1 schedules every step. Each step is still a step span.
   */
  numSchedulerSteps?: number;
  /** Run every batch-size bucket through the stages before reporting ready (default on). */
  warmUp?: boolean;
  /**
   * OTLP/HTTP traces URL. The coordinator (unless `tracing` is given) and in-process workers export
   * there under their own service names; worker processes get it as OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
   * (without it they follow the OTEL_EXPORTER_OTLP_* variables they inherit).
   */
  tracesUrl?: string;
  /** The coordinator's tracing (the CLI passes its NodeSDK one); the caller shuts it down. */
  tracing?: Tracing;
  /** Fraction of requests traced when tracing is on (default 1; see CoordinatorTelemetry.sampleRatio). */
  traceSampleRatio?: number;
  /**
   * How long requests whose batch a stage lost (its worker died with it) wait for the stages to
   * recover, to be recomputed with the same output, before they fail (default 60 s; 0: they fail
   * at once).
   */
  lostBatchWaitMs?: number;
  /** Serve each worker's Prometheus metrics on a free port (default on). */
  workerMetrics?: boolean;
  onLoadProgress?: (stage: number, bytesLoaded: number, bytesTotal: number) => void;
  log?: (line: string) => void;
}

interface WorkerHandle {
  address: string;
  metricsUrl?: string;
  /** The worker process (worker processes only). */
  pid?: number;
  stop(): Promise<void>;
  /** Worker processes only: kill it (as a crash would) and start an empty one on the same port. */
  crashAndRestart?(): Promise<WorkerHandle>;
  /** Worker processes only: start an empty one on the same port, once this one has exited. */
  restart?(): Promise<WorkerHandle>;
  /** Worker processes only: `callback` runs if the process dies (not by stop, crashAndRestart or its own shutdown). */
  onUnexpectedExit?(callback: (why: string) => void): void;
}

/** A worker started again this soon after its last start waits first (see LocalCluster.respawn). */
const RESPAWN_CALM_MS = 30_000;
const MAX_RESPAWN_DELAY_MS = 30_000;
// Longer than the longest respawn delay, with time for the reload.
const DEFAULT_LOST_BATCH_WAIT_MS = 60_000;

/** A coordinator engine, N workers and a NATS server on loopback, started and stopped together. */
export class LocalCluster {
  private constructor(
    readonly engine: Engine,
    readonly pipeline: PipelineClient,
    readonly events: EventBus,
    readonly config: ModelConfig,
    readonly partition: Partition,
    readonly natsUrl: string,
    readonly adapters: AdapterManager,
    private readonly workers: WorkerHandle[],
    private readonly ownNats: NatsServerProcess | undefined,
  ) {}

  /** Metrics, request and step spans, and the trace ring that /debug/trace and `strata trace` draw from. */
  telemetry!: CoordinatorTelemetry;
  private ownTracings: Tracing[] = [];

  /** Each worker's http://host:port/metrics ("" where a worker serves none). */
  get workerMetricsUrls(): string[] {
    return this.workers.map((w) => w.metricsUrl ?? "");
  }

  static async start(opts: ClusterOptions): Promise<LocalCluster> {
    const source = await openModel(opts.modelDir);
    const config = source.config;
    await source.close();
    const splitAttention = defaultAttentionForm(config) === "split";
    if (!opts.partition && !splitAttention && (opts.planLoad?.sharedPrefixTokens ?? 0) > 0) {
      opts.log?.(
        `planning without the shared prefix: this model's attention (${config.numKvHeads} KV heads of ${config.headDim}) gathers a shared past into every sequence's, so it costs per sequence`,
      );
    }
    const partition =
      opts.partition ??
      balancedPartition(config, opts.workers, {
        ...DEFAULT_PLAN_LOAD,
        batch: opts.planLoad?.batch ?? DEFAULT_PLAN_LOAD.batch,
        contextTokens: opts.planLoad?.contextTokens ?? DEFAULT_PLAN_LOAD.contextTokens,
        // Only split attention reads a shared past once for the micro-batch; the fused form
        // gathers it into every sequence's past.
        sharedPrefixTokens: splitAttention ? opts.planLoad?.sharedPrefixTokens : 0,
        kvBytesPerElement: kvBytesPerElement(opts.kvDtype ?? "fp32"),
      });
    const maxLoraRank = opts.maxLoraRank ?? (opts.loras?.length ? DEFAULT_MAX_LORA_RANK : 0);
    validatePartition(partition, config.numLayers);
    if (opts.kvMemoryFraction !== undefined) {
      if (opts.kvCacheBytes !== undefined) throw new RangeError("give a KV budget in bytes or as a fraction of available memory, not both");
      checkKvMemoryFraction(opts.kvMemoryFraction);
    }

    let ownNats: NatsServerProcess | undefined;
    let natsUrl = opts.natsUrl;
    if (!natsUrl || !(await isReachable(natsUrl))) {
      if (natsUrl) opts.log?.(`NATS at ${natsUrl} is not reachable; starting nats-server`);
      ownNats = await startNatsServer();
      natsUrl = ownNats.url;
    }
    const workers: WorkerHandle[] = [];
    const ownTracings: Tracing[] = [];
    const metricsPort = opts.workerMetrics === false ? undefined : 0;
    try {
      for (let i = 0; i < partition.length; i++) {
        // In-process workers share this process, so each gets its own provider and service name.
        const workerTracing = opts.inProcessWorkers && opts.tracesUrl ? startTracing({ serviceName: `strata-worker-${i}`, tracesUrl: opts.tracesUrl }) : TRACING_OFF;
        ownTracings.push(workerTracing);
        workers.push(
          opts.inProcessWorkers
            ? inProcessWorker(
                await startWorkerServer({ workerId: `worker-${i}`, natsUrl, intraOpThreads: opts.threadsPerWorker, computeThread: opts.computeThread, tracing: workerTracing, metricsPort, resultHoldMs: opts.resultHoldMs }),
              )
            : await spawnWorker(
                i,
                natsUrl,
                opts.threadsPerWorker ?? 1,
                opts.log,
                { tracesUrl: opts.tracesUrl, metricsPort, resultHoldMs: opts.resultHoldMs, computeThread: opts.computeThread, singleThreadedGc: gcOnComputeThreads(opts) },
                0,
              ),
        );
      }
      const pipeline = new PipelineClient(workers.map((w) => w.address));
      // This cluster's events go out under a scope of their own: other clusters on the same NATS
      // server reuse the same sequence ids and may serve adapters of the same names.
      const eventScope = newEventScope();
      const stages = await pipeline.load({
        eventScope,
        modelDir: opts.modelDir,
        partition,
        blockSizeTokens: opts.blockSizeTokens ?? DEFAULT_BLOCK_SIZE_TOKENS,
        kvCacheBytes: opts.kvCacheBytes ?? DEFAULT_KV_CACHE_BYTES,
        kvMemoryFraction: opts.kvMemoryFraction,
        device: opts.device ?? "cpu",
        kvDtype: opts.kvDtype ?? "fp32",
        maxLoraRank,
        onProgress: opts.onLoadProgress,
      });
      const events = await EventBus.connect(natsUrl, "strata-coordinator", eventScope);
      const engine = new Engine(
        pipeline,
        events,
        { maxPositionEmbeddings: config.maxPositionEmbeddings, vocabSize: config.vocabSize, eosTokenIds: config.eosTokenIds },
        {
          blockSizeTokens: stages[0].kv!.blockSizeTokens,
          kvBlocks: Math.min(...stages.map((s) => s.kv!.blocksTotal)),
          maxNumSeqs: opts.maxNumSeqs ?? 256,
          maxNumBatchedTokens: opts.maxNumBatchedTokens ?? 2048,
          maxPrefillChunkTokens: opts.maxPrefillChunkTokens,
          enablePrefixCaching: opts.enablePrefixCaching ?? true,
          kvAllocator: opts.kvAllocator,
          pipelineDepth: opts.pipelining === false ? 1 : partition.length,
          slidingWindowTokens: config.slidingWindow,
          maxDecodeSteps: opts.numSchedulerSteps ?? DEFAULT_SCHEDULER_STEPS,
        },
        opts.pipelining === false ? 1 : partition.length,
        // Host and pid name the process; the scope, the cluster (several may share a process).
        `${hostname()}-${process.pid}-${eventScope}`,
      );
      const adapters = new AdapterManager(pipeline, events, engine, new ModelRegistry(opts.modelName ?? servedModelName(opts.modelDir)), maxLoraRank);
      for (const lora of opts.loras ?? []) await adapters.load(lora.name, lora.path);
      const cluster = new LocalCluster(engine, pipeline, events, config, partition, natsUrl, adapters, workers, ownNats);
      cluster.log = opts.log ?? (() => {});
      workers.forEach((_, i) => cluster.supervise(i));
      cluster.watchStages(opts.log);
      const lostBatchWaitMs = opts.lostBatchWaitMs ?? DEFAULT_LOST_BATCH_WAIT_MS;
      engine.lostBatchRecovery = lostBatchWaitMs > 0 ? { waitMs: lostBatchWaitMs } : undefined;
      engine.onRecoveryWait = (event, requests) =>
        cluster.log(
          event === "waiting"
            ? `a stage lost a micro-batch: its requests will recompute; holding all ${requests} requests until every stage answers loaded (at most ${lostBatchWaitMs / 1000} s)`
            : event === "recovered"
              ? `every stage answers loaded: ${requests} held requests go on`
              : `the stages were not back within ${lostBatchWaitMs / 1000} s: ${requests} held requests go out and fail if a stage is still down`,
        );
      const coordinatorTracing = opts.tracing ?? (opts.tracesUrl ? startTracing({ serviceName: "strata-coordinator", tracesUrl: opts.tracesUrl }) : TRACING_OFF);
      if (!opts.tracing) ownTracings.push(coordinatorTracing);
      cluster.ownTracings = ownTracings;
      cluster.telemetry = new CoordinatorTelemetry(coordinatorTracing, new CoordinatorMetrics(engine, events, adapters));
      cluster.telemetry.engine = engine;
      if (opts.traceSampleRatio !== undefined) cluster.telemetry.sampleRatio = opts.traceSampleRatio;
      if (opts.warmUp ?? true) await cluster.warmUp(opts.maxNumSeqs ?? 256);
      // Attached after warm-up, so the metrics and the trace ring hold only real traffic.
      pipeline.observer = cluster.telemetry;
      return cluster;
    } catch (error) {
      await Promise.all(ownTracings.map((t) => t.shutdown()));
      await Promise.all(workers.map((w) => w.stop()));
      await ownNats?.stop();
      throw error;
    }
  }

  /**
   * Sends micro-batches of 1, 2, 4 … sequences (prefill then decode) through every stage so that
   * onnxruntime has planned those shapes before the first real request arrives.
   */
  async warmUp(maxNumSeqs: number): Promise<void> {
    const token = Math.max(0, this.config.bosTokenId);
    for (let batch = 1; batch <= Math.min(maxNumSeqs, 64); batch *= 2) {
      await Promise.all(
        Array.from({ length: batch }, () =>
          this.engine.generate({ promptIds: [token], maxTokens: 2, sampling: { temperature: 0, topP: 1, topK: 0 }, stopTokenIds: [] }),
        ),
      );
    }
    await this.waitForBlocksFreed();
  }

  /** Waits until every stage holds no KV blocks (eviction travels over NATS, so it is not instant). */
  async waitForBlocksFreed(timeoutMs = 10_000): Promise<number[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const used = (await this.pipeline.describeAll()).map((d) => d.kv?.blocksUsed ?? 0);
      if (used.every((u) => u === 0) || Date.now() > deadline) return used;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private reconcileTimer: NodeJS.Timeout | undefined;
  private recovering: Promise<void> | undefined;
  private recoveringAgain: Promise<void> | undefined;
  private log: (line: string) => void = () => {};
  private stopping = false;
  // Per worker: when it was last started again, and how many times in a row it came back soon.
  private readonly respawns = new Map<number, { atMs: number; quickRepeats: number }>();

  /** The worker processes' ids (undefined for in-process workers). */
  workerPids(): (number | undefined)[] {
    return this.workers.map((w) => w.pid);
  }

  /** Starts worker `i` again on its port if its process dies (see respawn). */
  private supervise(i: number): void {
    this.workers[i].onUnexpectedExit?.((why) => void this.respawn(i, why));
  }

  /**
   * A worker process that died (killed, out of memory, a fault) is started again, empty, on its
   * port, and its stage reloaded at once rather than at the next watch tick: the requests it had
   * in flight fail, and the cluster serves again within seconds instead of failing every request
   * until restarted by hand. One that keeps dying soon after starting waits 1 s, 2 s, … up to
   * 30 s before each new start.
   */
  private async respawn(i: number, why: string): Promise<void> {
    const last = this.respawns.get(i);
    const quickRepeats = last && Date.now() - last.atMs < RESPAWN_CALM_MS ? last.quickRepeats + 1 : 0;
    for (let attempt = quickRepeats; !this.stopping; attempt++) {
      this.log(`worker ${i} exited (${why}); starting an empty one on its port`);
      if (attempt > 0) await new Promise((r) => setTimeout(r, Math.min(MAX_RESPAWN_DELAY_MS, 1000 * 2 ** (attempt - 1))));
      if (this.stopping) return;
      try {
        const worker = await this.workers[i].restart!();
        this.respawns.set(i, { atMs: Date.now(), quickRepeats: attempt });
        if (this.stopping) return void (await worker.stop());
        this.workers[i] = worker;
        this.supervise(i);
        void this.recoverStages(this.log);
        return;
      } catch (error) {
        why = `and starting it again failed: ${(error as Error).message}`;
      }
    }
  }

  /**
   * Reloads stages whose worker came back empty (a restarted process at the same address), then
   * tells the engine: their KV is gone, so it drops the prefix cache and recomputes sequences
   * between steps. When every stage answers loaded, requests held since a lost batch go on. One
   * attempt at a time; a call during one runs once more after it (a worker that came back while
   * the last attempt found it down), and failures are retried by the next trigger.
   */
  recoverStages(log: (line: string) => void = () => {}): Promise<void> {
    if (this.recovering) return (this.recoveringAgain ??= this.recovering.then(() => ((this.recoveringAgain = undefined), this.recoverStages(log))));
    this.recovering = this.pipeline
      .recover()
      .then(async ({ reloaded, unreachable }) => {
        if (reloaded.length > 0) {
          log(`reloaded stage${reloaded.length > 1 ? "s" : ""} ${reloaded.join(", ")} after a worker restart`);
          // Recomputed sequences may run with adapters: those go back first.
          await this.adapters.reloadOn(reloaded);
          this.engine.stagesRestarted();
        }
        if (unreachable.length === 0) this.engine.stagesRecovered();
      })
      .catch((error: Error) => log(`recovering stages failed: ${error.message}`))
      .finally(() => (this.recovering = undefined));
    return this.recovering;
  }

  /** For tests and drills: kills worker `i` as a crash would and starts an empty one in its place. */
  async crashWorker(i: number): Promise<void> {
    const worker = this.workers[i];
    if (!worker.crashAndRestart) throw new Error("only worker processes can be crashed and restarted");
    this.workers[i] = await worker.crashAndRestart();
    this.supervise(i);
  }

  /**
   * For tests and drills: stops worker `i` for good, as a lost host would: nothing starts it again,
   * and its stage stays down until a worker is started at its address by other means.
   */
  async loseWorker(i: number): Promise<void> {
    const worker = this.workers[i];
    this.workers[i] = { address: worker.address, stop: async () => {} };
    await worker.stop();
  }

  /**
   * Keeps the stages in step with the engine. Eviction events are at-most-once: ones published
   * while NATS (or a worker's subscription) was away are lost, so after every reconnect, and
   * every few seconds, stale sequences are freed over gRPC. The same tick (and any failed batch)
   * reloads a stage whose worker restarted empty.
   */
  watchStages(log: (line: string) => void = () => {}, everyMs = 5000): void {
    clearInterval(this.reconcileTimer);
    const reconcile = () =>
      this.engine.reconcile().then(
        (stale) => stale > 0 && log(`freed ${stale} sequences whose eviction events were lost`),
        (error: Error) => log(`reconciling KV with the stages failed: ${error.message}`),
      );
    this.events.onReconnect(() => {
      void reconcile();
      // Workers resubscribe on their own schedule: look again once they have.
      setTimeout(() => void reconcile(), 1000).unref();
    });
    this.reconcileTimer = setInterval(() => void this.recoverStages(log).then(reconcile), everyMs);
    this.reconcileTimer.unref();
    // A failed batch may mean a stage went down: check at once rather than at the next tick.
    this.engine.onBatchFailure = () => void this.recoverStages(log);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.reconcileTimer);
    this.engine.close();
    this.pipeline.close();
    await this.events.close();
    await Promise.all(this.workers.map((w) => w.stop()));
    // After the workers: their last stage spans are flushed with the providers.
    await Promise.all(this.ownTracings.map((t) => t.shutdown()));
    await this.ownNats?.stop();
  }
}

/**
 * Whether the worker processes' garbage collection should stay on their own threads: where their
 * compute threads (onnxruntime's, one per --threads) already fill every core, V8's helper threads
 * for concurrent marking and parallel scavenges can only run on a core another stage is computing
 * on. Measured on 2 cores with 2 workers at the bench's chat load: pipelined 717-743 tok/s
 * (median 725) against 643-728 (702), one micro-batch in flight 553-560 against 542-549.
 */
export function gcOnComputeThreads(opts: Pick<ClusterOptions, "workers" | "threadsPerWorker">, cores = availableParallelism()): boolean {
  return opts.workers * (opts.threadsPerWorker ?? 1) >= cores;
}

function inProcessWorker(worker: RunningWorker): WorkerHandle {
  return { address: worker.address, metricsUrl: worker.metricsUrl, stop: () => worker.close() };
}

async function spawnWorker(
  index: number,
  natsUrl: string,
  threads: number,
  log?: (line: string) => void,
  options: { tracesUrl?: string; metricsPort?: number; resultHoldMs?: number; computeThread?: boolean; singleThreadedGc?: boolean } = {},
  port = 0,
): Promise<WorkerHandle> {
  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...(options.singleThreadedGc ? ["--single-threaded-gc"] : []),
      // Extra node flags for the workers (--cpu-prof, say, which NODE_OPTIONS does not admit).
      ...(process.env.STRATA_WORKER_NODE_ARGS?.split(" ").filter((a) => a !== "") ?? []),
      "--import",
      "tsx",
      WORKER_MAIN,
      "--port",
      String(port),
      "--worker-id",
      `worker-${index}`,
      "--nats-url",
      natsUrl,
      "--threads",
      String(threads),
      "--metrics-port",
      options.metricsPort === undefined ? "none" : String(options.metricsPort),
      ...(options.resultHoldMs === undefined ? [] : ["--result-hold-ms", String(options.resultHoldMs)]),
      ...(options.computeThread ? ["--compute-thread"] : []),
    ],
    {
      cwd: REPO_ROOT,
      stdio: ["pipe", "pipe", "pipe"],
      env: options.tracesUrl ? { ...process.env, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: options.tracesUrl } : process.env,
    },
  );
  child.stderr!.on("data", (chunk: Buffer) => log?.(chunk.toString().trimEnd()));
  const { address, metricsUrl } = await new Promise<{ address: string; metricsUrl?: string }>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.once("line", (line) => {
      try {
        resolve(JSON.parse(line) as { address: string; metricsUrl?: string });
      } catch {
        reject(new Error(`worker ${index} printed an unexpected first line: ${line}`));
      }
    });
    child.once("exit", (code) => reject(new Error(`worker ${index} exited with code ${code} before listening`)));
  });
  let expectedExit = false;
  let onUnexpectedExit: ((why: string) => void) | undefined;
  child.once("exit", (code, signal) => {
    // Exit code 0 is the worker's own shutdown (SIGINT or SIGTERM, as Ctrl-C sends the whole
    // process group): that one stays down.
    if (!expectedExit && code !== 0) onUnexpectedExit?.(signal ? `killed by ${signal}` : `exit code ${code}`);
  });
  const exited = (signal: NodeJS.Signals) =>
    new Promise<void>((resolve) => {
      expectedExit = true;
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill(signal);
    });
  const boundPort = Number(address.split(":").pop());
  const restart = () => spawnWorker(index, natsUrl, threads, log, options, boundPort);
  return {
    address,
    metricsUrl,
    pid: child.pid,
    stop: () => exited("SIGTERM"),
    crashAndRestart: async () => {
      await exited("SIGKILL");
      return restart();
    },
    restart,
    onUnexpectedExit: (callback) => {
      onUnexpectedExit = callback;
    },
  };
}
