import { Worker } from "node:worker_threads";
import type { LoraAdapter, StageWeights } from "@strata/model";
import { DeviceUnavailableError, KvBudgetError, StageEngine, type ForwardWants, type StageChunk, type StageCompute, type StageEngineOptions, type StageOutput } from "./stage-engine.ts";
import type { EngineReply, EngineRequest } from "./engine-thread-entry.ts";
import { checkLoraAdapter } from "./lora-pack.ts";

/** A StageEngine on this thread (`opts.computeThread` off) or on a thread of its own. */
export async function createStageCompute(weights: StageWeights, opts: StageEngineOptions): Promise<StageCompute> {
  return opts.computeThread ? ThreadedStageEngine.create(weights, opts) : StageEngine.create(weights, opts);
}

interface PendingStep {
  resolve(output: StageOutput): void;
  reject(error: Error): void;
}

/**
 * A StageEngine, KV cache included, on a thread of its own. onnxruntime-node's session.run is
 * synchronous: on the worker's own thread it holds the event loop for a whole step, so the next
 * micro-batch's message is read, decoded and admitted only after the step, in the stage's time
 * (~1.1 ms a step on the bench model's busier stage), and health checks wait behind a long
 * prefill. Only a step's inputs and outputs cross threads: the hidden state, token ids and block
 * tables in, the hidden state or tokens out. (Moving onnxruntime alone to a thread, as an earlier
 * version did, sent every step's gathered past K/V across, megabytes a step.) Steps run in the
 * order forward is called, adapter changes in order with them.
 */
export class ThreadedStageEngine implements StageCompute {
  readonly computesAside = true;
  readonly sharedPast = { positionsRead: 0, positionReadsSaved: 0 };
  private readonly pending = new Map<number, PendingStep>();
  private readonly adapters = new Set<string>();
  private nextId = 1;
  private failed: Error | undefined;

  private constructor(
    private readonly thread: Worker,
    private readonly opts: StageEngineOptions,
    private readonly numLayers: number,
    readonly numBlocks: number,
  ) {
    thread.on("message", (reply: EngineReply) => {
      if (reply.kind !== "stepDone") return;
      const step = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      if (this.pending.size === 0) thread.unref();
      this.sharedPast.positionsRead = reply.sharedPast.positionsRead;
      this.sharedPast.positionReadsSaved = reply.sharedPast.positionReadsSaved;
      if (reply.error) step?.reject(rebuildError(reply.error));
      else step?.resolve(reply.output!);
    });
    thread.on("error", (error) => this.failAll(new Error(`the stage's compute thread failed: ${error.message}`)));
    thread.on("exit", (code) => this.failAll(new Error(`the stage's compute thread exited (code ${code})`)));
  }

  static async create(weights: StageWeights, opts: StageEngineOptions): Promise<ThreadedStageEngine> {
    const thread = new Worker(new URL("./thread-boot.mjs", import.meta.url), { workerData: { entry: new URL("./engine-thread-entry.ts", import.meta.url).href } });
    // An idle thread must not keep its process alive (see forward).
    thread.unref();
    let onMessage = (_reply: EngineReply) => {};
    let numBlocks = 0;
    let onExit = (_code: number) => {};
    let onError = (_error: Error) => {};
    try {
      await new Promise<void>((resolve, reject) => {
        onMessage = (reply) => {
          if (reply.kind === "ready") {
            numBlocks = reply.numBlocks;
            resolve();
          } else if (reply.kind === "failed") reject(rebuildError(reply.error));
        };
        onExit = (code) => reject(new Error(`the stage's compute thread exited with code ${code} while loading`));
        onError = reject;
        thread.on("message", onMessage);
        thread.on("error", onError);
        thread.on("exit", onExit);
        postWithWeights(thread, { kind: "init", weights, opts });
      });
    } catch (error) {
      await thread.terminate();
      throw error;
    } finally {
      // Only these: Node's own listeners on a Worker keep its messages flowing.
      thread.off("message", onMessage);
      thread.off("exit", onExit);
      thread.off("error", onError);
    }
    return new ThreadedStageEngine(thread, opts, weights.layerEnd - weights.layerStart, numBlocks);
  }

  get failure(): Error | undefined {
    return this.failed;
  }

  forward(chunks: readonly StageChunk[], hidden?: Float32Array, wants: ForwardWants = {}): Promise<StageOutput> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.nextId++;
    // A compact copy moves to the thread: `hidden` may be a view into a received message's bytes.
    const ownHidden = hidden?.slice();
    const request: EngineRequest = { kind: "forward", id, chunks: chunks.map(plainChunk), hidden: ownHidden, wants };
    return new Promise((resolve, reject) => {
      // A step under way keeps the process alive, as compute on its own thread would.
      if (this.pending.size === 0) this.thread.ref();
      this.pending.set(id, { resolve, reject });
      this.thread.postMessage(request, ownHidden ? [ownHidden.buffer] : []);
    });
  }

  setAdapter(id: string, adapter: LoraAdapter): void {
    // What StageEngine.setAdapter would throw, thrown here rather than lost on the thread.
    checkLoraAdapter(adapter, this.numLayers, this.opts.maxLoraRank ?? 0);
    this.adapters.add(id);
    this.post({ kind: "setAdapter", id, adapter });
  }

  removeAdapter(id: string): boolean {
    if (!this.adapters.delete(id)) return false;
    this.post({ kind: "removeAdapter", id });
    return true;
  }

  /** Ends the thread once the steps already asked for are done; the engine cannot run after this. */
  async close(): Promise<void> {
    if (this.failed) return;
    const exited = new Promise<void>((resolve) => this.thread.once("exit", () => resolve()));
    this.thread.ref();
    this.thread.postMessage({ kind: "close" } satisfies EngineRequest);
    this.failed = new Error("the stage was closed");
    await exited;
  }

  private post(request: EngineRequest): void {
    if (!this.failed) this.thread.postMessage(request);
  }

  private failAll(error: Error): void {
    this.failed ??= error;
    for (const step of this.pending.values()) step.reject(error);
    this.pending.clear();
  }
}

// Only what StageEngine reads of a chunk, as plain arrays: a chunk may hold protobuf messages'
// arrays or block tables a stage keeps changing.
function plainChunk(c: StageChunk): StageChunk {
  return {
    seqId: c.seqId,
    startPosition: c.startPosition,
    numTokens: c.numTokens,
    tokenIds: c.tokenIds === undefined ? undefined : Array.from(c.tokenIds),
    blockTable: [...c.blockTable],
    adapter: c.adapter,
  };
}

/** The weights move to the thread rather than being copied (a stage of a large model is gigabytes). */
function postWithWeights(thread: Worker, request: EngineRequest & { kind: "init" }): void {
  const w = request.weights;
  const arrays = [w.embedding, w.finalNorm, w.lmHead, ...w.layers.flatMap((layer) => Object.values(layer))].filter((a): a is Float32Array => a instanceof Float32Array);
  const buffers = [...new Set(arrays.map((a) => a.buffer))].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
  try {
    thread.postMessage(request, buffers);
  } catch {
    // Memory that cannot move (Node's pooled Buffer slabs) is copied instead.
    thread.postMessage(request);
  }
}

function rebuildError(e: { name: string; message: string }): Error {
  const error =
    e.name === "DeviceUnavailableError"
      ? new DeviceUnavailableError(e.message)
      : e.name === "KvBudgetError"
        ? new KvBudgetError(e.message)
        : e.name === "RangeError"
          ? new RangeError(e.message)
          : new Error(e.message);
  if (error.name !== e.name) error.name = e.name;
  return error;
}
