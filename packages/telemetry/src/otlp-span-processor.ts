import { diag, TraceFlags } from "@opentelemetry/api";
import { globalErrorHandler } from "@opentelemetry/core";
import type { ReadableSpan, SpanProcessor } from "@opentelemetry/sdk-trace";
import type { OtlpHttpExporter } from "./otlp-exporter.ts";
import { TraceExportBuilder } from "./otlp-encoder.ts";

export interface OtlpSpanProcessorOptions {
  /** How long an ended span may wait for the request it goes out in (default 250 ms). */
  scheduledDelayMs?: number;
  /** A request goes out as soon as its spans reach this many bytes (default 1 MiB). */
  maxExportBytes?: number;
  /**
   * Spans waiting or in flight, in bytes, beyond which further spans are dropped (default 64 MiB):
   * a collector that stops answering must not grow the service's memory without bound.
   */
  maxQueueBytes?: number;
}

/**
 * A span processor that encodes each span to OTLP protobuf the moment it ends and sends the
 * encoded request when it is old enough or large enough. It replaces the SDK's
 * BatchSpanProcessor + exporter pair, which holds every ended span's object until its batch is
 * exported (up to 250 ms here): at the coordinator's and stages' span rates, those objects survived
 * young-generation collections and made every scavenge copy them, stalls the pipeline felt (see
 * the tracing bench). Held here are bytes, which the collector never scans.
 */
export class OtlpSpanProcessor implements SpanProcessor {
  private readonly pending = new TraceExportBuilder();
  private readonly delayMs: number;
  private readonly maxExportBytes: number;
  private readonly maxQueueBytes: number;
  private timer: NodeJS.Timeout | undefined;
  private bytesInFlight = 0;
  private dropped = 0;
  private stopped = false;

  constructor(
    private readonly exporter: OtlpHttpExporter,
    opts: OtlpSpanProcessorOptions = {},
  ) {
    this.delayMs = opts.scheduledDelayMs ?? 250;
    this.maxExportBytes = opts.maxExportBytes ?? 1024 * 1024;
    this.maxQueueBytes = opts.maxQueueBytes ?? 64 * 1024 * 1024;
  }

  /** Spans dropped so far because maxQueueBytes were waiting or in flight. */
  get droppedSpans(): number {
    return this.dropped;
  }

  onStart(): void {}

  onEnd(span: ReadableSpan): void {
    if (this.stopped || (span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    if (this.pending.byteLength + this.bytesInFlight >= this.maxQueueBytes) {
      if (this.dropped++ === 0) diag.warn(`OTLP: dropping spans, ${this.maxQueueBytes} bytes of them are waiting for the collector`);
      return;
    }
    this.pending.add(span);
    if (this.pending.byteLength >= this.maxExportBytes) void this.sendPending();
    else this.timer ??= setTimeout(() => void this.sendPending(), this.delayMs).unref();
  }

  /** Sends what is waiting; resolves when the collector answered (a failure goes to the global error handler). */
  private sendPending(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.spanCount === 0) return Promise.resolve();
    const body = this.pending.finish();
    this.bytesInFlight += body.length;
    return this.exporter.send(body).then(
      () => void (this.bytesInFlight -= body.length),
      (error: Error) => {
        this.bytesInFlight -= body.length;
        globalErrorHandler(error);
      },
    );
  }

  async forceFlush(): Promise<void> {
    await this.sendPending();
    await this.exporter.forceFlush();
  }

  async shutdown(): Promise<void> {
    if (this.stopped) return;
    await this.forceFlush();
    this.stopped = true;
    await this.exporter.shutdown();
  }
}
