import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { EventBus } from "@strata/events";
import type { SchedulerStats } from "@strata/scheduler";
import { registerProcessMetrics, setCounterTotal } from "@strata/telemetry";

/** What the metrics read from the engine at scrape time. */
export interface EngineStatsSource {
  stats(): SchedulerStats;
  /** Scheduling waits on the stages' recovery after a lost batch (an Engine's). */
  readonly holdingForRecovery?: boolean;
}

/** What the adapter metrics read at scrape time (an AdapterManager). */
export interface AdapterStatsSource {
  readonly loads: number;
  readonly resident: number;
}

const LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const TOKEN_LATENCY_BUCKETS_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5];
const HOP_BUCKETS_S = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

/**
 * The coordinator's Prometheus registry (`strata_` names, base units, counters end in `_total`).
 * Gauges that mirror engine state are read when scraped, so the step loop pays nothing for them.
 */
export class CoordinatorMetrics {
  readonly registry = new Registry();
  readonly timeToFirstToken: Histogram;
  readonly timePerOutputToken: Histogram;
  readonly e2eLatency: Histogram;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly requests: Counter<"finish_reason">;
  readonly httpResponses: Counter<"route" | "status">;
  readonly httpStreamsOpen: Gauge;
  readonly stepDuration: Histogram;
  readonly stepTokens: Histogram;
  readonly hopLatency: Histogram<"hop">;

  constructor(engine: EngineStatsSource, events?: EventBus, adapters?: AdapterStatsSource) {
    const registers = [this.registry];
    registerProcessMetrics(this.registry);
    const stats = () => engine.stats();
    const gauge = (name: string, help: string, value: (s: SchedulerStats) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(value(stats()));
        },
      });
    gauge("strata_requests_running", "Sequences the scheduler is running (holding KV)", (s) => s.running);
    gauge("strata_requests_waiting", "Sequences queued for admission", (s) => s.waiting);
    new Gauge({
      name: "strata_stage_recovery_wait",
      help: "1 while scheduling waits for every stage to answer loaded after a stage lost a micro-batch",
      registers,
      collect() {
        this.set(engine.holdingForRecovery ? 1 : 0);
      },
    });
    gauge("strata_kv_pool_blocks_used", "KV blocks referenced by live sequences (same ids on every stage)", (s) => s.blocksUsed);
    gauge("strata_kv_pool_blocks_cached", "Unreferenced KV blocks kept for prefix reuse", (s) => s.blocksCached);
    gauge("strata_kv_pool_blocks_total", "KV blocks of the tightest stage", (s) => s.blocksTotal);
    gauge("strata_kv_pool_usage_ratio", "Fraction of KV blocks in use (0 to 1)", (s) => (s.blocksTotal > 0 ? s.blocksUsed / s.blocksTotal : 0));
    const mirrored = (name: string, help: string, value: (s: SchedulerStats) => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          setCounterTotal(this, value(stats()));
        },
      });
    mirrored("strata_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache", (s) => s.prefixQueryTokens);
    mirrored("strata_prefix_cache_hits_total", "Prompt tokens served from the prefix cache", (s) => s.prefixHitTokens);
    mirrored("strata_preemptions_total", "Running sequences preempted to free KV blocks", (s) => s.preemptions);
    mirrored("strata_lost_batch_recomputes_total", "Sequences recomputed because a stage lost a batch of theirs (its worker died)", (s) => s.lostBatchRecomputes);
    if (adapters) {
      new Counter({
        name: "strata_lora_adapter_loads_total",
        help: "LoRA adapter loads onto every stage (startup and runtime)",
        registers,
        collect() {
          setCounterTotal(this, adapters.loads);
        },
      });
      new Gauge({
        name: "strata_lora_adapters_resident",
        help: "LoRA adapters loaded and servable",
        registers,
        collect() {
          this.set(adapters.resident);
        },
      });
    }
    if (events) {
      for (const direction of ["published", "received"] as const) {
        new Counter({
          name: `strata_nats_events_${direction}_total`,
          help: `NATS events the coordinator ${direction}, by kind and reason`,
          labelNames: ["kind", "reason"],
          registers,
          collect() {
            for (const c of events.eventCounts()) if (c.direction === direction) setCounterTotal(this, c.count, { kind: c.kind, reason: c.reason });
          },
        });
      }
    }

    this.timeToFirstToken = new Histogram({ name: "strata_time_to_first_token_seconds", help: "Time from request arrival to its first generated token", buckets: LATENCY_BUCKETS_S, registers });
    this.timePerOutputToken = new Histogram({
      name: "strata_time_per_output_token_seconds",
      help: "Mean time between a sequence's generated tokens after the first",
      buckets: TOKEN_LATENCY_BUCKETS_S,
      registers,
    });
    this.e2eLatency = new Histogram({ name: "strata_e2e_request_latency_seconds", help: "Time from request arrival to its last token", buckets: LATENCY_BUCKETS_S, registers });
    this.promptTokens = new Counter({ name: "strata_prompt_tokens_total", help: "Prompt tokens of finished requests (usage.prompt_tokens)", registers });
    this.generationTokens = new Counter({ name: "strata_generation_tokens_total", help: "Tokens generated (usage.completion_tokens)", registers });
    this.requests = new Counter({ name: "strata_requests_total", help: "Requests finished, by finish reason (stop, length, abort, error)", labelNames: ["finish_reason"], registers });
    this.httpResponses = new Counter({ name: "strata_http_responses_total", help: "HTTP responses by route and status", labelNames: ["route", "status"], registers });
    this.httpStreamsOpen = new Gauge({ name: "strata_http_streams_open", help: "Streamed (SSE) responses in progress; the auto stream interval grows with them", registers });
    this.stepDuration = new Histogram({
      name: "strata_step_duration_seconds",
      help: "Micro-batch round trip: sent to stage 0 until its results came back from the last stage",
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.stepTokens = new Histogram({ name: "strata_step_tokens", help: "Token positions per micro-batch", buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096], registers });
    this.hopLatency = new Histogram({
      name: "strata_stage_hop_latency_seconds",
      help: "gRPC hop latency per micro-batch, from send to arrival (coordinator->0, 0->1, …, N->coordinator)",
      labelNames: ["hop"],
      buckets: HOP_BUCKETS_S,
      registers,
    });
  }
}
