// The public surface of @strata/telemetry: OpenTelemetry tracing (off unless an OTLP endpoint is
// given), W3C trace-context helpers and the Prometheus scrape endpoint, shared by coordinator and workers.
export { TRACING_OFF, extractTraceContext, parentSpanContext, type FinishedSpan, injectTraceContext, runStepTraceparent, otlpTracesUrlFromEnv, startTracing, traceSampleRatioFromEnv, wallClockMs, type SpanIds, type Tracing, type TracingOptions } from "./tracing.ts";
export { registerProcessMetrics, serveMetrics, setCounterTotal, type MetricsServer } from "./metrics.ts";
