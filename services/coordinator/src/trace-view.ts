import type { StageTiming } from "@strata/proto";

/** One stage's part in a step, as the stage reported it (wall-clock Unix ms); byte counts as numbers. */
export type StageTimingRecord = Omit<StageTiming, "$typeName" | "$unknown" | "hiddenBytesSent"> & { hiddenBytesSent: number };

/** One micro-batch as the coordinator saw it. */
export interface StepRecord {
  /** The coordinator's running step number (batch ids wrap; this does not). */
  step: number;
  batchId: number;
  traceId?: string;
  spanId?: string;
  sentUnixMs: number;
  receivedUnixMs?: number;
  error?: string;
  seqIds: number[];
  requestIds: string[];
  tokens: number;
  prefillTokens: number;
  decodeTokens: number;
  stages: StageTimingRecord[];
}

export interface RequestRecord {
  requestId: string;
  traceId?: string;
  spanId?: string;
  startUnixMs: number;
  firstTokenUnixMs?: number;
  endUnixMs?: number;
  promptTokens: number;
  completionTokens: number;
  finishReason?: string;
}

/**
 * The coordinator's memory of recent steps and requests: bounded rings, so `strata trace` can
 * draw a request without Jaeger and without the process growing.
 */
export class TraceLog {
  private readonly steps: StepRecord[] = [];
  private nextStep = 0;
  private readonly requests = new Map<string, RequestRecord>();

  constructor(
    readonly stepCapacity = 8192,
    readonly requestCapacity = 1024,
  ) {}

  addStep(record: StepRecord): void {
    this.steps[this.nextStep % this.stepCapacity] = record;
    this.nextStep++;
  }

  addRequest(record: RequestRecord): void {
    this.requests.set(record.requestId, record);
    // Maps iterate in insertion order: the first key is the oldest.
    if (this.requests.size > this.requestCapacity) this.requests.delete(this.requests.keys().next().value!);
  }

  request(requestId: string): RequestRecord | undefined {
    return this.requests.get(requestId);
  }

  recentRequests(limit = 50): RequestRecord[] {
    return [...this.requests.values()].slice(-limit).reverse();
  }

  /** Steps still in the ring that served `requestId`, oldest first. */
  stepsOf(requestId: string): StepRecord[] {
    return this.allSteps().filter((s) => s.requestIds.includes(requestId));
  }

  allSteps(): StepRecord[] {
    if (this.nextStep <= this.stepCapacity) return this.steps.slice(0, this.nextStep);
    const at = this.nextStep % this.stepCapacity;
    return [...this.steps.slice(at), ...this.steps.slice(0, at)];
  }
}

// Segments of a step, in time order: the hop into stage k, its queue wait, its compute, …, the hop back.
interface Segment {
  from: number;
  to: number;
  mark: string;
  label: string;
}

function segmentsOf(step: StepRecord): Segment[] {
  const segments: Segment[] = [];
  let at = step.sentUnixMs;
  let previous = "coordinator";
  for (const s of step.stages) {
    segments.push({ from: at, to: s.receivedUnixMs, mark: previous === "coordinator" ? ">" : "-", label: `hop ${previous}->${s.stageIndex}` });
    segments.push({ from: s.receivedUnixMs, to: s.startedUnixMs, mark: ".", label: `stage ${s.stageIndex} queued` });
    segments.push({ from: s.startedUnixMs, to: s.sentUnixMs, mark: String(s.stageIndex % 10), label: `stage ${s.stageIndex} compute` });
    at = s.sentUnixMs;
    previous = String(s.stageIndex);
  }
  if (step.receivedUnixMs !== undefined) segments.push({ from: at, to: step.receivedUnixMs, mark: "<", label: `hop ${previous}->coordinator` });
  return segments;
}

function bar(step: StepRecord, width: number): string {
  const end = step.receivedUnixMs ?? step.stages.at(-1)?.sentUnixMs ?? step.sentUnixMs;
  const duration = Math.max(end - step.sentUnixMs, 1e-6);
  const segments = segmentsOf(step);
  let out = "";
  for (let col = 0; col < width; col++) {
    const t = step.sentUnixMs + ((col + 0.5) / width) * duration;
    out += segments.find((s) => t >= s.from && t < s.to)?.mark ?? " ";
  }
  return out;
}

const ms = (v: number) => v.toFixed(2);

/**
 * One request's steps as text: a row per step, placed by its offset from the request's arrival,
 * with a bar that splits the step's own round trip into hops and per-stage queue and compute, then
 * where the time went on average. A person sees which stage or hop made a step slow.
 */
export function renderWaterfall(request: RequestRecord, steps: StepRecord[], width = 48): string {
  const lines: string[] = [];
  const e2e = request.endUnixMs !== undefined ? `${ms(request.endUnixMs - request.startUnixMs)} ms` : "still running";
  const ttft = request.firstTokenUnixMs !== undefined ? `${ms(request.firstTokenUnixMs - request.startUnixMs)} ms` : "-";
  lines.push(`request ${request.requestId}${request.traceId ? `  trace ${request.traceId}` : ""}`);
  lines.push(
    `prompt ${request.promptTokens} tokens, ${request.completionTokens} generated, finish ${request.finishReason ?? "-"}, ` +
      `e2e ${e2e}, ttft ${ttft}, ${steps.length} steps kept`,
  );
  if (steps.length === 0) {
    lines.push("(no steps of this request are left in the coordinator's ring)");
    return lines.join("\n") + "\n";
  }
  const workers = new Map<number, string>();
  for (const s of steps) for (const t of s.stages) workers.set(t.stageIndex, t.workerId);
  lines.push(`stages: ${[...workers].sort((a, b) => a[0] - b[0]).map(([i, w]) => `${i} = ${w}`).join(", ")}`);
  lines.push(`bar: > hop to stage 0, . queued on a stage, 0-9 stage computing, - hop between stages, < hop back; each bar spans its own step`);
  lines.push("");
  lines.push(`${"step".padStart(6)} ${"at ms".padStart(9)} ${"dur ms".padStart(8)} ${"kind".padEnd(7)} ${"tok".padStart(5)} ${"seqs".padStart(4)}  |${"".padEnd(width)}|  kv blocks used per stage`);
  const hopTotals = new Map<string, { sum: number; n: number }>();
  const add = (key: string, v: number) => {
    const t = hopTotals.get(key) ?? { sum: 0, n: 0 };
    t.sum += v;
    t.n++;
    hopTotals.set(key, t);
  };
  for (const s of steps) {
    const dur = s.receivedUnixMs !== undefined ? ms(s.receivedUnixMs - s.sentUnixMs) : "-";
    const kind = s.prefillTokens > 0 && s.decodeTokens > 0 ? "mixed" : s.prefillTokens > 0 ? "prefill" : "decode";
    const kv = s.stages.map((t) => `${t.kvBlocksUsed}/${t.kvBlocksTotal}`).join(" ");
    lines.push(
      `${String(s.step).padStart(6)} ${ms(s.sentUnixMs - request.startUnixMs).padStart(9)} ${dur.padStart(8)} ${kind.padEnd(7)} ` +
        `${String(s.tokens).padStart(5)} ${String(s.seqIds.length).padStart(4)}  |${bar(s, width)}|  ${s.error ? `error: ${s.error}` : kv}`,
    );
    for (const seg of segmentsOf(s)) add(seg.label, seg.to - seg.from);
  }
  lines.push("");
  lines.push("mean per step:");
  for (const [key, t] of hopTotals) lines.push(`  ${key.padEnd(26)} ${ms(t.sum / t.n).padStart(8)} ms`);
  const done = steps.filter((s) => s.receivedUnixMs !== undefined);
  if (done.length > 0) {
    const slowest = done.reduce((a, b) => (b.receivedUnixMs! - b.sentUnixMs > a.receivedUnixMs! - a.sentUnixMs ? b : a));
    const worst = segmentsOf(slowest).reduce((a, b) => (b.to - b.from > a.to - a.from ? b : a));
    lines.push(`slowest step ${slowest.step}: ${ms(slowest.receivedUnixMs! - slowest.sentUnixMs)} ms, most of it in ${worst.label} (${ms(worst.to - worst.from)} ms)`);
  }
  return lines.join("\n") + "\n";
}
