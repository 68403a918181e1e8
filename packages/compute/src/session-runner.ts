import { createRequire } from "node:module";
import * as ort from "onnxruntime-node";

export interface RunOutput {
  data: ort.Tensor.DataType;
  dims: readonly number[];
}

/** Runs a stage graph on the calling thread (see ThreadedStageEngine for a stage on a thread of its own). */
export interface SessionRunner {
  /**
   * `fetch` names the outputs wanted (all when absent): onnxruntime-node 1.30 copies every output
   * it returns into a new buffer (one preallocated for it too), so one not needed is better left
   * in the graph.
   */
  run(feeds: Record<string, ort.Tensor>, fetch?: readonly string[]): Promise<Record<string, RunOutput>>;
  close(): Promise<void>;
}

export async function createSessionRunner(graph: Uint8Array, options: ort.InferenceSession.SessionOptions): Promise<SessionRunner> {
  const session = createNativeSession(graph, options);
  const outputs = session.outputMetadata.map((m) => m.name);
  return {
    run: (feeds, fetch) => {
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
