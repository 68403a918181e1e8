import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";

export interface OtlpExporterOptions {
  /** Extra request headers (an auth token, say). */
  headers?: Record<string, string>;
  /** Per export (default 10 s, OTLP's default). */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Sends OTLP/HTTP protobuf trace requests (ExportTraceServiceRequest bodies, built by
 * TraceExportBuilder) to a collector over one keep-alive connection: the request
 * @opentelemetry/exporter-trace-otlp-proto sends. One attempt per body; a failure rejects.
 */
export class OtlpHttpExporter {
  private readonly target: URL;
  private readonly agent: HttpAgent;
  private readonly inFlight = new Set<Promise<void>>();
  private stopped = false;

  constructor(
    url: string,
    private readonly opts: OtlpExporterOptions = {},
  ) {
    this.target = new URL(url);
    if (this.target.protocol !== "http:" && this.target.protocol !== "https:") throw new Error(`OTLP traces URL must be http or https, got ${url}`);
    this.agent = this.target.protocol === "https:" ? new HttpsAgent({ keepAlive: true, maxSockets: 2 }) : new HttpAgent({ keepAlive: true, maxSockets: 2 });
  }

  /** POSTs one encoded request; resolves when the collector accepted it (2xx). */
  send(body: Uint8Array): Promise<void> {
    if (this.stopped) return Promise.reject(new Error("the OTLP exporter is shut down"));
    const sent = this.post(body);
    this.inFlight.add(sent);
    const forget = () => void this.inFlight.delete(sent);
    sent.then(forget, forget);
    return sent;
  }

  private post(body: Uint8Array): Promise<void> {
    const send = this.target.protocol === "https:" ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = send(
        this.target,
        {
          method: "POST",
          agent: this.agent,
          timeout: this.opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
          headers: { ...this.opts.headers, "content-type": "application/x-protobuf", "content-length": body.length },
        },
        (res: IncomingMessage) => {
          let answer = "";
          res.setEncoding("utf8");
          res.on("data", (chunk: string) => (answer.length < 512 ? (answer += chunk) : undefined));
          res.on("end", () => {
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) resolve();
            else reject(new Error(`OTLP export to ${this.target.href} got HTTP ${status}: ${answer.slice(0, 200)}`));
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`OTLP export to ${this.target.href} timed out`)));
      req.on("error", reject);
      req.end(body);
    });
  }

  /** Waits for the requests already sent. */
  async forceFlush(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
  }

  async shutdown(): Promise<void> {
    this.stopped = true;
    await this.forceFlush();
    this.agent.destroy();
  }
}

/**
 * Headers and timeout from the OTLP exporter's environment variables, traces-specific first:
 * OTEL_EXPORTER_OTLP_[TRACES_]HEADERS ("key=value,key2=value2", values percent-encoded) and
 * OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT (milliseconds).
 */
export function otlpExporterOptionsFromEnv(env: NodeJS.ProcessEnv): OtlpExporterOptions {
  const raw = env.OTEL_EXPORTER_OTLP_TRACES_HEADERS?.trim() || env.OTEL_EXPORTER_OTLP_HEADERS?.trim();
  const headers: Record<string, string> = {};
  for (const pair of raw ? raw.split(",") : []) {
    const at = pair.indexOf("=");
    if (at <= 0) continue;
    headers[pair.slice(0, at).trim()] = decodeURIComponent(pair.slice(at + 1).trim());
  }
  const timeout = Number(env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT?.trim() || env.OTEL_EXPORTER_OTLP_TIMEOUT?.trim() || Number.NaN);
  return { headers, timeoutMs: Number.isFinite(timeout) && timeout > 0 ? timeout : undefined };
}
