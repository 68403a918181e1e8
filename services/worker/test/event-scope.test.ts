import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startNatsServer, type NatsServerProcess } from "@strata/events";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import type { DescribeResponse } from "@strata/proto";
import { startWorkerServer, type RunningWorker } from "../src/index.ts";
import { loadStage, workerStub, type WorkerStub } from "./support/worker-client.ts";

// A stage takes the events of the cluster that loaded it (LoadRequest.event_scope): the scope must
// be one NATS subject token, and a load does not hang on NATS being away.

let nats: NatsServerProcess;
let worker: RunningWorker;
let stub: WorkerStub;
beforeAll(async () => {
  nats = await startNatsServer();
  worker = await startWorkerServer({ workerId: "scope-test", natsUrl: nats.url });
  stub = workerStub(worker.address);
});
afterAll(async () => {
  stub?.close();
  await worker?.close();
  await nats?.stop();
});

function load(eventScope: string): Promise<DescribeResponse> {
  return loadStage(stub, { modelDir: BUNDLED_MODEL_DIR, layerStart: 0, layerEnd: 5, stageIndex: 0, numStages: 1, eventScope });
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
