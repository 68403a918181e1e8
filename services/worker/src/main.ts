import { parseArgs } from "node:util";
import { startWorkerServer } from "./server.ts";

// A worker process: serves one stage over gRPC; the coordinator tells it what to load.
const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    "worker-id": { type: "string", default: `worker-${process.pid}` },
    "nats-url": { type: "string" },
    threads: { type: "string", default: "1" },
  },
});

const worker = await startWorkerServer({
  host: values.host,
  port: Number(values.port),
  workerId: values["worker-id"]!,
  natsUrl: values["nats-url"],
  intraOpThreads: Number(values.threads),
  log: (line) => process.stderr.write(`[${values["worker-id"]}] ${line}\n`),
});
// The launcher reads this line to learn the port.
process.stdout.write(JSON.stringify({ event: "listening", address: worker.address, port: worker.port }) + "\n");

let closing = false;
const shutdown = async () => {
  if (closing) return;
  closing = true;
  await worker.close();
  process.exit(0);
};
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
// Die with the parent: a launcher that crashes must not leave workers behind.
process.stdin.on("end", shutdown);
process.stdin.resume();
