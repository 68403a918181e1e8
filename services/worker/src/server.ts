import * as grpc from "@grpc/grpc-js";
import { EventBus } from "@strata/events";
import { grpcChannelOptions } from "@strata/proto";
import { WorkerNode, workerServiceDefinition } from "./worker-service.ts";

export interface WorkerServerOptions {
  host?: string;
  port?: number; // 0 picks a free port
  workerId: string;
  natsUrl?: string;
  intraOpThreads?: number;
  log?: (line: string) => void;
}

export interface RunningWorker {
  address: string;
  port: number;
  node: WorkerNode;
  close(): Promise<void>;
}

export async function startWorkerServer(opts: WorkerServerOptions): Promise<RunningWorker> {
  const events = opts.natsUrl ? await EventBus.connect(opts.natsUrl, `strata-worker-${opts.workerId}`) : undefined;
  const node = new WorkerNode({ workerId: opts.workerId, intraOpThreads: opts.intraOpThreads, events, log: opts.log });
  const server = new grpc.Server(grpcChannelOptions);
  server.addService(workerServiceDefinition(), node.serviceImplementation());
  const host = opts.host ?? "127.0.0.1";
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${opts.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
  );
  return {
    address: `${host}:${port}`,
    port,
    node,
    async close() {
      node.close();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      server.forceShutdown();
      await events?.close();
    },
  };
}
