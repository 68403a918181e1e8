import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { EventBus } from "@strata/events";
import type { DescribeResponse, ForwardRequest, StageError, StageTiming } from "@strata/proto";
import { extractTraceContext, parentSpanContext, registerProcessMetrics, setCounterTotal, type Tracing } from "@strata/telemetry";

/** What a WorkerNode reports about each micro-batch it handled. */
export interface StageObserver {
  /**
   * The stage computed the batch and sent it on; `timing` is the entry it appended. `req` is read
   * now only: the worker goes on to reuse it as the next stage's or step's request.
   */
  batchDone(req: ForwardRequest, timing: StageTiming): void;
  batchFailed(req: ForwardRequest, error: StageError, receivedUnixMs: number): void;
}

/** What a stage span and the batch metrics need of a computed batch, taken when it was sent on. */
interface DoneBatch {
  batchId: number;
  traceContext: Record<string, string>;
  tokens: number;
  phase: StepPhase;
  timing: StageTiming;
}

/**
 * A step's phase as the per-step series label it: "decode" when every sequence in it computes
 * one position, "prefill" when any computes a prompt chunk (a mixed step is as slow as its
 * prompt chunks make it). Decode step times are what an output token's latency and a pipeline's
 * steady pace are made of; prefill steps, many times longer, would blur them.
 */
export type StepPhase = "prefill" | "decode";

export function stepPhase(seqs: readonly { numTokens: number }[]): StepPhase {
  return seqs.every((c) => c.numTokens === 1) ? "decode" : "prefill";
}

// How long stage spans wait to be built together: well under the span processor's export delay.
const SPAN_BATCH_MS = 100;

const SECONDS_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/**
 * A worker's Prometheus registry and its stage spans. Each stage span is a child of the
 * coordinator's step span (the context travels in ForwardRequest.trace_context and every stage
 * passes the same one on), so a step shows one child per stage it crossed.
 */
export class StageTelemetry implements StageObserver {
  readonly registry = new Registry();
  private readonly batches: Counter<"stage" | "phase">;
  private readonly batchErrors: Counter<"stage">;
  private readonly tokens: Counter<"stage" | "phase">;
  private readonly hiddenBytes: Counter<"stage">;
  private readonly computeSeconds: Histogram<"stage" | "phase">;
  private readonly queueSeconds: Histogram<"stage" | "phase">;
  private readonly pending: DoneBatch[] = [];
  // Batches whose stage spans are still to be built (see recordSpans).
  private readonly unspanned: DoneBatch[] = [];
  private spanFlush: NodeJS.Timeout | undefined;

  constructor(
    workerId: string,
    private readonly describe: () => DescribeResponse,
    private readonly tracing: Tracing,
    events?: EventBus,
  ) {
    const registers = [this.registry];
    // Spans still to be built go out with a flush or at shutdown.
    tracing.beforeFlush(() => {
      this.recordPending();
      this.recordSpans();
    });
    this.registry.setDefaultLabels({ worker_id: workerId });
    registerProcessMetrics(this.registry);
    this.batches = new Counter({ name: "strata_stage_batches_total", help: "Micro-batches this stage computed and sent on", labelNames: ["stage", "phase"], registers });
    this.batchErrors = new Counter({ name: "strata_stage_batch_errors_total", help: "Micro-batches this stage rejected", labelNames: ["stage"], registers });
    this.tokens = new Counter({ name: "strata_stage_tokens_total", help: "Token positions this stage computed", labelNames: ["stage", "phase"], registers });
    this.hiddenBytes = new Counter({ name: "strata_stage_hidden_state_sent_bytes_total", help: "Bytes of hidden state sent to the next stage", labelNames: ["stage"], registers });
    this.computeSeconds = new Histogram({
      name: "strata_stage_compute_seconds",
      help: "Time from the start of a batch's compute to sending it on",
      labelNames: ["stage", "phase"],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.queueSeconds = new Histogram({
      name: "strata_stage_queue_seconds",
      help: "Time a batch waited on this stage behind earlier batches",
      labelNames: ["stage", "phase"],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    // One describe() per scrape, which every stage series below reads: prom-client collects all
    // of a scrape's metrics within one turn of the event loop.
    let scraped: DescribeResponse | undefined;
    const described = () => {
      if (!scraped) {
        scraped = this.describe();
        setImmediate(() => (scraped = undefined));
      }
      return scraped;
    };
    const kv = () => {
      const d = described();
      return d.loaded && d.kv ? { stage: String(d.stageIndex), kv: d.kv } : undefined;
    };
    const gauge = (name: string, help: string, value: (k: NonNullable<DescribeResponse["kv"]>) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ["stage"],
        registers,
        collect() {
          this.reset();
          const s = kv();
          if (s) this.set({ stage: s.stage }, value(s.kv));
        },
      });
    gauge("strata_kv_blocks_used", "KV blocks referenced by live sequences on this stage", (k) => k.blocksUsed);
    gauge("strata_kv_blocks_free", "KV blocks neither used nor cached on this stage", (k) => k.blocksFree);
    gauge("strata_kv_blocks_cached", "KV blocks no live sequence here references that still hold a whole block of KV (prefix-hit reusable)", (k) => k.blocksCached);
    gauge("strata_kv_blocks_total", "KV blocks this stage holds", (k) => k.blocksTotal);
    gauge("strata_kv_usage_ratio", "Fraction of this stage's KV blocks in use (0 to 1)", (k) => (k.blocksTotal > 0 ? k.blocksUsed / k.blocksTotal : 0));
    gauge("strata_kv_sequences", "Sequences holding KV on this stage", (k) => k.sequences);
    const kvCounter = (name: string, help: string, value: (k: NonNullable<DescribeResponse["kv"]>) => bigint) =>
      new Counter({
        name,
        help,
        labelNames: ["stage"],
        registers,
        collect() {
          const st = kv();
          if (st) setCounterTotal(this, Number(value(st.kv)), { stage: st.stage });
        },
      });
    kvCounter("strata_stage_prefix_queries_total", "New sequences this stage admitted", (k) => k.prefixQueries);
    kvCounter("strata_stage_prefix_hits_total", "New sequences whose first chunk started past position 0 (their prefix's KV was here)", (k) => k.prefixHits);
    kvCounter("strata_stage_prefix_hit_tokens_total", "Positions prefix hits did not recompute on this stage", (k) => k.prefixHitTokens);
    kvCounter("strata_stage_preemptions_total", "Sequences this stage freed for a preemption", (k) => k.preemptions);
    new Gauge({
      name: "strata_lora_adapters_resident",
      help: "LoRA adapters loaded on this stage",
      labelNames: ["stage"],
      registers,
      collect() {
        this.reset();
        const d = described();
        if (d.loaded) this.set({ stage: String(d.stageIndex) }, d.adapters.length);
      },
    });
    if (events) {
      const lag = new Histogram({
        name: "strata_nats_event_lag_seconds",
        help: "Time from an event's publication (publisher's clock) to its receipt here, by kind",
        labelNames: ["kind"],
        buckets: SECONDS_BUCKETS,
        registers,
      });
      events.onLag = (kind, seconds) => lag.observe({ kind }, seconds);
      new Counter({
        name: "strata_nats_events_received_total",
        help: "NATS events this worker received, by kind and reason",
        labelNames: ["kind", "reason"],
        registers,
        collect() {
          for (const c of events.eventCounts()) if (c.direction === "received") setCounterTotal(this, c.count, { kind: c.kind, reason: c.reason });
        },
      });
    }
  }

  batchDone(req: ForwardRequest, timing: StageTiming): void {
    // Recorded in the event loop's next check phase, all batches done by then together, not
    // inside the step that sends this batch's output on.
    const tokens = req.seqs.reduce((sum, c) => sum + c.numTokens, 0);
    this.pending.push({ batchId: req.batchId, traceContext: req.traceContext, tokens, phase: stepPhase(req.seqs), timing });
    if (this.pending.length === 1) setImmediate(() => this.recordPending());
  }

  private recordPending(): void {
    for (const done of this.pending.splice(0)) this.record(done);
  }

  private record(done: DoneBatch): void {
    const { timing, tokens, phase } = done;
    const stage = String(timing.stageIndex);
    const hiddenBytes = Number(timing.hiddenBytesSent);
    this.batches.inc({ stage, phase });
    this.tokens.inc({ stage, phase }, tokens);
    if (hiddenBytes > 0) this.hiddenBytes.inc({ stage }, hiddenBytes);
    this.computeSeconds.observe({ stage, phase }, (timing.sentUnixMs - timing.startedUnixMs) / 1000);
    this.queueSeconds.observe({ stage, phase }, (timing.startedUnixMs - timing.receivedUnixMs) / 1000);
    // A stage span parents on its step's context; a step sent without one is not traced.
    if (!this.tracing.enabled || !done.traceContext.traceparent) return;
    this.unspanned.push(done);
    this.spanFlush ??= setTimeout(() => this.recordSpans(), SPAN_BATCH_MS).unref();
  }

  /**
   * Builds the stage spans of the batches done since the last call. Built one at a time between
   * steps, a span cost ~3x as much (~115 vs ~40 us each, measured here at 16 streams): the SDK's
   * code ran cold every time.
   */
  private recordSpans(): void {
    clearTimeout(this.spanFlush);
    this.spanFlush = undefined;
    for (const done of this.unspanned.splice(0)) this.recordSpan(done);
  }

  // Only what the step span (batch composition, request ids) and the resource (worker id) do not already say.
  private recordSpan({ batchId, traceContext, timing, tokens }: DoneBatch): void {
    this.tracing.recordSpan({
      name: `stage ${timing.stageIndex}`,
      kind: SpanKind.SERVER,
      parent: parentSpanContext(traceContext),
      startUnixMs: timing.receivedUnixMs,
      endUnixMs: timing.sentUnixMs,
      attributes: {
        "strata.stage.index": timing.stageIndex,
        "strata.batch.id": batchId,
        "strata.step.tokens": tokens,
        "strata.stage.queue_ms": timing.startedUnixMs - timing.receivedUnixMs,
        "strata.kv.blocks_used": timing.kvBlocksUsed,
        "strata.hidden_state.bytes_sent": Number(timing.hiddenBytesSent),
      },
    });
  }

  batchFailed(req: ForwardRequest, error: StageError, receivedUnixMs: number): void {
    this.batchErrors.inc({ stage: String(error.stageIndex) });
    if (!this.tracing.enabled) return;
    const span = this.tracing.tracer.startSpan(
      `stage ${error.stageIndex}`,
      { kind: SpanKind.SERVER, startTime: receivedUnixMs, attributes: { "strata.batch.id": req.batchId, "strata.stage.index": error.stageIndex } },
      extractTraceContext(req.traceContext),
    );
    span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
    span.end();
  }
}
