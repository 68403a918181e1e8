import { describe, expect, it } from "vitest";
import { fromBinary, toJson } from "@bufbuild/protobuf";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, TraceFlags } from "@opentelemetry/api";
import { ProtobufTraceSerializer } from "@opentelemetry/otlp-transformer";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { TracerProvider, type ReadableSpan, type SpanProcessor } from "@opentelemetry/sdk-trace";
import { ExportTraceServiceRequestSchema } from "../../../test/support/otlp/gen/otlp_trace_pb.ts";
import { encodeTraceExport, TraceExportBuilder } from "../src/otlp-encoder.ts";

function recordedSpans(): ReadableSpan[] {
  const finished: ReadableSpan[] = [];
  const collect: SpanProcessor = { onStart() {}, onEnd: (s) => void finished.push(s), forceFlush: async () => {}, shutdown: async () => {} };
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ "service.name": "strata-test", "host.cores": 2 }),
    spanProcessors: [collect],
    spanLimits: { linkCountLimit: 8192 },
  });
  const tracer = provider.getTracer("strata", "1.2.3");
  const other = provider.getTracer("other");
  const requests = Array.from({ length: 70 }, (_, i) => tracer.startSpan(`request ${i}`, { kind: SpanKind.SERVER, startTime: 1_764_000_000_123.456 + i }, ROOT_CONTEXT));
  const remoteParent = trace.setSpanContext(ROOT_CONTEXT, { traceId: "0af7651916cd43dd8448eb211c80319c", spanId: "b7ad6b7169203331", traceFlags: TraceFlags.SAMPLED, isRemote: true });
  const stage = tracer.startSpan("stage 0", { kind: SpanKind.SERVER, attributes: { "strata.stage.index": 0, "strata.stage.queue_ms": 0.25, ok: true, neg: -5 } }, remoteParent);
  stage.end();
  const step = tracer.startSpan(
    "step ✓ ünïcode",
    {
      kind: SpanKind.CLIENT,
      links: requests.slice(0, 8).map((r) => ({ context: r.spanContext(), attributes: { "link.index": 1 } })),
      attributes: { a: "x".repeat(300), ids: ["cmpl-1", "cmpl-2"], sizes: [1, 2, 3], mixed: [0.5, 1.5], big: 2 ** 40, extra: 1 },
    },
    ROOT_CONTEXT,
  );
  step.addEvent("first_token", { index: 0 }, 1_764_000_000_200);
  step.setStatus({ code: SpanStatusCode.ERROR, message: "stage 1 failed" });
  step.end();
  for (const r of requests) {
    for (const l of requests.slice(0, 64)) r.addLink({ context: l.spanContext() });
    r.end();
  }
  other.startSpan("elsewhere", {}, ROOT_CONTEXT).end();
  return finished;
}

describe("encodeTraceExport", () => {
  it("writes what the OpenTelemetry OTLP serializer writes, field for field", () => {
    const spans = recordedSpans();
    expect(spans.length).toBe(73);
    const ours = fromBinary(ExportTraceServiceRequestSchema, encodeTraceExport(spans));
    const theirs = fromBinary(ExportTraceServiceRequestSchema, ProtobufTraceSerializer.serializeRequest(spans)!);
    expect(toJson(ExportTraceServiceRequestSchema, ours)).toEqual(toJson(ExportTraceServiceRequestSchema, theirs));
    // The cases above really are in it: a long (two-byte length) attribute, links, an event, two scopes.
    const json = toJson(ExportTraceServiceRequestSchema, ours) as { resourceSpans: { scopeSpans: { spans: { name: string; attributes?: unknown[]; links?: unknown[]; events?: unknown[] }[] }[] }[] };
    const all = json.resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans));
    const step = all.find((s) => s.name.startsWith("step"))!;
    expect(step.attributes!.length).toBeGreaterThanOrEqual(4);
    expect(step.links).toHaveLength(8);
    expect(step.events).toHaveLength(1);
    expect(json.resourceSpans[0].scopeSpans).toHaveLength(2);
    expect(all.find((s) => s.name === "request 0")!.links).toHaveLength(64);
  });

  it("the same spans again encode to the same bytes, export after export (a builder keeps no spans between requests)", () => {
    const spans = recordedSpans();
    const first = encodeTraceExport(spans);
    const theirs = ProtobufTraceSerializer.serializeRequest(spans)!;
    // One builder for every request, as the span processor uses it.
    const builder = new TraceExportBuilder();
    for (let i = 0; i < 3; i++) {
      for (const s of spans) builder.add(s);
      expect(builder.spanCount).toBe(spans.length);
      const again = builder.finish();
      expect(builder.spanCount).toBe(0);
      expect(again).toEqual(first);
      expect(toJson(ExportTraceServiceRequestSchema, fromBinary(ExportTraceServiceRequestSchema, again))).toEqual(toJson(ExportTraceServiceRequestSchema, fromBinary(ExportTraceServiceRequestSchema, theirs)));
    }
  });

  it("an empty export is an empty request", () => {
    expect(encodeTraceExport([])).toEqual(new Uint8Array(0));
  });
});
