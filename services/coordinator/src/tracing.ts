import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, type Attributes, type Link, type Span, type SpanContext } from "@opentelemetry/api";
import type { ResultsResponse, SequenceChunk } from "@strata/proto";
import { injectTraceContext, wallClockMs, type Tracing } from "@strata/telemetry";
import type { GenerateRequest } from "./engine.ts";
import type { CoordinatorMetrics } from "./metrics.ts";
import type { LoopedBack, PipelineObserver, StepObservation } from "./pipeline-client.ts";
import { TraceLog, type StageTimingRecord, type StepRecord } from "./trace-view.ts";

/** Where the telemetry finds the request behind a stage-side sequence id (ids change on preemption). */
export interface EngineRequestSource {
  requestOf(seqId: number): GenerateRequest | undefined;
}

export interface RequestInfo {
  requestId: string;
  operation: "completion" | "chat";
  model: string;
  promptTokens: number;
  maxTokens: number;
  n: number;
  stream: boolean;
}

export type RequestOutcome = "stop" | "length" | "abort" | "error";

interface ChoiceTiming {
  firstTokenMs?: number;
  lastTokenMs?: number;
  tokens: number;
}

/** A finished (or failed) step whose span is yet to be built. */
interface UnspannedStep {
  record: StepRecord;
  links: Link[];
  adapterIds: string[];
}

// How long step spans wait to be built together: well under the span processor's export delay.
const STEP_SPAN_BATCH_MS = 100;

/**
 * One API request: a root span (its own trace), its record in the coordinator's ring, and its
 * latency metrics. Steps link to it and it links back to every step it took part in.
 */
export class RequestTrace {
  readonly span: Span | undefined;
  private readonly choices: ChoiceTiming[] = [];
  // The steps this request took part in, linked from its span when it ends.
  private readonly stepLinks: Link[] = [];
  private finished = false;

  constructor(
    private readonly telemetry: CoordinatorTelemetry,
    readonly info: RequestInfo,
    readonly startUnixMs: number,
  ) {
    const tracing = telemetry.tracing;
    if (tracing.enabled && telemetry.drawSample()) {
      this.span = tracing.tracer.startSpan(
        "request",
        {
          kind: SpanKind.SERVER,
          startTime: startUnixMs,
          attributes: {
            "strata.request.id": info.requestId,
            "strata.request.operation": info.operation,
            "strata.request.n": info.n,
            "strata.request.stream": info.stream,
            "gen_ai.request.model": info.model,
            "gen_ai.request.max_tokens": info.maxTokens,
            "gen_ai.usage.input_tokens": info.promptTokens,
          },
        },
        ROOT_CONTEXT,
      );
    }
    const spanContext = this.span?.spanContext();
    telemetry.log.addRequest({
      requestId: info.requestId,
      traceId: spanContext?.traceId,
      spanId: spanContext?.spanId,
      startUnixMs,
      promptTokens: info.promptTokens,
      completionTokens: 0,
    });
  }

  /** Marks an engine request as choice `index` of this API request, so the steps that carry it find it. */
  bind(req: GenerateRequest, index: number): GenerateRequest {
    this.choices[index] = { tokens: 0 };
    this.telemetry.bind(req, this);
    return req;
  }

  /** A step carried this request: its span links to the step's. */
  tookPartIn(step: SpanContext): void {
    if (this.span && !this.finished) this.stepLinks.push({ context: step });
  }

  tokenEmitted(index: number): void {
    const now = wallClockMs();
    const choice = this.choices[index];
    choice.tokens++;
    choice.lastTokenMs = now;
    if (choice.firstTokenMs === undefined) choice.firstTokenMs = now;
    const record = this.telemetry.log.request(this.info.requestId);
    if (record) {
      record.completionTokens++;
      if (record.firstTokenUnixMs === undefined) {
        record.firstTokenUnixMs = now;
        this.telemetry.metrics.timeToFirstToken.observe((now - this.startUnixMs) / 1000);
        this.span?.addEvent("first_token", now);
      }
    }
    this.telemetry.metrics.generationTokens.inc();
  }

  finish(outcome: RequestOutcome, error?: Error): void {
    if (this.finished) return;
    this.finished = true;
    const now = wallClockMs();
    const metrics = this.telemetry.metrics;
    const completionTokens = this.choices.reduce((sum, c) => sum + c.tokens, 0);
    metrics.requests.inc({ finish_reason: outcome });
    metrics.promptTokens.inc(this.info.promptTokens);
    metrics.e2eLatency.observe((now - this.startUnixMs) / 1000);
    for (const c of this.choices) {
      if (c && c.tokens > 1) metrics.timePerOutputToken.observe((c.lastTokenMs! - c.firstTokenMs!) / 1000 / (c.tokens - 1));
    }
    const record = this.telemetry.log.request(this.info.requestId);
    if (record) {
      record.endUnixMs = now;
      record.finishReason = outcome;
    }
    if (this.span) {
      this.span.addLinks(this.stepLinks);
      this.span.setAttribute("gen_ai.usage.output_tokens", completionTokens);
      this.span.setAttribute("strata.request.finish_reason", outcome);
      if (error) this.span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
      this.span.end(now);
    }
  }
}

/**
 * The coordinator's side of observability for the data path: each micro-batch becomes a step
 * span (a root span of its own trace, linked to the request spans of its batch; the stages' spans
 * are its children via ForwardRequest.trace_context), a record in the TraceLog ring, and step and
 * per-hop latency metrics. Tracing off costs one branch per step.
 */
export class CoordinatorTelemetry implements PipelineObserver {
  readonly log: TraceLog;
  private readonly traces = new WeakMap<GenerateRequest, RequestTrace>();
  private stepCounter = 0;
  private ratio = 1;
  // Steps whose spans are still to be built (see recordStepSpans).
  private readonly unspannedSteps: UnspannedStep[] = [];
  private stepSpanFlush: NodeJS.Timeout | undefined;
  private readonly hopHistograms = new Map<string, { observe(seconds: number): void }>();
  engine: EngineRequestSource | undefined;

  constructor(
    readonly tracing: Tracing,
    readonly metrics: CoordinatorMetrics,
    opts: { stepCapacity?: number; requestCapacity?: number } = {},
  ) {
    this.log = new TraceLog(opts.stepCapacity, opts.requestCapacity);
    tracing.beforeFlush(() => this.recordStepSpans());
  }

  /**
   * Head sampling: the fraction of requests traced (default 1, all). A step is traced when a
   * request in it is (or, carrying none, by its own draw), and its stages follow it.
   */
  get sampleRatio(): number {
    return this.ratio;
  }

  set sampleRatio(ratio: number) {
    if (!(ratio >= 0 && ratio <= 1)) throw new RangeError(`trace sample ratio must be between 0 and 1, got ${ratio}`);
    this.ratio = ratio;
  }

  /** Whether the next request (or step of no request) is traced. */
  drawSample(): boolean {
    return this.ratio >= 1 || (this.ratio > 0 && Math.random() < this.ratio);
  }

  startRequest(info: RequestInfo): RequestTrace {
    return new RequestTrace(this, info, wallClockMs());
  }

  bind(req: GenerateRequest, trace: RequestTrace): void {
    this.traces.set(req, trace);
  }

  reserveRunTraceparent(): string {
    if (!this.tracing.enabled) return "";
    return injectTraceContext({ ...this.tracing.reserveRootSpanIds(), traceFlags: TraceFlags.SAMPLED }).traceparent ?? "";
  }

  stepStarted(batchId: number, seqs: readonly SequenceChunk[], loopedBack?: LoopedBack & { traceparent?: string }): StepObservation {
    const sentUnixMs = loopedBack?.sentUnixMs ?? wallClockMs();
    const step = ++this.stepCounter;
    const generateRequests = seqs.map((c) => this.engine?.requestOf(c.seqId));
    const requests: Array<RequestTrace | undefined> = generateRequests.map((req) => (req ? this.traces.get(req) : undefined));
    let prefillTokens = 0;
    let decodeTokens = 0;
    seqs.forEach((c, i) => {
      // A position past the prompt, one token: a decode (a preempted sequence's recompute is a prefill).
      const promptTokens = generateRequests[i]?.promptIds.length ?? 0;
      if (c.numTokens === 1 && c.startPosition >= promptTokens && promptTokens > 0) decodeTokens++;
      else prefillTokens += c.numTokens;
    });
    const unique = [...new Set(requests.filter((r): r is RequestTrace => r !== undefined))];
    const record: StepRecord = {
      step,
      batchId,
      sentUnixMs,
      seqIds: seqs.map((c) => c.seqId),
      requestIds: unique.map((r) => r.info.requestId),
      tokens: prefillTokens + decodeTokens,
      prefillTokens,
      decodeTokens,
      stages: [],
    };
    let traced: UnspannedStep | undefined;
    let traceContext: Record<string, string> | undefined;
    // A decode run's later step is traced when its run's first was (it then carries ids reserved for it).
    const sampled = this.tracing.enabled && (loopedBack ? loopedBack.traceparent !== undefined : unique.length > 0 ? unique.some((r) => r.span) : this.drawSample());
    if (sampled) {
      // The span itself is built later, in a batch (see recordStepSpans); its ids are fixed now,
      // reserved by a decode run for its later steps (whose stages already parented on them).
      const reserved = loopedBack?.traceparent?.split("-");
      const ids = reserved ? { traceId: reserved[1], spanId: reserved[2] } : this.tracing.reserveRootSpanIds();
      record.traceId = ids.traceId;
      record.spanId = ids.spanId;
      const context: SpanContext = { ...ids, traceFlags: TraceFlags.SAMPLED };
      traceContext = injectTraceContext(context);
      const linked = unique.filter((r) => r.span !== undefined);
      for (const r of linked) r.tookPartIn(context);
      traced = {
        record,
        // The linked span is the request span; its id is already in strata.batch.request_ids.
        links: linked.map((r) => ({ context: r.span!.spanContext() })),
        adapterIds: [...new Set(seqs.map((c) => c.adapter).filter((a) => a !== ""))],
      };
    }
    this.log.addStep(record);
    return new ObservedStep(this, record, traced, traceContext, loopedBack ? String(loopedBack.fromStage) : "coordinator");
  }

  /** @internal (ObservedStep) */
  queueStepSpan(step: UnspannedStep): void {
    this.unspannedSteps.push(step);
    this.stepSpanFlush ??= setTimeout(() => this.recordStepSpans(), STEP_SPAN_BATCH_MS).unref();
  }

  /**
   * Records the spans of the steps finished since the last call, from their records. Made one at
   * a time through the tracer as each step came back, they cost the coordinator's event loop
   * ~30 us per generated token at 16 streams; made together and handed to the span processor
   * directly, the coordinator's whole tracing cost (exports included) measured ~12-16 us.
   */
  private recordStepSpans(): void {
    clearTimeout(this.stepSpanFlush);
    this.stepSpanFlush = undefined;
    for (const { record, links, adapterIds } of this.unspannedSteps.splice(0)) {
      const attributes: Attributes = {
        "strata.step": record.step,
        "strata.batch.id": record.batchId,
        "strata.batch.size": record.seqIds.length,
        "strata.batch.request_ids": record.requestIds,
        "strata.step.tokens": record.tokens,
        "strata.step.prefill_tokens": record.prefillTokens,
        "strata.step.decode_tokens": record.decodeTokens,
        "strata.batch.adapter_ids": adapterIds,
      };
      if (record.error === undefined) {
        attributes["strata.stage.kv_blocks_used"] = record.stages.map((t) => t.kvBlocksUsed);
        attributes["strata.stage.hidden_bytes_sent"] = record.stages.map((t) => t.hiddenBytesSent);
        attributes["strata.stage.worker_ids"] = record.stages.map((t) => t.workerId);
      }
      this.tracing.recordSpan({
        name: "step",
        kind: SpanKind.CLIENT,
        ids: { traceId: record.traceId!, spanId: record.spanId! },
        startUnixMs: record.sentUnixMs,
        endUnixMs: record.receivedUnixMs!,
        attributes,
        links,
        error: record.error,
      });
    }
  }

  /** @internal (ObservedStep). `sender`: where the step entered stage 0 from (the coordinator, or the last stage of a decode run). */
  stepFinished(record: StepRecord, result: ResultsResponse, traced: UnspannedStep | undefined, sender: string): void {
    const receivedUnixMs = wallClockMs();
    record.receivedUnixMs = receivedUnixMs;
    record.stages = result.stageTimings.map(
      (t): StageTimingRecord => ({
        stageIndex: t.stageIndex,
        workerId: t.workerId,
        receivedUnixMs: t.receivedUnixMs,
        startedUnixMs: t.startedUnixMs,
        sentUnixMs: t.sentUnixMs,
        kvBlocksUsed: t.kvBlocksUsed,
        kvBlocksTotal: t.kvBlocksTotal,
        hiddenBytesSent: Number(t.hiddenBytesSent),
      }),
    );
    const m = this.metrics;
    m.stepDuration.observe((receivedUnixMs - record.sentUnixMs) / 1000);
    m.stepTokens.observe(record.tokens);
    let previous = sender;
    let at = record.sentUnixMs;
    for (const t of record.stages) {
      this.hop(previous, String(t.stageIndex)).observe(Math.max(0, t.receivedUnixMs - at) / 1000);
      previous = String(t.stageIndex);
      at = t.sentUnixMs;
    }
    if (record.stages.length > 0) this.hop(previous, "coordinator").observe(Math.max(0, receivedUnixMs - at) / 1000);
    if (traced) this.queueStepSpan(traced);
  }

  /** The hop-latency histogram of one hop, bound to its label once (a labelled observe builds and checks a label object each time). */
  private hop(from: string, to: string): { observe(seconds: number): void } {
    const key = `${from}->${to}`;
    let child = this.hopHistograms.get(key);
    if (!child) this.hopHistograms.set(key, (child = this.metrics.hopLatency.labels({ hop: key })));
    return child;
  }
}

/** A step in flight: an object rather than closures, since one is made for every step. */
class ObservedStep implements StepObservation {
  constructor(
    private readonly telemetry: CoordinatorTelemetry,
    private readonly record: StepRecord,
    private readonly traced: UnspannedStep | undefined,
    readonly traceContext: Record<string, string> | undefined,
    private readonly sender: string,
  ) {}

  finished(result: ResultsResponse): void {
    this.telemetry.stepFinished(this.record, result, this.traced, this.sender);
  }

  failed(error: Error): void {
    this.record.receivedUnixMs = wallClockMs();
    this.record.error = error.message;
    if (this.traced) this.telemetry.queueStepSpan(this.traced);
  }
}
