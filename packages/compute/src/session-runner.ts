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
   * named in `kept`, which are fed again on later runs. `into` names outputs to write into the
   * given tensors instead of new buffers, where the runner can (on the calling thread); either
   * way the outputs come back in the result.
   */
  run(feeds: Record<string, ort.Tensor>, kept?: ReadonlySet<string>, into?: Record<string, ort.Tensor>): Promise<Record<string, RunOutput>>;
  close(): Promise<void>;
}

export async function createSessionRunner(graph: Uint8Array, options: ort.InferenceSession.SessionOptions, onThread: boolean): Promise<SessionRunner> {
  if (!onThread) {
    const session = await ort.InferenceSession.create(graph, options);
    const outputs = session.outputNames;
    return {
      run: (feeds, _kept, into) => {
        if (!into) return session.run(feeds);
        // Every output named: those not preallocated (null) are allocated by onnxruntime as usual.
        const fetches: Record<string, ort.Tensor | null> = {};
        for (const name of outputs) fetches[name] = into[name] ?? null;
        return session.run(feeds, fetches);
      },
      close: () => session.release(),
    };
  }
  return ThreadSessionRunner.create(graph, options);
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

  run(feeds: Record<string, ort.Tensor>, kept?: ReadonlySet<string>): Promise<Record<string, RunOutput>> {
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
      this.thread.postMessage({ kind: "run", id, feeds: message }, [...buffers]);
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
