import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster, RequestAbortedError, type GenerateRequest, type GenerateResult } from "@strata/coordinator";
import { SeededRandom } from "@strata/sampling";
import { expectNoBlocksHeld, GREEDY, useNats } from "./support/cluster.ts";

// A soak of the engine under traffic that changes every few milliseconds: requests arrive at
// random, alone and in bursts, for STRATA_SOAK_SECONDS (10 by default, what CI runs; set it higher
// for a long soak). They mix three prefix-cached system prompts under two tenants' salts and none,
// greedy and seeded sampled decoding, stop tokens, and clients that abort mid-stream or before
// their first token, on a KV budget that holds only a few of them at once, so sequences wait,
// get preempted and recompute. Halfway through, nats-server restarts, and evictions published
// meanwhile must still reach the stages.
//
// Afterwards, each request runs again alone: a finished one must have produced exactly that
// output, an aborted one a prefix of it. And every stage must be back to no block in use. A
// second soak does the same over worker processes and crashes each of them once: requests whose
// micro-batches died with a worker recompute once it is back, so none fails, and every output is
// still the request's alone.

const SOAK_SECONDS = Number(process.env.STRATA_SOAK_SECONDS ?? 10);
const BLOCK_SIZE = 16;
const BYTES_PER_TOKEN_3_LAYERS = 2 * 3 * 4 * 8 * 4; // stories260K: 4 KV heads × head_dim 8, f32
const KV_CACHE_BYTES = 32 * BLOCK_SIZE * BYTES_PER_TOKEN_3_LAYERS; // 32 blocks on the 3-layer stage
const PERIOD = 426; // "." in tok512
/** Sent once a crashed stage is back, to show the cluster serves again. */
const PROBE: SoakRequest = { req: { promptIds: [1, 403, 407, 261, 378], maxTokens: 12, sampling: GREEDY } };

const nats = useNats();
let cluster: LocalCluster;

beforeAll(async () => {
  await nats.start();
  cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), inProcessWorkers: true, blockSizeTokens: BLOCK_SIZE, kvCacheBytes: KV_CACHE_BYTES });
});
afterAll(async () => {
  await cluster?.stop();
  await nats.stop();
});

interface SoakRequest {
  req: Omit<GenerateRequest, "signal" | "onToken">;
  /** Abort once this many tokens have streamed (0: right after submitting). */
  abortAfter?: number;
}

interface Outcome {
  streamed: number[];
  result?: GenerateResult;
  error?: Error;
}

function soakRequest(rng: SeededRandom, systemPrompts: number[][]): SoakRequest {
  const pick = <T>(items: readonly T[]) => items[Math.floor(rng.next() * items.length)];
  const text = (n: number) => Array.from({ length: n }, () => 260 + Math.floor(rng.next() * 200));
  const system = rng.next() < 0.8 ? pick(systemPrompts) : [];
  const sampled = rng.next() < 0.3;
  const maxTokens = 1 + Math.floor(rng.next() * 48);
  const req: SoakRequest["req"] = {
    promptIds: [1, ...system, ...text(1 + Math.floor(rng.next() * 20))],
    maxTokens,
    sampling: sampled ? { temperature: 0.9, topP: pick([0.9, 1]), topK: pick([0, 40]) } : GREEDY,
    seed: sampled ? Math.floor(rng.next() * 2 ** 31) : undefined,
    // No stop tokens, the model's own end tokens, or a period as well.
    stopTokenIds: pick([[], undefined, [PERIOD]]),
    cacheSalt: pick([undefined, undefined, "tenant-a", "tenant-b"]),
  };
  return { req, abortAfter: rng.next() < 0.15 ? Math.floor(rng.next() * maxTokens) : undefined };
}

async function run(cluster: LocalCluster, request: SoakRequest): Promise<Outcome> {
  const streamed: number[] = [];
  const abort = new AbortController();
  const generation = cluster.engine.generate({
    ...request.req,
    signal: abort.signal,
    onToken: (id) => {
      streamed.push(id);
      if (streamed.length === request.abortAfter) abort.abort();
    },
  });
  if (request.abortAfter === 0) abort.abort();
  try {
    const result = await generation;
    return { streamed, result };
  } catch (error) {
    return { streamed, error: error as Error };
  }
}

/**
 * Requests from `rng` for `seconds`, one at a time or in bursts, each awaited in the background;
 * `at(fraction)` runs once the soak is that far through (0 to 1), for each fraction it names.
 */
async function soak(cluster: LocalCluster, rng: SeededRandom, seconds: number, at: Map<number, () => Promise<void>> = new Map()): Promise<{ requests: SoakRequest[]; outcomes: Outcome[] }> {
  const systemPrompts = [32, 48, 64].map((n) => Array.from({ length: n }, () => 260 + Math.floor(rng.next() * 200)));
  const requests: SoakRequest[] = [];
  const outcomes: Promise<Outcome>[] = [];
  const events: Promise<void>[] = [];
  const started = performance.now();
  const pending = [...at.keys()].sort((a, b) => a - b);
  while (performance.now() < started + seconds * 1000) {
    const burst = rng.next() < 0.1 ? 4 + Math.floor(rng.next() * 8) : 1;
    for (let i = 0; i < burst; i++) {
      const request = soakRequest(rng, systemPrompts);
      requests.push(request);
      outcomes.push(run(cluster, request));
    }
    while (pending.length > 0 && performance.now() >= started + pending[0] * seconds * 1000) events.push(at.get(pending.shift()!)!());
    await new Promise((resolve) => setTimeout(resolve, -Math.log(1 - rng.next()) * 25));
  }
  const settled = await Promise.all(outcomes);
  await Promise.all(events);
  return { requests, outcomes: settled };
}


/** Each request again, alone: a finished one's output, and what any of them streamed, must match. */
async function expectEachAsAlone(cluster: LocalCluster, requests: SoakRequest[], outcomes: Outcome[]): Promise<void> {
  for (const [i, request] of requests.entries()) {
    const alone = await cluster.engine.generate(request.req);
    const soaked = outcomes[i];
    const label = `request ${i}: ${JSON.stringify({ ...request.req, promptIds: request.req.promptIds.length })}, abort after ${request.abortAfter}`;
    if (soaked.result) {
      expect(soaked.result.tokenIds, label).toEqual(alone.tokenIds);
      expect(soaked.result.finishReason, label).toBe(alone.finishReason);
    }
    expect(soaked.streamed, label).toEqual(alone.tokenIds.slice(0, soaked.streamed.length));
  }
}

describe(`soak (${SOAK_SECONDS} s; STRATA_SOAK_SECONDS sets it)`, () => {
  it("random arrivals, bursts, salts, sampling, stop tokens and aborts under preemption and a NATS restart: every output is the request's alone, and no block leaks", { timeout: 60_000 + SOAK_SECONDS * 6_000 }, async () => {
    const before = cluster.engine.stats();
    const restart = new Map([[0.5, () => nats.server().restart()]]);
    const { requests, outcomes } = await soak(cluster, new SeededRandom(2026), SOAK_SECONDS, restart);
    const after = cluster.engine.stats();

    // The load did what it is for.
    expect(outcomes.filter((r) => r.error && !(r.error instanceof RequestAbortedError)).map((r) => r.error!.message)).toEqual([]);
    expect(outcomes.filter((r) => r.error instanceof RequestAbortedError).length).toBeGreaterThan(0);
    expect(after.preemptions - before.preemptions).toBeGreaterThan(0);
    expect(after.prefixHitTokens - before.prefixHitTokens).toBeGreaterThan(0);
    expect(requests.some((r) => r.req.seed !== undefined && r.abortAfter === undefined)).toBe(true);

    await expectNoBlocksHeld(cluster);
    await expectEachAsAlone(cluster, requests, outcomes);
    expect(await cluster.waitForBlocksFreed(30_000)).toEqual([0, 0]);
  });

  it("over worker processes, each crashed once mid-soak and reloaded: requests whose batches were lost recompute, none fails, every output is the request's alone, and no block leaks", { timeout: 90_000 + SOAK_SECONDS * 6_000 }, async () => {
    const processes = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), blockSizeTokens: BLOCK_SIZE, kvCacheBytes: KV_CACHE_BYTES });
    try {
      // What `strata start` does: reload a stage whose worker came back empty, free stale sequences.
      processes.watchStages(() => {}, 500);
      // After each crash, a probe request sent once the stage is back.
      const probes: Outcome[] = [];
      // The crashes run one after the other: the second waits until the cluster served again
      // after the first, however long that took under the load.
      let crashes = Promise.resolve();
      const crash = (worker: number) => () =>
        (crashes = crashes.then(async () => {
          await processes.crashWorker(worker);
          const loaded = async () => (await processes.pipeline.describeAll().catch(() => [])).filter((d) => d.loaded).length === 2;
          while (!(await loaded())) await new Promise((r) => setTimeout(r, 50));
          // The reload that loaded it ends by sending the batches then in flight back to recompute.
          await processes.recoverStages();
          // The cluster serves again: a request sent now, beside the soak's, must succeed.
          probes.push(await run(processes, PROBE));
        }));
      const { requests, outcomes } = await soak(processes, new SeededRandom(7), SOAK_SECONDS, new Map([[0.3, crash(1)], [0.65, crash(0)]]));

      expect(probes).toHaveLength(2);
      // Requests whose batches died with a worker went back to recompute: none failed.
      expect(outcomes.filter((r) => r.error && !(r.error instanceof RequestAbortedError)).map((r) => r.error!.message)).toEqual([]);
      expect(processes.engine.stats().lostBatchRecomputes).toBeGreaterThan(0);
      // And the cluster served again after each crash, what the probe gets alone.
      const probeAlone = await processes.engine.generate(PROBE.req);
      for (const probe of probes) expect(probe.error?.message ?? probe.result!.tokenIds).toEqual(probeAlone.tokenIds);

      await processes.engine.reconcile();
      await expectNoBlocksHeld(processes);
      await expectEachAsAlone(processes, requests, outcomes);
    } finally {
      await processes.stop();
    }
  });
});
