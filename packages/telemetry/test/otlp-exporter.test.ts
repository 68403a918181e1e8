import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { fromBinary } from "@bufbuild/protobuf";
import { ROOT_CONTEXT } from "@opentelemetry/api";
import { TracerProvider, type ReadableSpan, type SpanProcessor } from "@opentelemetry/sdk-trace";
import { ExportTraceServiceRequestSchema } from "../../../test/support/otlp/gen/otlp_trace_pb.ts";
import { encodeTraceExport } from "../src/otlp-encoder.ts";
import { OtlpHttpExporter, otlpExporterOptionsFromEnv } from "../src/otlp-exporter.ts";

function spans(n: number): ReadableSpan[] {
  const finished: ReadableSpan[] = [];
  const collect: SpanProcessor = { onStart() {}, onEnd: (s) => void finished.push(s), forceFlush: async () => {}, shutdown: async () => {} };
  const tracer = new TracerProvider({ spanProcessors: [collect] }).getTracer("t");
  for (let i = 0; i < n; i++) tracer.startSpan(`s${i}`, {}, ROOT_CONTEXT).end();
  return finished;
}

let close: (() => Promise<void>) | undefined;
afterEach(async () => {
  await close?.();
  close = undefined;
});

async function receiver(answer: (req: IncomingMessage, body: Buffer, res: ServerResponse) => void): Promise<string> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => answer(req, Buffer.concat(chunks), res));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  close = () => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`;
}

const exportOnce = (exporter: OtlpHttpExporter, batch: ReadableSpan[]) => exporter.send(encodeTraceExport(batch)).then(() => undefined, (error: Error) => error);

describe("OtlpHttpExporter", () => {
  it("POSTs the encoded spans as OTLP protobuf with the configured headers, over one kept-alive connection", async () => {
    const seen: { names: string[]; type?: string; auth?: string; socket: unknown }[] = [];
    const url = await receiver((req, body, res) => {
      const decoded = fromBinary(ExportTraceServiceRequestSchema, body);
      seen.push({ names: decoded.resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans.map((x) => x.name))), type: req.headers["content-type"], auth: req.headers.authorization, socket: req.socket });
      res.writeHead(200).end();
    });
    const exporter = new OtlpHttpExporter(url, otlpExporterOptionsFromEnv({ OTEL_EXPORTER_OTLP_HEADERS: "authorization=Bearer%20abc, x-other = 1" }));
    expect(await exportOnce(exporter, spans(3))).toBeUndefined();
    expect(await exportOnce(exporter, spans(2))).toBeUndefined();
    await exporter.shutdown();
    expect(seen.map((s) => s.names)).toEqual([["s0", "s1", "s2"], ["s0", "s1"]]);
    expect(seen[0]).toMatchObject({ type: "application/x-protobuf", auth: "Bearer abc" });
    expect(seen[1].socket).toBe(seen[0].socket);
  });

  it("reports a receiver's error status, a timeout and a shut-down exporter as failures", async () => {
    const url = await receiver((req, _body, res) => {
      if (req.url?.includes("slow")) return; // never answers
      res.writeHead(503).end("overloaded");
    });
    const failing = new OtlpHttpExporter(url);
    expect((await exportOnce(failing, spans(1)))?.message).toMatch(/HTTP 503: overloaded/);
    const slow = new OtlpHttpExporter(url.replace("/v1/traces", "/slow"), { timeoutMs: 100 });
    expect((await exportOnce(slow, spans(1)))?.message).toMatch(/timed out/);
    await failing.shutdown();
    expect((await exportOnce(failing, spans(1)))?.message).toMatch(/shut down/);
    await slow.shutdown();
  });

  it("reads the traces-specific environment variables before the general ones", () => {
    expect(otlpExporterOptionsFromEnv({ OTEL_EXPORTER_OTLP_HEADERS: "a=1", OTEL_EXPORTER_OTLP_TRACES_HEADERS: "b=2", OTEL_EXPORTER_OTLP_TIMEOUT: "5000", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: "700" })).toEqual({ headers: { b: "2" }, timeoutMs: 700 });
    expect(otlpExporterOptionsFromEnv({})).toEqual({ headers: {}, timeoutMs: undefined });
  });
});
