import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Gauge, type Registry } from "prom-client";

export interface MetricsServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Serves `registry` at GET /metrics on its own port (workers have no HTTP API otherwise). */
export async function serveMetrics(registry: Registry, opts: { host?: string; port?: number } = {}): Promise<MetricsServer> {
  const host = opts.host ?? "127.0.0.1";
  const server: Server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url ?? "/").split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: metrics are at GET /metrics\n");
      return;
    }
    registry.metrics().then(
      (body) => res.writeHead(200, { "content-type": registry.contentType }).end(body),
      (error: Error) => res.writeHead(500, { "content-type": "text/plain" }).end(`${error.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${host}:${port}/metrics`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * Sets a counter to a total that something else keeps (a pool's running count), at scrape time.
 * The source only grows, so the exported series stays monotonic.
 */
export function setCounterTotal<L extends string>(counter: Counter<L>, total: number, labels?: Partial<Record<L, string | number>>): void {
  if (labels) {
    counter.remove(labels);
    counter.inc(labels, total);
  } else {
    counter.reset();
    counter.inc(total);
  }
}

/**
 * This process's CPU time (user and system, every thread's) and resident memory, read at scrape
 * time, so an operator sees how much of a node's cores each stage takes (`pnpm bench batching`
 * reads the same to say how much of the machine the pipelined stages left idle).
 */
export function registerProcessMetrics(registry: Registry): void {
  const registers = [registry];
  new Counter({
    name: "strata_process_cpu_seconds_total",
    help: "CPU time this process has used, user and system, all threads",
    registers,
    collect() {
      const { user, system } = process.cpuUsage();
      setCounterTotal(this, (user + system) / 1e6);
    },
  });
  new Gauge({
    name: "strata_process_resident_memory_bytes",
    help: "Resident memory of this process",
    registers,
    collect() {
      this.set(process.memoryUsage.rss());
    },
  });
}
