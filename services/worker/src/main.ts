import { parseArgs } from "node:util";
import { otlpTracesUrlFromEnv, startTracing } from "@strata/telemetry";
import { startWorkerServer } from "./server.ts";

// A worker process: serves one stage over gRPC; the coordinator tells it what to load.
const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    "worker-id": { type: "string", default: `worker-${process.pid}` },
    "nats-url": { type: "string" },
    threads: { type: "string", default: "1" },
    // The stage's engine (onnxruntime and the KV cache) on a thread of its own, so this thread
    // reads and admits the next micro-batch, answers health checks and scrapes, and takes NATS
    // events while a step computes. Off by default: each step's hand-off to the thread and back
    // costs ~0.1-0.2 ms here, which short steps feel (stories260K, 32 requests: ~24,000 tok/s with
    // it, ~32,000 without; the bench model, one request: 8-20% slower). Where steps are long it
    // costs little (bench model, 32 requests pipelined: about the same tok/s, 1-3% either way) and
    // a 2,000-token prefill no longer holds a health check for ~850 ms (15 ms with it).
    "compute-thread": { type: "boolean", default: false },
    // A decode run's step results may wait this long to go out together (0: every step at once).
    "result-hold-ms": { type: "string", default: "50" },
    // Prometheus metrics port: 0 picks a free one; "none" serves none.
    "metrics-port": { type: "string", default: "0" },
  },
});

// Stage spans export to OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT when set, as service strata-<worker id>.
const tracing = startTracing({ serviceName: `strata-${values["worker-id"]}`, tracesUrl: otlpTracesUrlFromEnv(process.env), global: true });

const resultHoldMs = Number(values["result-hold-ms"]);
if (!Number.isFinite(resultHoldMs) || resultHoldMs < 0) {
  process.stderr.write(`--result-hold-ms must be a number of milliseconds >= 0, got "${values["result-hold-ms"]}"\n`);
  process.exit(2);
}

const worker = await startWorkerServer({
  host: values.host,
  port: Number(values.port),
  workerId: values["worker-id"]!,
  natsUrl: values["nats-url"],
  intraOpThreads: Number(values.threads),
  computeThread: values["compute-thread"],
  log: (line) => process.stderr.write(`[${values["worker-id"]}] ${line}\n`),
  tracing,
  metricsPort: values["metrics-port"] === "none" ? undefined : Number(values["metrics-port"]),
  resultHoldMs,
});
// The launcher reads this line to learn the port.
process.stdout.write(JSON.stringify({ event: "listening", address: worker.address, port: worker.port, metricsPort: worker.metricsPort, metricsUrl: worker.metricsUrl }) + "\n");

let closing = false;
const shutdown = async () => {
  if (closing) return;
  closing = true;
  await worker.close();
  await tracing.shutdown();
  process.exit(0);
};
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
// Die with the parent: a launcher that crashes must not leave workers behind.
process.stdin.on("end", shutdown);
process.stdin.resume();
