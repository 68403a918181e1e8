import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster, RequestAbortedError, type GenerateRequest, type GenerateResult } from "@strata/coordinator";
import type { ResultsBatch, ResultsResponse } from "@strata/proto";
import { GREEDY, loadGreedyOracle, useNats } from "./support/cluster.ts";

// Decode runs (multi-step scheduling): a batch of decodes loops through the stages several steps
// without the coordinator, the last stage feeding its tokens back to the first. Outputs must be
// exactly those of one step at a time: greedy and seeded sampling, lengths that end mid-run,
// stop tokens met mid-run, and an abort mid-run that still frees every block.

const oracle = loadGreedyOracle();
const nats = useNats();
let runs: LocalCluster;
let single: LocalCluster;

beforeAll(async () => {
  await nats.start();
  const base = { modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), inProcessWorkers: true, warmUp: false };
  // A hold longer than any run here: every run's step results travel together, deterministically.
  runs = await LocalCluster.start({ ...base, numSchedulerSteps: 6, resultHoldMs: 60_000 });
  single = await LocalCluster.start({ ...base, numSchedulerSteps: 1 });
});

afterAll(async () => {
  await runs?.stop();
  await single?.stop();
  await nats.stop();
});

const greedyIds = oracle.token_ids.slice(oracle.prompt_token_ids.length);

function requests(): GenerateRequest[] {
  return [
    { promptIds: oracle.prompt_token_ids, maxTokens: 40, sampling: GREEDY, stopTokenIds: [] },
    { promptIds: oracle.prompt_token_ids, maxTokens: 13, sampling: GREEDY, stopTokenIds: [] }, // ends mid-run
    { promptIds: oracle.prompt_token_ids, maxTokens: 40, sampling: GREEDY, stopTokenIds: [greedyIds[8]] }, // stops mid-run
    { promptIds: [1, 400, 401, 402], maxTokens: 1, sampling: GREEDY, stopTokenIds: [] },
    { promptIds: [1, 77], maxTokens: 30, sampling: { temperature: 0.9, topP: 0.95, topK: 0 }, seed: 11, stopTokenIds: [] },
    { promptIds: [1, 78], maxTokens: 25, sampling: { temperature: 1.2, topP: 1, topK: 20 }, seed: 12 },
  ];
}

async function hopCount(cluster: LocalCluster, hop: string): Promise<number> {
  const metric = await cluster.telemetry.metrics.hopLatency.get();
  return metric.values.find((v) => v.metricName?.endsWith("_count") && v.labels.hop === hop)?.value ?? 0;
}

describe("decode runs", () => {
  it("generate exactly what single steps generate, with lengths and stop tokens ending mid-run", async () => {
    const [a, b] = await Promise.all([Promise.all(requests().map((r) => runs.engine.generate(r))), Promise.all(requests().map((r) => single.engine.generate(r)))]);
    const strip = (r: GenerateResult) => ({ tokens: r.tokenIds, finish: r.finishReason });
    expect(a.map(strip)).toEqual(b.map(strip));
    expect(a[0].tokenIds).toEqual(greedyIds.slice(0, 40));
    expect(a[1].tokenIds).toHaveLength(13);
    expect(a[2]).toMatchObject({ tokenIds: greedyIds.slice(0, 8), finishReason: "stop" });
    // The runs really looped: steps entered stage 0 from the last stage.
    expect(await hopCount(runs, "1->0")).toBeGreaterThan(0);
    expect(await hopCount(single, "1->0")).toBe(0);
    expect(await runs.waitForBlocksFreed()).toEqual([0, 0]);
  });

  it("records each step's prefill and decode tokens, for requests made in-process too (no API request behind them)", async () => {
    for (const cluster of [single, runs]) {
      const before = cluster.telemetry.log.allSteps().at(-1)?.step ?? 0;
      await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 20, sampling: GREEDY, stopTokenIds: [] });
      const steps = cluster.telemetry.log.allSteps().filter((s) => s.step > before);
      // The prompt in one step, then every token but the last fed back, one a step.
      expect(steps.reduce((n, s) => n + s.prefillTokens, 0)).toBe(oracle.prompt_token_ids.length);
      expect(steps.reduce((n, s) => n + s.decodeTokens, 0)).toBe(19);
    }
  });

  it("holds a run's early step results and sends them together, its last steps as they come, run by run", async () => {
    // Each step's result says when its last stage finished it; the coordinator's step records say
    // when the result arrived. In a run of 6, steps 0-2 are held until step 3 (the first of the
    // last three, which are not held) is computed, and arrive after it. A second request joins
    // once the first is decoding, so two runs are in flight at once (one per micro-batch): one
    // run's unheld steps must not release the other's held ones.
    const arrivals: { batchId: number; step: number; computedUnixMs: number; receivedUnixMs: number }[] = [];
    const telemetry = runs.telemetry as unknown as { stepFinished(record: { receivedUnixMs: number }, result: ResultsResponse, ...rest: unknown[]): void };
    const original = telemetry.stepFinished.bind(telemetry);
    // Every Results message as it arrives: which runs' steps it carried.
    const messages: { batchId: number; step: number }[][] = [];
    const resultsStream = (runs.pipeline as unknown as { fromLastStage: NodeJS.EventEmitter }).fromLastStage;
    const onMessage = (batch: ResultsBatch) => messages.push(batch.results.map((r) => ({ batchId: r.batchId, step: r.step })));
    resultsStream.on("data", onMessage);
    telemetry.stepFinished = (record, result, ...rest) => {
      original(record, result, ...rest);
      const computedUnixMs = result.stageTimings[result.stageTimings.length - 1].sentUnixMs;
      arrivals.push({ batchId: result.batchId, step: result.step, computedUnixMs, receivedUnixMs: record.receivedUnixMs });
    };
    try {
      let second: Promise<GenerateResult> | undefined;
      const first = await runs.engine.generate({
        promptIds: oracle.prompt_token_ids,
        maxTokens: 30,
        sampling: GREEDY,
        stopTokenIds: [],
        onToken: () => (second ??= runs.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 30, sampling: GREEDY, stopTokenIds: [] })),
      });
      expect(first.tokenIds).toEqual(greedyIds.slice(0, 30));
      expect((await second!).tokenIds).toEqual(greedyIds.slice(0, 30));
    } finally {
      telemetry.stepFinished = original;
      resultsStream.off("data", onMessage);
    }
    const byBatch = new Map<number, typeof arrivals>();
    for (const a of arrivals) byBatch.set(a.batchId, [...(byBatch.get(a.batchId) ?? []), a]);
    const runsSeen = [...byBatch.values()].filter((steps) => steps.length > 1);
    expect(runsSeen.length).toBeGreaterThanOrEqual(8); // 2 x 29 decode tokens in runs of 6
    const fullRuns = runsSeen.filter((steps) => steps.length === 6); // a request's last, shorter run holds less
    for (const steps of runsSeen) expect(steps.map((s) => s.step)).toEqual(steps.map((_, i) => i)); // in order, none lost
    for (const steps of fullRuns) {
      for (const s of steps.slice(0, 3)) expect(s.receivedUnixMs).toBeGreaterThanOrEqual(steps[3].computedUnixMs);
    }
    expect(fullRuns.length).toBeGreaterThanOrEqual(6);
    // Runs really overlapped: some run computed a step while another was between its first and last.
    const span = (steps: typeof arrivals) => [steps[0].computedUnixMs, steps[steps.length - 1].computedUnixMs];
    const overlapping = fullRuns.some((a) => fullRuns.some((b) => a !== b && span(a)[0] < span(b)[0] && span(b)[0] < span(a)[1]));
    expect(overlapping).toBe(true);
    // Held steps go out with their own run's first unheld step: steps 0-3 of a run arrive back to
    // back, with no other run's result between them.
    for (const steps of fullRuns) {
      const at = arrivals.indexOf(steps[0]);
      expect(arrivals.slice(at, at + 4)).toEqual(steps.slice(0, 4));
      // ... in one Results message; the run's last two steps come in one message each.
      const batchId = steps[0].batchId;
      const ofRun = messages.filter((m) => m.some((r) => r.batchId === batchId));
      expect(ofRun).toEqual([[0, 1, 2, 3], [4], [5]].map((group) => group.map((step) => ({ batchId, step }))));
    }
    expect(await runs.waitForBlocksFreed()).toEqual([0, 0]);
  });

  it("an abort inside a run ends the request and frees its blocks once the run is back", async () => {
    const controller = new AbortController();
    let tokens = 0;
    const aborted = runs.engine.generate({
      promptIds: oracle.prompt_token_ids,
      maxTokens: 60,
      sampling: GREEDY,
      stopTokenIds: [],
      signal: controller.signal,
      onToken: () => ++tokens === 3 && controller.abort(),
    });
    const other = runs.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 20, sampling: GREEDY, stopTokenIds: [] });
    await expect(aborted).rejects.toBeInstanceOf(RequestAbortedError);
    expect(tokens).toBe(3); // nothing after the abort reached the caller
    expect((await other).tokenIds).toEqual(greedyIds.slice(0, 20));
    expect(await runs.waitForBlocksFreed()).toEqual([0, 0]);
    expect(runs.engine.liveSequenceIds()).toEqual([]);
  });
});
