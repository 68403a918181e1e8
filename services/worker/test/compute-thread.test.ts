import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import type { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { HealthRequestSchema, LoadRequestSchema, WorkerService, grpcChannelOptions, grpcClientConstructor, type HealthResponse, type LoadResponse } from "@strata/proto";
import { startWorkerServer, type RunningWorker } from "../src/index.ts";

// A worker whose stage computes on a thread of its own, when that thread is gone: the stage is
// still loaded but serves nothing, and its health check says so (the coordinator's /ready then
// reports the stage not serving), rather than the worker looking healthy while failing every step.

const WorkerClient = grpcClientConstructor(WorkerService);
interface Stub extends grpc.Client {
  load(req: unknown): grpc.ClientReadableStream<LoadResponse>;
  health(req: unknown, cb: (err: grpc.ServiceError | null, res: HealthResponse) => void): void;
}

let worker: RunningWorker;
let stub: Stub;
beforeAll(async () => {
  worker = await startWorkerServer({ workerId: "compute-thread-test", computeThread: true });
  stub = new WorkerClient(worker.address, grpc.credentials.createInsecure(), grpcChannelOptions) as unknown as Stub;
});
afterAll(async () => {
  stub?.close();
  await worker?.close();
});

const health = () => new Promise<HealthResponse>((resolve, reject) => stub.health(create(HealthRequestSchema, {}), (err, res) => (err ? reject(err) : resolve(res))));

describe("a worker computing on a thread of its own", () => {
  it("reports its stage not serving once the compute thread is gone", async () => {
    await new Promise<void>((resolve, reject) => {
      const call = stub.load(create(LoadRequestSchema, { modelDir: BUNDLED_MODEL_DIR, layerStart: 0, layerEnd: 5, stageIndex: 0, numStages: 1 }));
      call.on("data", () => {});
      call.on("error", reject);
      call.on("end", resolve);
    });
    expect(await health()).toMatchObject({ serving: true, loaded: true });
    // As an out-of-memory kill of the thread would.
    await (worker.node as unknown as { stage: { engine: { thread: Worker } } }).stage.engine.thread.terminate();
    expect(await health()).toMatchObject({ serving: false, loaded: true });
  });
});
