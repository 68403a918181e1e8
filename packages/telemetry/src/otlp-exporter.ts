import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { ExportResultCode, type ExportResult } from "@opentelemetry/core";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace";
import { encodeTraceExport } from "./otlp-encoder.ts";

export interface OtlpExporterOptions {
  /** Extra request headers (an auth token, say). */
  headers?: Record<string, string>;
  /** Per export (default 10 s, OTLP's default). */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * An OTLP/HTTP protobuf span exporter for the SDK's BatchSpanProcessor: the same request as
 * @opentelemetry/exporter-trace-otlp-proto, encoded by encodeTraceExport (several times cheaper
 * than the SDK serializer's object-per-field path, which ran on the event loop of every stage and
 * of the coordinator) and sent over one keep-alive connection. One attempt per batch: a failed
 * export is reported to the processor, which logs it and goes on.
 */
export class OtlpProtoSpanExporter implements SpanExporter {
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

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    if (this.stopped) return done({ code: ExportResultCode.FAILED, error: new Error("the OTLP exporter is shut down") });
    let body: Uint8Array;
    try {
      body = encodeTraceExport(spans);
    } catch (error) {
      return done({ code: ExportResultCode.FAILED, error: error as Error });
    }
    const sent = this.post(body).then(
      () => done({ code: ExportResultCode.SUCCESS }),
      (error: Error) => done({ code: ExportResultCode.FAILED, error }),
    );
    this.inFlight.add(sent);
    void sent.finally(() => this.inFlight.delete(sent));
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
