import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startNatsServer, type NatsServerProcess } from "@strata/events";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LoadRequestSchema, WorkerService, grpcChannelOptions, grpcClientConstructor, type DescribeResponse, type LoadResponse } from "@strata/proto";
import { startWorkerServer, type RunningWorker } from "../src/index.ts";

// A stage takes the events of the cluster that loaded it (LoadRequest.event_scope): the scope must
// be one NATS subject token, and a load does not hang on NATS being away.

const WorkerClient = grpcClientConstructor(WorkerService);
interface Stub extends grpc.Client {
  load(req: unknown): grpc.ClientReadableStream<LoadResponse>;
}

let nats: NatsServerProcess;
let worker: RunningWorker;
let stub: Stub;
beforeAll(async () => {
  nats = await startNatsServer();
  worker = await startWorkerServer({ workerId: "scope-test", natsUrl: nats.url });
  stub = new WorkerClient(worker.address, grpc.credentials.createInsecure(), grpcChannelOptions) as unknown as Stub;
});
afterAll(async () => {
  stub?.close();
  await worker?.close();
  await nats?.stop();
});

function load(eventScope: string): Promise<DescribeResponse> {
  return new Promise((resolve, reject) => {
    const call = stub.load(create(LoadRequestSchema, { modelDir: BUNDLED_MODEL_DIR, layerStart: 0, layerEnd: 5, stageIndex: 0, numStages: 1, eventScope }));
    let ready: DescribeResponse | undefined;
    call.on("data", (msg: LoadResponse) => {
      if (msg.event.case === "ready") ready = msg.event.value;
    });
    call.on("error", reject);
    call.on("end", () => (ready ? resolve(ready) : reject(new Error("load ended without ready"))));
  });
}

describe("a stage's event scope", () => {
  it("refuses a scope that is not one subject token", async () => {
    for (const scope of ["a.b", "*", "x>", "has space"]) {
      await expect(load(scope)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/one NATS subject token/) });
    }
  });

  it("loads under a scope, and again under another within seconds while NATS is away", async () => {
    expect(await load("cluster-a")).toMatchObject({ loaded: true });
    await nats.stop({ removeStore: false });
    try {
      const started = Date.now();
      expect(await load("cluster-b")).toMatchObject({ loaded: true });
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      await nats.restart();
    }
  });
});
