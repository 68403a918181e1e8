import * as grpc from "@grpc/grpc-js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DescribeRequestSchema, LoadRequestSchema, WorkerService, grpcChannelOptions, grpcClientConstructor, type DescribeResponse, type LoadResponse } from "@strata/proto";
import { startWorkerServer, type RunningWorker } from "../../src/index.ts";

// A plain gRPC client of one worker, for tests that drive its Load and Describe directly.

const WorkerClient = grpcClientConstructor(WorkerService);

export interface WorkerStub extends grpc.Client {
  load(req: unknown): grpc.ClientReadableStream<LoadResponse>;
  describe(req: unknown, cb: (err: grpc.ServiceError | null, res: DescribeResponse) => void): void;
}

export function workerStub(address: string): WorkerStub {
  return new WorkerClient(address, grpc.credentials.createInsecure(), grpcChannelOptions) as unknown as WorkerStub;
}

/** Loads a stage; settles with its ready description, or the call's gRPC error. */
export function loadStage(stub: WorkerStub, request: MessageInitShape<typeof LoadRequestSchema>): Promise<DescribeResponse> {
  return new Promise((resolve, reject) => {
    const call = stub.load(create(LoadRequestSchema, request));
    let ready: DescribeResponse | undefined;
    call.on("data", (msg: LoadResponse) => {
      if (msg.event.case === "ready") ready = msg.event.value;
    });
    call.on("error", reject);
    call.on("end", () => (ready ? resolve(ready) : reject(new Error("load ended without ready"))));
  });
}

export function describeWorker(stub: WorkerStub): Promise<DescribeResponse> {
  return new Promise((resolve, reject) => stub.describe(create(DescribeRequestSchema, {}), (err, res) => (err ? reject(err) : resolve(res))));
}

/**
 * A lone worker (no NATS: it serves Load and Describe without one) and a client of it, for a test
 * file's beforeAll / afterAll, as useNats is for a NATS server.
 */
export function useWorker(workerId: string): { stub(): WorkerStub; start(): Promise<void>; stop(): Promise<void> } {
  let worker: RunningWorker | undefined;
  let stub: WorkerStub | undefined;
  return {
    stub: () => stub!,
    start: async () => {
      worker = await startWorkerServer({ workerId });
      stub = workerStub(worker.address);
    },
    stop: async () => {
      stub?.close();
      await worker?.close();
    },
  };
}
