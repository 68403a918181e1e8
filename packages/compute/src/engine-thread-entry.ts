// The compute thread of a ThreadedStageEngine (engine-thread.ts): one StageEngine, KV cache
// included, stepping through forward requests in the order they arrive.
import { parentPort } from "node:worker_threads";
import type { LoraAdapter, StageWeights } from "@strata/model";
import { StageEngine, type ForwardWants, type StageChunk, type StageEngineOptions, type StageOutput } from "./stage-engine.ts";

export type EngineRequest =
  | { kind: "init"; weights: StageWeights; opts: StageEngineOptions }
  | { kind: "forward"; id: number; chunks: StageChunk[]; hidden?: Float32Array; wants: ForwardWants }
  | { kind: "setAdapter"; id: string; adapter: LoraAdapter }
  | { kind: "removeAdapter"; id: string }
  | { kind: "close" };

export type EngineReply =
  | { kind: "ready"; numBlocks: number }
  | { kind: "failed"; error: { name: string; message: string } }
  | {
      kind: "stepDone";
      id: number;
      output?: StageOutput;
      error?: { name: string; message: string };
      sharedPast: { positionsRead: number; positionReadsSaved: number };
    };

const port = parentPort!;
let engine: StageEngine | undefined;
// Steps one at a time, in order: forward is async, and a step must not start before the one
// before it has written its K/V.
let queue: Promise<void> = Promise.resolve();

const describe = (error: unknown) => ({ name: error instanceof Error ? error.name : "Error", message: error instanceof Error ? error.message : String(error) });

port.on("message", (request: EngineRequest) => {
  // A request that fails outside a step (the main thread checked it already) must not stop the
  // steps behind it.
  queue = queue.then(() => handle(request)).catch((error) => console.error(`stage compute thread: ${request.kind} failed: ${describe(error).message}`));
});

async function handle(request: EngineRequest): Promise<void> {
  switch (request.kind) {
    case "init":
      try {
        engine = await StageEngine.create(request.weights, request.opts);
        port.postMessage({ kind: "ready", numBlocks: engine.numBlocks } satisfies EngineReply);
      } catch (error) {
        port.postMessage({ kind: "failed", error: describe(error) } satisfies EngineReply);
      }
      return;
    case "setAdapter":
      engine!.setAdapter(request.id, request.adapter);
      return;
    case "removeAdapter":
      engine!.removeAdapter(request.id);
      return;
    case "close":
      // After every step asked for before it (the queue), so none is cut short.
      await engine?.close();
      // Ends this thread only; its loader hooks would keep it alive after port.close().
      process.exit(0);
    case "forward": {
      let reply: EngineReply;
      const startedUnixMs = performance.timeOrigin + performance.now();
      try {
        const output = await engine!.forward(request.chunks, request.hidden, request.wants);
        reply = { kind: "stepDone", id: request.id, output: { ...output, startedUnixMs }, sharedPast: { ...engine!.sharedPast } };
      } catch (error) {
        reply = { kind: "stepDone", id: request.id, error: describe(error), sharedPast: { ...engine!.sharedPast } };
      }
      try {
        port.postMessage(reply, reply.output ? movable(reply.output) : []);
      } catch {
        port.postMessage(reply);
      }
      return;
    }
  }
}

// Output arrays that own their whole buffer move to the main thread; anything else is copied.
function movable(output: StageOutput): ArrayBuffer[] {
  return [output.hidden, output.logits, output.greedyTokens]
    .filter((a): a is Float32Array | Int32Array => a !== undefined && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && a.buffer instanceof ArrayBuffer)
    .map((a) => a.buffer as ArrayBuffer)
    .filter((buffer, i, all) => all.indexOf(buffer) === i);
}
