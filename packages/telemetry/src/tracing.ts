import { performance } from "node:perf_hooks";
import {
  ProxyTracerProvider,
  ROOT_CONTEXT,
  defaultTextMapGetter,
  defaultTextMapSetter,
  trace,
  type Context,
  type ContextManager,
  type SpanContext,
  type Tracer,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { BatchSpanProcessor, TracerProvider, type SpanLimits } from "@opentelemetry/sdk-trace";

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

/** One service's tracer. Callers check `enabled` before building attributes, so off is free. */
export interface Tracing {
  readonly enabled: boolean;
  readonly serviceName: string;
  readonly tracer: Tracer;
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
}

const NOOP_TRACER = new ProxyTracerProvider().getTracer("strata-off");

export const TRACING_OFF: Tracing = {
  enabled: false,
  serviceName: "",
  tracer: NOOP_TRACER,
  forceFlush: async () => {},
  shutdown: async () => {},
};

// A step links every request in its batch and a request links every step it took part in; the
// SDK's default of 128 links would cut long generations short.
const SPAN_LIMITS: SpanLimits = { linkCountLimit: 8192, attributeCountLimit: 256, eventCountLimit: 1024 };

// Steps come fast (thousands a second at high batch rates): a deep queue and large export batches
// keep the exporter off the hot path; spans beyond the queue are dropped, never waited for.
function spanProcessor(url: string): BatchSpanProcessor {
  return new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url }), maxQueueSize: 65_536, maxExportBatchSize: 4096, scheduledDelayMillis: 250 });
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

export function startTracing(opts: TracingOptions): Tracing {
  if (!opts.tracesUrl) return TRACING_OFF;
  const processor = spanProcessor(opts.tracesUrl);
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
    return {
      enabled: true,
      serviceName: opts.serviceName,
      tracer: trace.getTracer("strata"),
      forceFlush: () => processor.forceFlush(),
      shutdown: () => sdk.shutdown(),
    };
  }
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ "service.name": opts.serviceName }),
    spanLimits: SPAN_LIMITS,
    spanProcessors: [processor],
  });
  return {
    enabled: true,
    serviceName: opts.serviceName,
    tracer: provider.getTracer("strata"),
    forceFlush: () => provider.forceFlush(),
    shutdown: () => provider.shutdown(),
  };
}

// W3C trace context through the propagator itself rather than the global `propagation` API, so it
// works the same with a private provider (nothing registered globally) and with the NodeSDK one.
const propagator = new W3CTraceContextPropagator();

/** The `traceparent` (and `tracestate`) that make `span` the parent on the other side. */
export function injectTraceContext(spanContext: SpanContext): Record<string, string> {
  const carrier: Record<string, string> = {};
  propagator.inject(trace.setSpanContext(ROOT_CONTEXT, spanContext), carrier, defaultTextMapSetter);
  return carrier;
}

/** The parent context carried in a `trace_context` map (ROOT when it carries none). */
export function extractTraceContext(carrier: Readonly<Record<string, string>>): Context {
  return propagator.extract(ROOT_CONTEXT, carrier, defaultTextMapGetter);
}

/** Wall-clock milliseconds since the Unix epoch with sub-millisecond resolution. */
export function wallClockMs(): number {
  return performance.timeOrigin + performance.now();
}
