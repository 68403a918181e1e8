import { ROOT_CONTEXT, TraceFlags, defaultTextMapSetter, trace, type SpanContext } from "@opentelemetry/api";
import { W3CTraceContextPropagator, TraceState } from "@opentelemetry/core";
import { describe, expect, it } from "vitest";
import { injectTraceContext, parentSpanContext } from "../src/index.ts";

// injectTraceContext formats the W3C headers itself (the coordinator makes one per traced step):
// it must write exactly what OpenTelemetry's W3C propagator writes, and read back as the same parent.
const viaPropagator = (ctx: SpanContext): Record<string, string> => {
  const carrier: Record<string, string> = {};
  new W3CTraceContextPropagator().inject(trace.setSpanContext(ROOT_CONTEXT, ctx), carrier, defaultTextMapSetter);
  return carrier;
};

const ids = { traceId: "4bf92f3577b34da6a3ce929d0e0e4736", spanId: "00f067aa0ba902b7" };

describe("injectTraceContext", () => {
  it.each<[string, SpanContext]>([
    ["sampled", { ...ids, traceFlags: TraceFlags.SAMPLED }],
    ["not sampled", { ...ids, traceFlags: TraceFlags.NONE }],
    ["with tracestate", { ...ids, traceFlags: TraceFlags.SAMPLED, traceState: new TraceState("vendor=a1,other=b2") }],
    ["invalid ids", { traceId: "0".repeat(32), spanId: "0".repeat(16), traceFlags: TraceFlags.SAMPLED }],
    ["malformed ids", { traceId: "xyz", spanId: ids.spanId, traceFlags: TraceFlags.SAMPLED }],
  ])("%s: the propagator's headers", (_, ctx) => {
    expect(injectTraceContext(ctx)).toEqual(viaPropagator(ctx));
  });

  it("reads back as the same remote parent", () => {
    const parent = parentSpanContext(injectTraceContext({ ...ids, traceFlags: TraceFlags.SAMPLED }));
    expect(parent).toMatchObject({ ...ids, traceFlags: TraceFlags.SAMPLED, isRemote: true });
  });
});
