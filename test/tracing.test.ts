import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { loadGreedyOracle, useNats } from "./support/cluster.ts";
import { startApiServer, type ApiServer } from "./support/api-server.ts";
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from "./support/otlp-receiver.ts";

// One request through 3 workers, traced to a real OTLP/HTTP receiver that decodes the protobuf
// payloads: the request is a trace; every step is a span linked to it (and it to the step) with
// one child span per stage, each exported under its own worker's service name. Twice: workers as
// in-process servers (a private tracer provider each) and as processes (each its own NodeSDK,
// configured from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).

const REPO_ROOT = fileURLToPath(new URL("../", import.meta.url));
const MAX_TOKENS = 20;
const oracle = loadGreedyOracle();
const nats = useNats();
beforeAll(nats.start);
afterAll(nats.stop);

describe.each([
  ["in-process workers", true],
  ["worker processes", false],
])("a request's trace through 3 workers (%s)", (_mode, inProcessWorkers) => {
  let receiver: OtlpReceiver;
  let cluster: LocalCluster;
  let api: ApiServer;
  let requestId: string;
  let completionTokens: number;
  let waterfall: string;
  let cliOutput: string;
  let spans: ReceivedSpan[];

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url(), inProcessWorkers, tracesUrl: receiver.tracesUrl });
    api = await startApiServer(cluster, BUNDLED_MODEL_DIR);
    const res = await api.client.completions.create({ model: "stories260K", prompt: oracle.prompt, max_tokens: MAX_TOKENS, temperature: 0 });
    requestId = res.id;
    completionTokens = res.usage!.completion_tokens;
    waterfall = await (await fetch(`${api.url}/debug/trace/${requestId}`)).text();
    // Asynchronously: the API it asks lives in this process.
    const cli = await promisify(execFile)(process.execPath, ["--import", "tsx", "services/coordinator/src/cli.ts", "trace", "--url", api.url, "--request", requestId], {
      cwd: REPO_ROOT,
      encoding: "utf8",
      timeout: 60_000,
    });
    cliOutput = cli.stdout + cli.stderr;
    await api.close();
    // Stopping flushes every provider (coordinator and each worker) to the receiver.
    await cluster.stop();
    spans = receiver.spans;
  });

  afterAll(async () => {
    await receiver?.close();
  });

    it("exports the request as a root span of its own trace, from the coordinator", () => {
      const requests = spans.filter((s) => s.name === "request");
      expect(requests).toHaveLength(1);
      const [request] = requests;
      expect(request.serviceName).toBe("strata-coordinator");
      expect(request.parentSpanId).toBe("");
      expect(request.attributes["strata.request.id"]).toBe(requestId);
      expect(request.attributes["gen_ai.usage.input_tokens"]).toBe(oracle.prompt_token_ids.length);
      expect(request.attributes["gen_ai.usage.output_tokens"]).toBe(MAX_TOKENS);
      expect(request.events).toContain("first_token");
    });

    it("has one step span per step, each with exactly 3 stage children, one per worker service", () => {
      const steps = spans.filter((s) => s.name === "step");
      // One token per step: the prefill step samples the first, each decode step one more.
      expect(steps).toHaveLength(completionTokens);
      // Decode runs: several steps of one batch (looped back by the last stage), each its own span.
      expect(new Set(steps.map((s) => s.attributes["strata.batch.id"])).size).toBeLessThan(steps.length);
      for (const step of steps) {
        expect(step.serviceName).toBe("strata-coordinator");
        expect(step.parentSpanId).toBe("");
        const children = spans.filter((s) => s.parentSpanId === step.spanId);
        expect(children).toHaveLength(3);
        for (const child of children) expect(child.traceId).toBe(step.traceId);
        expect(children.map((c) => c.serviceName).sort()).toEqual(["strata-worker-0", "strata-worker-1", "strata-worker-2"]);
        for (const child of children) {
          const stage = child.attributes["strata.stage.index"];
          expect(child.serviceName).toBe(`strata-worker-${stage}`);
          expect(child.name).toBe(`stage ${stage}`);
          expect(child.attributes["strata.batch.id"]).toBe(step.attributes["strata.batch.id"]);
          expect(child.attributes["strata.kv.blocks_used"] as number).toBeGreaterThan(0);
          if (stage === 2) expect(child.attributes["strata.hidden_state.bytes_sent"]).toBe(0);
          else expect(child.attributes["strata.hidden_state.bytes_sent"] as number).toBeGreaterThan(0);
          // A stage's span lies inside its step's span (one clock on loopback).
          expect(child.startUnixNanos >= step.startUnixNanos && child.endUnixNanos <= step.endUnixNanos).toBe(true);
        }
        expect(step.attributes["strata.batch.request_ids"]).toEqual([requestId]);
        expect(step.attributes["strata.batch.size"]).toBe(1);
        expect(step.attributes["strata.stage.kv_blocks_used"]).toHaveLength(3);
      }
      const prefill = steps.filter((s) => (s.attributes["strata.step.prefill_tokens"] as number) > 0);
      expect(prefill).toHaveLength(1);
      expect(prefill[0].attributes["strata.step.prefill_tokens"]).toBe(oracle.prompt_token_ids.length);
      expect(steps.filter((s) => s.attributes["strata.step.decode_tokens"] === 1)).toHaveLength(completionTokens - 1);
    });

    it("links the request and its steps both ways", () => {
      const request = spans.find((s) => s.name === "request")!;
      const steps = spans.filter((s) => s.name === "step");
      for (const step of steps) {
        expect(step.traceId).not.toBe(request.traceId);
        expect(step.links).toEqual([{ traceId: request.traceId, spanId: request.spanId, attributes: {} }]);
      }
      const linked = request.links.map((l) => `${l.traceId}/${l.spanId}`).sort();
      expect(linked).toEqual(steps.map((s) => `${s.traceId}/${s.spanId}`).sort());
    });

    it("draws the request's steps as a waterfall across the stages, over HTTP and with `strata trace`", () => {
      expect(waterfall).toContain(`request ${requestId}`);
      expect(waterfall).toContain("stages: 0 = worker-0, 1 = worker-1, 2 = worker-2");
      const rows = waterfall.split("\n").filter((l) => /^\s+\d+\s/.test(l));
      expect(rows).toHaveLength(completionTokens);
      expect(rows[0]).toMatch(/prefill/);
      expect(rows.slice(1).every((r) => /decode/.test(r))).toBe(true);
      for (const row of rows) expect(row).toMatch(/\|[>.\-<012 ]+\|/);
      expect(waterfall).toMatch(/hop coordinator->0/);
      expect(waterfall).toMatch(/stage 2 compute/);
      expect(cliOutput).toBe(waterfall);
    });
});

describe("head sampling (--trace-sample-ratio, OTEL_TRACES_SAMPLER_ARG)", () => {
  it("a request not sampled leaves no span anywhere, its steps and stages included; its waterfall is still kept", async () => {
    const receiver = await startOtlpReceiver();
    try {
      const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), inProcessWorkers: true, tracesUrl: receiver.tracesUrl, traceSampleRatio: 0 });
      const api = await startApiServer(cluster, BUNDLED_MODEL_DIR);
      const unsampled = await api.client.completions.create({ model: "stories260K", prompt: oracle.prompt, max_tokens: MAX_TOKENS, temperature: 0 });
      cluster.telemetry.sampleRatio = 1;
      const sampled = await api.client.completions.create({ model: "stories260K", prompt: oracle.prompt, max_tokens: MAX_TOKENS, temperature: 0 });
      expect(unsampled.choices[0].text).toBe(sampled.choices[0].text);
      const waterfall = await (await fetch(`${api.url}/debug/trace/${unsampled.id}`)).text();
      expect(waterfall).toContain(`request ${unsampled.id}`);
      await api.close();
      await cluster.stop();
      const requests = receiver.spans.filter((s) => s.name === "request");
      expect(requests.map((r) => r.attributes["strata.request.id"])).toEqual([sampled.id]);
      const steps = receiver.spans.filter((s) => s.name === "step");
      expect(steps).toHaveLength(sampled.usage!.completion_tokens);
      for (const step of steps) expect(step.links).toEqual([{ traceId: requests[0].traceId, spanId: requests[0].spanId, attributes: {} }]);
      const stages = receiver.spans.filter((s) => s.name.startsWith("stage "));
      expect(stages).toHaveLength(2 * steps.length);
      const stepIds = new Set(steps.map((s) => s.spanId));
      for (const stage of stages) expect(stepIds.has(stage.parentSpanId)).toBe(true);
      expect(() => (cluster.telemetry.sampleRatio = 1.5)).toThrow(/between 0 and 1/);
    } finally {
      await receiver.close();
    }
  });
});
