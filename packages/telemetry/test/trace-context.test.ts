import { ROOT_CONTEXT, TraceFlags, defaultTextMapGetter, defaultTextMapSetter, trace, type SpanContext } from "@opentelemetry/api";
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

describe("parentSpanContext", () => {
  const viaPropagatorRead = (carrier: Record<string, string>): SpanContext | undefined =>
    trace.getSpanContext(new W3CTraceContextPropagator().extract(ROOT_CONTEXT, carrier, defaultTextMapGetter));
  const valid = `00-${ids.traceId}-${ids.spanId}-01`;

  // What the W3C propagator accepts and refuses, read here without it: every case must agree.
  it.each<[string, string]>([
    ["valid, sampled", valid],
    ["valid, not sampled", `00-${ids.traceId}-${ids.spanId}-00`],
    ["other flags", `00-${ids.traceId}-${ids.spanId}-ff`],
    ["one space around", ` ${valid} `],
    ["a tab before", `\t${valid}`],
    ["two spaces before", `  ${valid}`],
    ["upper-case trace id", `00-${ids.traceId.toUpperCase()}-${ids.spanId}-01`],
    ["upper-case flags", `00-${ids.traceId}-${ids.spanId}-0A`],
    ["all-zero trace id", `00-${"0".repeat(32)}-${ids.spanId}-01`],
    ["all-zero span id", `00-${ids.traceId}-${"0".repeat(16)}-01`],
    ["version ff", `ff-${ids.traceId}-${ids.spanId}-01`],
    ["version 00 with more fields", `${valid}-extra`],
    ["a later version with more fields", `cc-${ids.traceId}-${ids.spanId}-01-extra`],
    ["a later version, no separator after flags", `cc-${ids.traceId}-${ids.spanId}-01extra`],
    ["short trace id", `00-${ids.traceId.slice(1)}-${ids.spanId}-01`],
    ["non-hex span id", `00-${ids.traceId}-${ids.spanId.slice(1)}g-01`],
    ["wrong separators", valid.replaceAll("-", "_")],
    ["empty", ""],
  ])("%s: as the propagator reads it", (_, traceparent) => {
    expect(parentSpanContext({ traceparent })).toEqual(viaPropagatorRead({ traceparent }));
  });

  it("with a tracestate, through the propagator (the state comes with the parent)", () => {
    const parent = parentSpanContext({ traceparent: valid, tracestate: "vendor=a1" });
    expect(parent).toMatchObject({ ...ids, traceFlags: TraceFlags.SAMPLED, isRemote: true });
    expect(parent?.traceState?.get("vendor")).toBe("a1");
  });

  it("nothing to read: no parent", () => {
    expect(parentSpanContext({})).toBeUndefined();
  });
});
