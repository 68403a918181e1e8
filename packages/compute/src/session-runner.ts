import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import * as ort from "onnxruntime-node";

export interface RunOutput {
  data: ort.Tensor.DataType;
  dims: readonly number[];
}

/** Runs a stage graph: on the calling thread, or on a thread of its own (the default for workers). */
export interface SessionRunner {
  /**
   * Takes ownership of the feeds' buffers (callers must not touch them afterwards), except those
   * named in `kept`, which are fed again on later runs. `fetch` names the outputs wanted (all
   * when absent): onnxruntime-node 1.30 copies every output it returns into a new buffer (one
   * preallocated for it too), so one not needed is better left in the graph.
   */
  run(feeds: Record<string, ort.Tensor>, kept?: ReadonlySet<string>, fetch?: readonly string[]): Promise<Record<string, RunOutput>>;
  close(): Promise<void>;
}

export async function createSessionRunner(graph: Uint8Array, options: ort.InferenceSession.SessionOptions, onThread: boolean): Promise<SessionRunner> {
  if (!onThread) {
    const session = createNativeSession(graph, options);
    const outputs = session.outputMetadata.map((m) => m.name);
    return {
      run: (feeds, _kept, fetch) => {
        // Every output wanted named, each allocated by onnxruntime (null).
        const fetches: Record<string, ort.Tensor | null> = {};
        for (const name of fetch ?? outputs) fetches[name] = null;
        try {
          return Promise.resolve(session.run(feeds, fetches, {}));
        } catch (error) {
          return Promise.reject(error instanceof Error ? error : new Error(String(error)));
        }
      },
      close: async () => session.dispose(),
    };
  }
  return ThreadSessionRunner.create(graph, options);
}

/** onnxruntime-node's native session object (what its InferenceSession wraps). */
interface NativeSession {
  loadModel(buffer: ArrayBufferLike, byteOffset: number, byteLength: number, options: ort.InferenceSession.SessionOptions): void;
  run(feeds: Record<string, ort.Tensor>, fetches: Record<string, ort.Tensor | null>, options: object): Record<string, ort.Tensor>;
  dispose(): void;
  readonly outputMetadata: readonly { name: string }[];
}

const nativeBinding = createRequire(import.meta.url)("onnxruntime-node/dist/binding.js") as {
  binding: { InferenceSession: new () => NativeSession };
  initOrt(): void;
};

/**
 * A session run straight through onnxruntime-node's native binding (pinned at 1.30.0), on the
 * calling thread. Its InferenceSession.run defers every call by a setImmediate and checks and
 * re-wraps feeds and outputs; a stage runs one call per step with feeds it built itself, and that
 * wrapper cost ~40 us of a 5-layer decode step here (~155 -> ~115 us per call, stories260K, batch 1).
 * The run is synchronous either way; errors are thrown as the wrapper's are.
 */
function createNativeSession(graph: Uint8Array, options: ort.InferenceSession.SessionOptions): NativeSession {
  nativeBinding.initOrt();
  const session = new nativeBinding.binding.InferenceSession();
  session.loadModel(graph.buffer, graph.byteOffset, graph.byteLength, options);
  return session;
}

interface Pending {
  resolve(outputs: Record<string, RunOutput>): void;
  reject(error: Error): void;
}

class ThreadSessionRunner implements SessionRunner {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  private constructor(private readonly thread: Worker) {
    thread.on("message", (msg: { kind: string; id: number; outputs?: Record<string, RunOutput>; error?: string }) => {
      if (msg.kind !== "result") return;
      const waiter = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.error !== undefined) waiter?.reject(new Error(msg.error));
      else waiter?.resolve(msg.outputs!);
    });
    thread.on("error", (error) => this.failAll(error));
    thread.on("exit", (code) => this.failAll(new Error(`onnxruntime thread exited with code ${code}`)));
  }

  static async create(graph: Uint8Array, options: ort.InferenceSession.SessionOptions): Promise<ThreadSessionRunner> {
    const thread = new Worker(new URL("./ort-thread.mjs", import.meta.url));
    // A thread must not keep its process alive once the stage is gone.
    thread.unref();
    await new Promise<void>((resolve, reject) => {
      thread.once("message", (msg: { kind: string; message?: string }) =>
        msg.kind === "ready" ? resolve() : reject(new Error(msg.message ?? "onnxruntime thread failed to start")),
      );
      thread.once("error", reject);
      thread.postMessage({ kind: "init", graph, options });
    }).catch(async (error) => {
      await thread.terminate();
      throw error;
    });
    return new ThreadSessionRunner(thread);
  }

  run(feeds: Record<string, ort.Tensor>, kept?: ReadonlySet<string>, fetch?: readonly string[]): Promise<Record<string, RunOutput>> {
    const id = this.nextId++;
    const message: Record<string, { type: ort.Tensor.Type; data: ort.Tensor.DataType; dims: readonly number[] }> = {};
    // Feeds are built fresh for every step, so their buffers move to the thread instead of being
    // copied (the gathered past K/V can be megabytes).
    const buffers = new Set<ArrayBuffer>();
    for (const [name, t] of Object.entries(feeds)) {
      message[name] = { type: t.type, data: t.data, dims: t.dims };
      if (!kept?.has(name) && ArrayBuffer.isView(t.data) && t.data.buffer instanceof ArrayBuffer) buffers.add(t.data.buffer);
    }
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.thread.postMessage({ kind: "run", id, feeds: message, fetch }, [...buffers]);
    });
  }

  private failAll(error: Error): void {
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
  }

  async close(): Promise<void> {
    await this.thread.terminate();
  }
}
