import { performance } from "node:perf_hooks";
import {
  INVALID_SPANID,
  INVALID_TRACEID,
  ProxyTracerProvider,
  ROOT_CONTEXT,
  SpanStatusCode,
  TraceFlags,
  type Attributes,
  type HrTime,
  type Link,
  type SpanKind,
  defaultTextMapGetter,
  isSpanContextValid,
  trace,
  type Context,
  type ContextManager,
  type SpanContext,
  type Tracer,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { RandomIdGenerator, TracerProvider, type ReadableSpan, type SpanLimits, type SpanProcessor } from "@opentelemetry/sdk-trace";
import { OtlpHttpExporter, otlpExporterOptionsFromEnv } from "./otlp-exporter.ts";
import { OtlpSpanProcessor } from "./otlp-span-processor.ts";

export interface TracingOptions {
  /** `service.name` of every span this provider exports (strata-coordinator, strata-worker-0, ...). */
  serviceName: string;
  /** Full OTLP/HTTP protobuf traces URL (…/v1/traces). Without one tracing is off and costs nothing. */
  tracesUrl?: string;
  /**
   * Start @opentelemetry/sdk-node and register it as this process's global provider (a service's
   * main). Otherwise the provider is private, so several services in one process (tests, in-process
   * workers) each export under their own service name.
   */
  global?: boolean;
}

/** A span's identity, chosen before the span exists (hex, as in `traceparent`). */
export interface SpanIds {
  traceId: string;
  spanId: string;
}

/** A span that has already happened, described by its record (see Tracing.recordSpan). */
export interface FinishedSpan {
  name: string;
  kind: SpanKind;
  /** The span's own ids (reserved earlier, say); a new span id under `parent`'s trace, or a new trace, when omitted. */
  ids?: SpanIds;
  /** Its parent, often another process's; none makes it a root span. Not sampled: nothing is recorded. */
  parent?: SpanContext;
  startUnixMs: number;
  endUnixMs: number;
  attributes: Attributes;
  links?: Link[];
  /** Ends the span with status ERROR and this message. */
  error?: string;
}

/** One service's tracer. Callers check `enabled` before building attributes, so off is free. */
export interface Tracing {
  readonly enabled: boolean;
  readonly serviceName: string;
  readonly tracer: Tracer;
  /**
   * Ids for root spans recorded later (recordSpan with `ids`): a context to hand out now (another
   * process parents its spans on it) for a span that is built when its work is done.
   */
  reserveRootSpanIds(): SpanIds;
  /**
   * Hands a finished span straight to the span processor, as the SDK's Span does when it ends,
   * without the tracer's per-span machinery (sampler, limits, self-metrics): for the spans
   * Strata builds from its own records, a step's or a stage's, several per generated token.
   */
  recordSpan(span: FinishedSpan): void;
  /**
   * Registers a function run first by every forceFlush and shutdown, for callers that build
   * their spans in batches after the fact: what they hold goes out with the rest.
   */
  beforeFlush(flush: () => void): void;
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
}

const NOOP_TRACER = new ProxyTracerProvider().getTracer("strata-off");

export const TRACING_OFF: Tracing = {
  enabled: false,
  serviceName: "",
  tracer: NOOP_TRACER,
  reserveRootSpanIds: () => ({ traceId: INVALID_TRACEID, spanId: INVALID_SPANID }),
  recordSpan: () => {},
  beforeFlush: () => {},
  forceFlush: async () => {},
  shutdown: async () => {},
};

// A step links every request in its batch and a request links every step it took part in; the
// SDK's default of 128 links would cut long generations short.
const SPAN_LIMITS: SpanLimits = { linkCountLimit: 8192, attributeCountLimit: 256, eventCountLimit: 1024 };

// Steps come fast (thousands a second at high batch rates): spans are encoded as they end and go
// out in large requests (smaller, more frequent exports measured slower here: each costs a
// request of its own); spans beyond the queue are dropped, never waited for.
function spanProcessor(url: string): SpanProcessor {
  return new OtlpSpanProcessor(new OtlpHttpExporter(url, otlpExporterOptionsFromEnv(process.env)), { scheduledDelayMs: 250 });
}

/**
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`
 * (the OTLP exporter's own rule), else undefined.
 */
export function otlpTracesUrlFromEnv(env: NodeJS.ProcessEnv): string | undefined {
  const traces = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (traces) return traces;
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  return base ? `${base.replace(/\/+$/, "")}/v1/traces` : undefined;
}

/**
 * The head-sampling ratio OTEL_TRACES_SAMPLER (and OTEL_TRACES_SAMPLER_ARG) ask for: 1 when unset
 * or always_on, 0 for always_off, the argument (default 1) for traceidratio; the parentbased_
 * forms alike, since Strata's traces start at the coordinator.
 */
export function traceSampleRatioFromEnv(env: NodeJS.ProcessEnv): number {
  const sampler = env.OTEL_TRACES_SAMPLER?.trim().toLowerCase().replace(/^parentbased_/, "") ?? "";
  if (sampler === "" || sampler === "always_on") return 1;
  if (sampler === "always_off") return 0;
  if (sampler !== "traceidratio") throw new Error(`OTEL_TRACES_SAMPLER=${env.OTEL_TRACES_SAMPLER} is not supported (always_on, always_off, traceidratio and their parentbased_ forms are)`);
  const arg = env.OTEL_TRACES_SAMPLER_ARG?.trim();
  const ratio = arg ? Number(arg) : 1;
  if (!(ratio >= 0 && ratio <= 1)) throw new Error(`OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1, got ${arg}`);
  return ratio;
}

export function startTracing(opts: TracingOptions): Tracing {
  if (!opts.tracesUrl) return TRACING_OFF;
  const processor = spanProcessor(opts.tracesUrl);
  const ids = new RandomIdGenerator();
  if (opts.global) {
    const sdk = new NodeSDK({
      serviceName: opts.serviceName,
      spanProcessors: [processor],
      spanLimits: SPAN_LIMITS,
      textMapPropagator: new W3CTraceContextPropagator(),
      // No context manager: Strata passes parent contexts explicitly, and the default one
      // (AsyncLocalStorage over async_hooks on Node 20) taxes every promise in the process.
      // sdk-node documents null as "do not register"; its type does not admit it.
      contextManager: null as unknown as ContextManager,
      // Traces only: no OTLP metrics or logs (metrics are Prometheus, scraped from /metrics).
      metricReaders: [],
      logRecordProcessors: [],
      instrumentations: [],
    });
    sdk.start();
    return enabledTracing(opts.serviceName, trace.getTracer("strata"), ids, processor, () => processor.forceFlush(), () => sdk.shutdown());
  }
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ "service.name": opts.serviceName }),
    spanLimits: SPAN_LIMITS,
    spanProcessors: [processor],
  });
  return enabledTracing(opts.serviceName, provider.getTracer("strata"), ids, processor, () => provider.forceFlush(), () => provider.shutdown());
}

function enabledTracing(
  serviceName: string,
  tracer: Tracer,
  ids: RandomIdGenerator,
  processor: SpanProcessor,
  forceFlush: () => Promise<void>,
  shutdown: () => Promise<void>,
): Tracing {
  // The resource and scope the tracer stamps on its spans (the NodeSDK's detected resource
  // included), read off a span that is never ended, so never exported.
  const probe = tracer.startSpan("resource probe", {}, ROOT_CONTEXT) as unknown as Partial<ReadableSpan>;
  const stamp = { resource: probe.resource!, instrumentationScope: probe.instrumentationScope! };
  const flushHooks: Array<() => void> = [];
  const runHooks = () => {
    for (const hook of flushHooks) hook();
  };
  return {
    enabled: true,
    serviceName,
    tracer,
    reserveRootSpanIds: () => ({ traceId: ids.generateTraceId(), spanId: ids.generateSpanId() }),
    recordSpan: (span) => {
      if (span.parent && (span.parent.traceFlags & TraceFlags.SAMPLED) === 0) return;
      const own = span.ids ?? { traceId: span.parent?.traceId ?? ids.generateTraceId(), spanId: ids.generateSpanId() };
      processor.onEnd(finishedSpan(span, own, stamp));
    },
    beforeFlush: (hook) => void flushHooks.push(hook),
    forceFlush: () => {
      runHooks();
      return forceFlush();
    },
    shutdown: () => {
      runHooks();
      return shutdown();
    },
  };
}

function hrTime(unixMs: number): HrTime {
  const seconds = Math.floor(unixMs / 1000);
  return [seconds, Math.round((unixMs - seconds * 1000) * 1e6)];
}

/** `span` as the SDK's exporters read a span that has ended. */
function finishedSpan(span: FinishedSpan, own: SpanIds, stamp: Pick<ReadableSpan, "resource" | "instrumentationScope">): ReadableSpan {
  const context: SpanContext = { traceId: own.traceId, spanId: own.spanId, traceFlags: TraceFlags.SAMPLED };
  const durationMs = Math.max(0, span.endUnixMs - span.startUnixMs);
  return {
    name: span.name,
    kind: span.kind,
    spanContext: () => context,
    parentSpanContext: span.parent,
    startTime: hrTime(span.startUnixMs),
    endTime: hrTime(span.startUnixMs + durationMs),
    duration: [Math.floor(durationMs / 1000), Math.round((durationMs % 1000) * 1e6)],
    status: span.error === undefined ? { code: SpanStatusCode.UNSET } : { code: SpanStatusCode.ERROR, message: span.error },
    attributes: span.attributes,
    links: span.links ?? [],
    events: [],
    ended: true,
    resource: stamp.resource,
    instrumentationScope: stamp.instrumentationScope,
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  };
}

// W3C trace context through the propagator itself rather than the global `propagation` API, so it
// works the same with a private provider (nothing registered globally) and with the NodeSDK one.
const propagator = new W3CTraceContextPropagator();

/**
 * The `traceparent` (and `tracestate`) that make `span` the parent on the other side: what the
 * W3C propagator writes (nothing for an invalid context), formatted here directly. The coordinator
 * makes one per traced step, and the propagator's way there (a context, a span wrapper, a carrier
 * setter) was ~1/8 of its step bookkeeping under tracing.
 */
export function injectTraceContext(spanContext: SpanContext): Record<string, string> {
  if (!isSpanContextValid(spanContext)) return {};
  const carrier: Record<string, string> = { traceparent: `00-${spanContext.traceId}-${spanContext.spanId}-0${(spanContext.traceFlags || TraceFlags.NONE).toString(16)}` };
  const traceState = spanContext.traceState?.serialize();
  if (traceState) carrier.tracestate = traceState;
  return carrier;
}

/**
 * The traceparent of step `step` (1 or more) of a decode run whose step 1 has `first`: its trace
 * id and span id each with their first 8 hex digits advanced by step - 1 (mod 2^32), the rest of
 * both ids as random as `first`'s. The coordinator and every stage derive each step's context from
 * the one the run carries: a run of 32 steps reserved, sent and parsed 31 traceparents before.
 * Each step stays a trace of its own. Malformed input gives a malformed (so unparented) result.
 */
export function runStepTraceparent(first: string, step: number): string {
  if (step === 1) return first;
  const advance = (hex8: string) => ((parseInt(hex8, 16) + step - 1) >>> 0).toString(16).padStart(8, "0");
  // "00-" trace id (32 hex) "-" span id (16 hex) "-" flags
  return `${first.slice(0, 3)}${advance(first.slice(3, 11))}${first.slice(11, 36)}${advance(first.slice(36, 44))}${first.slice(44)}`;
}

/** The parent context carried in a `trace_context` map (ROOT when it carries none). */
export function extractTraceContext(carrier: Readonly<Record<string, string>>): Context {
  return propagator.extract(ROOT_CONTEXT, carrier, defaultTextMapGetter);
}

/**
 * The (remote) parent span a `trace_context` map carries, if it carries one. A bare `traceparent`
 * (every stage span's parent) is read here by the W3C propagator's rules, without its regex and
 * context objects; one with a `tracestate` goes through the propagator.
 */
export function parentSpanContext(carrier: Readonly<Record<string, string>>): SpanContext | undefined {
  const traceparent = carrier.traceparent;
  if (traceparent === undefined || carrier.tracestate !== undefined) return trace.getSpanContext(extractTraceContext(carrier));
  return parseTraceparent(traceparent);
}

// "00-" + 32 + "-" + 16 + "-" + 2: a version-00 traceparent's exact length.
const TRACEPARENT_V00_LENGTH = 55;
const WHITESPACE = /\s/;

/**
 * A W3C traceparent as W3CTraceContextPropagator reads it: at most one whitespace character at
 * either end, version two lower-case hex digits but not "ff", ids lower-case hex and not all
 * zeros, flags two hex digits; later versions may carry more fields after a "-", version 00 none.
 */
function parseTraceparent(value: string): SpanContext | undefined {
  let header = value;
  if (header.length > 0 && WHITESPACE.test(header[0])) header = header.slice(1);
  if (header.length > 0 && WHITESPACE.test(header[header.length - 1])) header = header.slice(0, -1);
  if (header.length < TRACEPARENT_V00_LENGTH || header[2] !== "-" || header[35] !== "-" || header[52] !== "-") return undefined;
  const version = header.slice(0, 2);
  if (version === "ff" || !isLowerHex(version)) return undefined;
  if (header.length > TRACEPARENT_V00_LENGTH && (version === "00" || header[TRACEPARENT_V00_LENGTH] !== "-")) return undefined;
  const traceId = header.slice(3, 35);
  const spanId = header.slice(36, 52);
  const flags = header.slice(53, 55);
  if (!isLowerHex(traceId) || !isLowerHex(spanId) || !isLowerHex(flags) || traceId === INVALID_TRACEID || spanId === INVALID_SPANID) return undefined;
  return { traceId, spanId, traceFlags: parseInt(flags, 16), isRemote: true };
}

function isLowerHex(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false;
  }
  return true;
}

/** Wall-clock milliseconds since the Unix epoch with sub-millisecond resolution. */
export function wallClockMs(): number {
  return performance.timeOrigin + performance.now();
}
