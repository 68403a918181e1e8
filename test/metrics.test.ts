import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type OpenAI from "openai";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { loadGreedyOracle, useNats } from "./support/cluster.ts";
import { startApiServer, type ApiServer } from "./support/api-server.ts";
import { scrape, type Scrape } from "./support/prometheus.ts";

// Traffic through the API over 3 worker processes (each serving /metrics on the port its
// `--metrics-port 0` picked), then the scrapes must add up: tokens counted = tokens in the
// responses' usage, every step crossed every stage, and no KV block stays used.

const MODEL = "stories260K";
const oracle = loadGreedyOracle();
const nats = useNats();
let cluster: LocalCluster;
let api: ApiServer;
let before: Scrape[];
let coordinatorBefore: Scrape;
let coordinator: Scrape;
let workers: Scrape[];
const usages: OpenAI.CompletionUsage[] = [];
let sequences = 0;
let streamsOpenDuring: number | undefined;

beforeAll(async () => {
  await nats.start();
  cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url() });
  api = await startApiServer(cluster, BUNDLED_MODEL_DIR);
  // The cluster's warm-up already moved the worker and NATS counters: the test reads differences.
  before = await Promise.all(cluster.workerMetricsUrls.map(scrape));
  coordinatorBefore = await scrape(`${api.url}/metrics`);
  const client = api.client;
  const completion = (max: number, extra: Partial<OpenAI.CompletionCreateParamsNonStreaming> = {}) =>
    client.completions.create({ model: MODEL, prompt: oracle.prompt, max_tokens: max, temperature: 0.8, seed: max, ...extra }).then((r) => {
      usages.push(r.usage!);
      sequences += r.choices.length;
    });
  const chat = client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 30, temperature: 0 }).then((r) => {
    usages.push(r.usage!);
    sequences += 1;
  });
  const stream = (async () => {
    const s = await client.completions.create({ model: MODEL, prompt: "Lily", max_tokens: 200, temperature: 0, stream: true, stream_options: { include_usage: true } });
    for await (const chunk of s) {
      if (chunk.usage) usages.push(chunk.usage);
      streamsOpenDuring ??= (await scrape(`${api.url}/metrics`)).value("strata_http_streams_open");
    }
    sequences += 1;
  })();
  await Promise.all([completion(5), completion(17), completion(64), completion(12, { n: 2 }), completion(8, { stop: ["."] }), chat, stream]);
  await cluster.waitForBlocksFreed();
  coordinator = await scrape(`${api.url}/metrics`);
  workers = await Promise.all(cluster.workerMetricsUrls.map(scrape));
});

afterAll(async () => {
  await api?.close();
  await cluster?.stop();
  await nats.stop();
});

const sum = (f: (u: OpenAI.CompletionUsage) => number) => usages.reduce((a, u) => a + f(u), 0);

describe("GET /metrics after traffic", () => {
  it("worker processes print their metrics port and serve /metrics", () => {
    expect(cluster.workerMetricsUrls).toHaveLength(3);
    for (const url of cluster.workerMetricsUrls) expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  });

  it("counts exactly the tokens the responses reported in usage", () => {
    expect(usages).toHaveLength(7);
    expect(coordinator.value("strata_generation_tokens_total")).toBe(sum((u) => u.completion_tokens));
    expect(coordinator.value("strata_prompt_tokens_total")).toBe(sum((u) => u.prompt_tokens));
    expect(coordinator.value("strata_requests_total")).toBe(7);
    expect(coordinator.value("strata_time_to_first_token_seconds_count")).toBe(7);
    expect(coordinator.value("strata_e2e_request_latency_seconds_count")).toBe(7);
    expect(coordinator.value("strata_time_per_output_token_seconds_count")).toBe(sequences);
    expect(coordinator.value("strata_http_responses_total", { route: "/v1/completions", status: "200" })).toBe(6);
    expect(coordinator.value("strata_http_responses_total", { route: "/v1/chat/completions", status: "200" })).toBe(1);
  });

  it("ends with nothing running, waiting or holding KV, on the coordinator and on every stage", () => {
    expect(streamsOpenDuring).toBeGreaterThanOrEqual(1);
    expect(coordinator.value("strata_http_streams_open")).toBe(0);
    expect(coordinator.value("strata_requests_running")).toBe(0);
    expect(coordinator.value("strata_requests_waiting")).toBe(0);
    expect(coordinator.value("strata_kv_pool_blocks_used")).toBe(0);
    expect(coordinator.value("strata_kv_pool_blocks_total")).toBeGreaterThan(0);
    workers.forEach((w, stage) => {
      expect(w.value("strata_kv_blocks_used", { stage: String(stage) })).toBe(0);
      expect(w.value("strata_kv_usage_ratio", { stage: String(stage) })).toBe(0);
      expect(w.value("strata_kv_blocks_total", { stage: String(stage) })).toBeGreaterThan(0);
      expect(w.samples.find((s) => s.name === "strata_kv_blocks_used")!.labels.worker_id).toBe(`worker-${stage}`);
    });
  });

  it("every step crossed every stage, and each hop was timed once per step", () => {
    const steps = coordinator.value("strata_step_duration_seconds_count");
    expect(steps).toBeGreaterThan(0);
    workers.forEach((w, stage) => {
      const batches = w.value("strata_stage_batches_total", { stage: String(stage) }) - before[stage].value("strata_stage_batches_total", { stage: String(stage) });
      expect(batches).toBe(steps);
      expect(w.value("strata_stage_compute_seconds_count", { stage: String(stage) })).toBeGreaterThanOrEqual(batches);
    });
    for (const hop of ["0->1", "1->2", "2->coordinator"]) {
      expect(coordinator.value("strata_stage_hop_latency_seconds_count", { hop })).toBe(steps);
    }
    // A step enters stage 0 from the coordinator, or from the last stage inside a decode run.
    const fromCoordinator = coordinator.value("strata_stage_hop_latency_seconds_count", { hop: "coordinator->0" });
    const loopedBack = coordinator.value("strata_stage_hop_latency_seconds_count", { hop: "2->0" });
    expect(fromCoordinator + loopedBack).toBe(steps);
    expect(loopedBack).toBeGreaterThan(0);
    expect(workers[2].value("strata_stage_hidden_state_sent_bytes_total")).toBe(0);
    expect(workers[0].value("strata_stage_hidden_state_sent_bytes_total")).toBeGreaterThan(0);
  });

  it("labels each stage's steps prefill or decode, and every stage counts the same steps and positions of each", () => {
    const delta = (w: Scrape, stage: number, name: string, phase: string) => w.value(name, { stage: String(stage), phase }) - before[stage].value(name, { stage: String(stage), phase });
    for (const phase of ["prefill", "decode"]) {
      const perStage = workers.map((w, stage) => ({
        batches: delta(w, stage, "strata_stage_batches_total", phase),
        tokens: delta(w, stage, "strata_stage_tokens_total", phase),
        timed: delta(w, stage, "strata_stage_compute_seconds_count", phase),
        queued: delta(w, stage, "strata_stage_queue_seconds_count", phase),
      }));
      for (const s of perStage) {
        expect(s).toEqual({ ...perStage[0] });
        expect(s.batches).toBeGreaterThan(0);
        expect(s.timed).toBe(s.batches);
        expect(s.queued).toBe(s.batches);
      }
    }
    const positions = (stage: number, phase: string) => delta(workers[stage], stage, "strata_stage_tokens_total", phase) / delta(workers[stage], stage, "strata_stage_batches_total", phase);
    // Prompts of several tokens: a prefill step computes more positions than a decode step of the
    // same sequences would.
    expect(positions(0, "prefill")).toBeGreaterThan(1);
    // Every position computed is either kind: no step lost its label.
    const all = workers[0].value("strata_stage_tokens_total", { stage: "0" }) - before[0].value("strata_stage_tokens_total", { stage: "0" });
    expect(delta(workers[0], 0, "strata_stage_tokens_total", "prefill") + delta(workers[0], 0, "strata_stage_tokens_total", "decode")).toBe(all);
  });

  it("counts the NATS eviction of every finished sequence, published once and received by each stage", () => {
    const published =
      coordinator.value("strata_nats_events_published_total", { kind: "kv_evict" }) - coordinatorBefore.value("strata_nats_events_published_total", { kind: "kv_evict" });
    expect(published).toBe(sequences);
    workers.forEach((w, stage) => {
      const received = w.value("strata_nats_events_received_total", { kind: "kv_evict" }) - before[stage].value("strata_nats_events_received_total", { kind: "kv_evict" });
      expect(received).toBe(published);
      // Each received event's lag was observed (publisher and workers share this host's clock).
      const lagged = w.value("strata_nats_event_lag_seconds_count", { kind: "kv_evict" }) - before[stage].value("strata_nats_event_lag_seconds_count", { kind: "kv_evict" });
      expect(lagged).toBe(received);
      expect(w.value("strata_nats_event_lag_seconds_sum", { kind: "kv_evict" })).toBeGreaterThan(0);
      expect(w.value("strata_lora_adapters_resident", { stage: String(stage) })).toBe(0);
    });
    expect(coordinator.has("strata_preemptions_total")).toBe(true);
    expect(coordinator.has("strata_lost_batch_recomputes_total")).toBe(true);
    expect(coordinator.value("strata_stage_recovery_wait")).toBe(0);
    expect(coordinator.value("strata_prefix_cache_queries_total")).toBeGreaterThanOrEqual(coordinator.value("strata_prefix_cache_hits_total"));
  });

  it("reports each process's CPU time and resident memory, the coordinator's and every worker's", () => {
    for (const [i, w] of workers.entries()) {
      // Each worker process computed its share of the traffic in between.
      expect(w.value("strata_process_cpu_seconds_total")).toBeGreaterThan(before[i].value("strata_process_cpu_seconds_total"));
      expect(w.value("strata_process_resident_memory_bytes")).toBeGreaterThan(10 * 2 ** 20);
    }
    expect(coordinator.value("strata_process_cpu_seconds_total")).toBeGreaterThan(coordinatorBefore.value("strata_process_cpu_seconds_total"));
  });

  it("follows Prometheus naming: strata_ prefix, base units, counters end in _total", () => {
    for (const s of [coordinator, ...workers]) {
      for (const [name, type] of s.types) {
        expect(name).toMatch(/^strata_[a-z0-9_]+$/);
        if (type === "counter") expect(name).toMatch(/_total$/);
        if (type === "histogram") expect(name).toMatch(/_(seconds|tokens)$/);
        expect(name).not.toMatch(/_(ms|milliseconds|percent)$/);
      }
    }
  });
});
