import * as grpc from "@grpc/grpc-js";
import { EventBus } from "@strata/events";
import { grpcChannelOptions, widenServerReceiveWindows } from "@strata/proto";
import { serveMetrics, TRACING_OFF, type MetricsServer, type Tracing } from "@strata/telemetry";
import { StageTelemetry } from "./telemetry.ts";
import { WorkerNode, workerServiceDefinition } from "./worker-service.ts";

/** How long a closing worker lets calls in progress end on their own before cutting them. */
const SHUTDOWN_GRACE_MS = 500;

export interface WorkerServerOptions {
  host?: string;
  port?: number; // 0 picks a free port
  workerId: string;
  natsUrl?: string;
  intraOpThreads?: number;
  computeThread?: boolean;
  log?: (line: string) => void;
  /** Stage spans go here (the caller owns it and shuts it down); off by default. */
  tracing?: Tracing;
  /** Serve Prometheus metrics at http://host:<port>/metrics; 0 picks a free port, undefined serves none. */
  metricsPort?: number;
  /** See WorkerOptions.resultHoldMs. */
  resultHoldMs?: number;
}

export interface RunningWorker {
  address: string;
  port: number;
  node: WorkerNode;
  /** http://host:port/metrics when metricsPort was given. */
  metricsUrl?: string;
  metricsPort?: number;
  telemetry: StageTelemetry;
  close(): Promise<void>;
}

export async function startWorkerServer(opts: WorkerServerOptions): Promise<RunningWorker> {
  const events = opts.natsUrl ? await EventBus.connect(opts.natsUrl, `strata-worker-${opts.workerId}`) : undefined;
  const node = new WorkerNode({ workerId: opts.workerId, intraOpThreads: opts.intraOpThreads, computeThread: opts.computeThread, events, log: opts.log, resultHoldMs: opts.resultHoldMs });
  const telemetry = new StageTelemetry(opts.workerId, () => node.describe(), opts.tracing ?? TRACING_OFF, events);
  node.observer = telemetry;
  const server = new grpc.Server(grpcChannelOptions);
  server.addService(workerServiceDefinition(), node.serviceImplementation());
  const host = opts.host ?? "127.0.0.1";
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${opts.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
  );
  widenServerReceiveWindows(server);
  let metrics: MetricsServer | undefined;
  if (opts.metricsPort !== undefined) {
    try {
      metrics = await serveMetrics(telemetry.registry, { host, port: opts.metricsPort });
    } catch (error) {
      server.forceShutdown();
      await events?.close();
      throw error;
    }
  }
  return {
    address: `${host}:${port}`,
    port,
    node,
    metricsUrl: metrics?.url,
    metricsPort: metrics?.port,
    telemetry,
    async close() {
      await metrics?.close();
      node.close();
      // Peers keep their streams to this worker open: waiting for them to end could take forever.
      await new Promise<void>((resolve) => {
        const grace = setTimeout(resolve, SHUTDOWN_GRACE_MS);
        server.tryShutdown(() => (clearTimeout(grace), resolve()));
      });
      server.forceShutdown();
      await events?.close();
    },
  };
}
