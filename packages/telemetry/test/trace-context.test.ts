import { ROOT_CONTEXT, TraceFlags, defaultTextMapSetter, trace, type SpanContext } from "@opentelemetry/api";
import { W3CTraceContextPropagator, TraceState } from "@opentelemetry/core";
import { describe, expect, it } from "vitest";
import { injectTraceContext, parentSpanContext, runStepTraceparent } from "../src/index.ts";

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

describe("runStepTraceparent", () => {
  const first = `00-${ids.traceId}-${ids.spanId}-01`;

  it("gives step 1 the run's own context and every later step a distinct, valid, sampled one", () => {
    expect(runStepTraceparent(first, 1)).toBe(first);
    const steps = Array.from({ length: 64 }, (_, i) => parentSpanContext({ traceparent: runStepTraceparent(first, i + 1) })!);
    expect(new Set(steps.map((s) => s.traceId)).size).toBe(64);
    expect(new Set(steps.map((s) => s.spanId)).size).toBe(64);
    for (const s of steps) {
      expect(s.traceFlags).toBe(TraceFlags.SAMPLED);
      // Only the first 8 hex digits move; the rest of each id is the run's.
      expect(s.traceId.slice(8)).toBe(ids.traceId.slice(8));
      expect(s.spanId.slice(8)).toBe(ids.spanId.slice(8));
    }
    expect(steps[2]).toMatchObject({ traceId: "4bf92f3777b34da6a3ce929d0e0e4736", spanId: "00f067ac0ba902b7" });
  });

  it("wraps around at 2^32 and leaves malformed input unparseable rather than throwing", () => {
    const high = `00-ffffffff${ids.traceId.slice(8)}-fffffffe${ids.spanId.slice(8)}-01`;
    expect(runStepTraceparent(high, 3)).toBe(`00-00000001${ids.traceId.slice(8)}-00000000${ids.spanId.slice(8)}-01`);
    expect(parentSpanContext({ traceparent: runStepTraceparent("garbage", 5) })).toBeUndefined();
  });
});
