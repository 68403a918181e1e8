// One onnxruntime session on its own thread. session.run is synchronous in onnxruntime-node and
// would block the worker's event loop for a whole stage's compute, stalling gRPC reads and
// writes (a hidden state larger than the socket buffer waits for the next poll). Here the main
// thread keeps moving bytes while this thread computes.
import { parentPort } from "node:worker_threads";
import * as ort from "onnxruntime-node";

let session;

parentPort.on("message", async (msg) => {
  if (msg.kind === "init") {
    try {
      session = await ort.InferenceSession.create(msg.graph, msg.options);
      parentPort.postMessage({ kind: "ready" });
    } catch (error) {
      parentPort.postMessage({ kind: "failed", message: error.message });
    }
    return;
  }
  if (msg.kind === "run") {
    try {
      const feeds = {};
      for (const [name, t] of Object.entries(msg.feeds)) feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
      const out = await session.run(feeds, msg.fetch ?? session.outputNames);
      const outputs = {};
      const buffers = new Set();
      for (const [name, t] of Object.entries(out)) {
        outputs[name] = { type: t.type, data: t.data, dims: t.dims };
        buffers.add(t.data.buffer);
      }
      try {
        parentPort.postMessage({ kind: "result", id: msg.id, outputs }, [...buffers]);
      } catch {
        // Output memory onnxruntime owns cannot move: copy it instead.
        parentPort.postMessage({ kind: "result", id: msg.id, outputs });
      }
    } catch (error) {
      parentPort.postMessage({ kind: "result", id: msg.id, error: error.message });
    }
  }
});
