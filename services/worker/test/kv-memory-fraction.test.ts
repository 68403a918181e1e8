import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LoadRequestSchema, WorkerService, grpcChannelOptions, grpcClientConstructor, type DescribeResponse, type LoadResponse } from "@strata/proto";
import { startWorkerServer, type RunningWorker } from "../src/index.ts";

// LoadRequest.kv_memory_fraction over gRPC: a fraction outside [0, 1] is the caller's error, one
// that buys no block is the host's shortfall, and one that buys blocks sizes the stage's cache.

const WorkerClient = grpcClientConstructor(WorkerService);
interface Stub extends grpc.Client {
  load(req: unknown): grpc.ClientReadableStream<LoadResponse>;
}

let worker: RunningWorker;
let stub: Stub;
beforeAll(async () => {
  worker = await startWorkerServer({ workerId: "kv-fraction-test" });
  stub = new WorkerClient(worker.address, grpc.credentials.createInsecure(), grpcChannelOptions) as unknown as Stub;
});
afterAll(async () => {
  stub?.close();
  await worker?.close();
});

function load(kvMemoryFraction: number): Promise<DescribeResponse> {
  return new Promise((resolve, reject) => {
    const call = stub.load(create(LoadRequestSchema, { modelDir: BUNDLED_MODEL_DIR, layerStart: 0, layerEnd: 5, stageIndex: 0, numStages: 1, kvMemoryFraction }));
    let ready: DescribeResponse | undefined;
    call.on("data", (msg: LoadResponse) => {
      if (msg.event.case === "ready") ready = msg.event.value;
    });
    call.on("error", reject);
    call.on("end", () => (ready ? resolve(ready) : reject(new Error("load ended without ready"))));
  });
}

describe("a stage's KV cache as a fraction of available memory", () => {
  it("refuses a fraction outside [0, 1]", async () => {
    for (const fraction of [-0.5, 1.5, Number.NaN]) {
      await expect(load(fraction)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/kv_memory_fraction .* is not between 0 and 1/) });
    }
  });

  it("reports a fraction that buys no block as the host's shortfall", async () => {
    await expect(load(1e-12)).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/holds no block of 16 tokens at \d+ bytes\/block/) });
  });

  it("sizes the cache from it, and loads again after the refusals", async () => {
    const stage = await load(0.001);
    expect(stage.loaded).toBe(true);
    // 5 layers of stories260K: 20 KiB a block; 0.1% of what a host has available is megabytes.
    expect(stage.kv!.blocksTotal).toBeGreaterThan(50);
  });
});
