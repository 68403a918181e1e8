import * as grpc from "@grpc/grpc-js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DescribeRequestSchema, LoadRequestSchema, WorkerService, grpcChannelOptions, grpcClientConstructor, type DescribeResponse, type LoadResponse } from "@strata/proto";

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
