import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster, RequestAbortedError, type GenerateRequest, type GenerateResult } from "@strata/coordinator";
import { SeededRandom } from "@strata/sampling";
import { GREEDY, useNats } from "./support/cluster.ts";

// A soak of the engine under traffic that changes every few milliseconds: requests arrive at
// random, alone and in bursts, for STRATA_SOAK_SECONDS (10 by default, what CI runs; set it higher
// for a long soak). They mix three prefix-cached system prompts under two tenants' salts and none,
// greedy and seeded sampled decoding, stop tokens, and clients that abort mid-stream or before
// their first token, on a KV budget that holds only a few of them at once, so sequences wait,
// get preempted and recompute. Halfway through, nats-server restarts, and evictions published
// meanwhile must still reach the stages.
//
// Afterwards, each request runs again alone: a finished one must have produced exactly that
// output, an aborted one a prefix of it. And every stage must be back to no block in use.

const SOAK_SECONDS = Number(process.env.STRATA_SOAK_SECONDS ?? 10);
const BLOCK_SIZE = 16;
const BYTES_PER_TOKEN_3_LAYERS = 2 * 3 * 4 * 8 * 4; // stories260K: 4 KV heads × head_dim 8, f32
const KV_CACHE_BYTES = 32 * BLOCK_SIZE * BYTES_PER_TOKEN_3_LAYERS; // 32 blocks on the 3-layer stage
const PERIOD = 426; // "." in tok512

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

async function run(request: SoakRequest): Promise<Outcome> {
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
    return { streamed, result: await generation };
  } catch (error) {
    return { streamed, error: error as Error };
  }
}

describe(`soak (${SOAK_SECONDS} s; STRATA_SOAK_SECONDS sets it)`, () => {
  it("random arrivals, bursts, salts, sampling, stop tokens and aborts under preemption and a NATS restart: every output is the request's alone, and no block leaks", { timeout: 60_000 + SOAK_SECONDS * 6_000 }, async () => {
    const rng = new SeededRandom(2026);
    const systemPrompts = [32, 48, 64].map((n) => Array.from({ length: n }, () => 260 + Math.floor(rng.next() * 200)));
    const before = cluster.engine.stats();
    const requests: SoakRequest[] = [];
    const outcomes: Promise<Outcome>[] = [];
    const deadline = performance.now() + SOAK_SECONDS * 1000;
    let restarted: Promise<void> | undefined;
    while (performance.now() < deadline) {
      const burst = rng.next() < 0.1 ? 4 + Math.floor(rng.next() * 8) : 1;
      for (let i = 0; i < burst; i++) {
        const request = soakRequest(rng, systemPrompts);
        requests.push(request);
        outcomes.push(run(request));
      }
      if (!restarted && performance.now() > deadline - (SOAK_SECONDS * 1000) / 2) restarted = nats.server().restart();
      await new Promise((resolve) => setTimeout(resolve, -Math.log(1 - rng.next()) * 25));
    }
    const results = await Promise.all(outcomes);
    await restarted;
    const after = cluster.engine.stats();

    // The load did what it is for.
    const aborted = results.filter((r) => r.error instanceof RequestAbortedError).length;
    expect(results.filter((r) => r.error && !(r.error instanceof RequestAbortedError)).map((r) => r.error!.message)).toEqual([]);
    expect(aborted).toBeGreaterThan(0);
    expect(after.preemptions - before.preemptions).toBeGreaterThan(0);
    expect(after.prefixHitTokens - before.prefixHitTokens).toBeGreaterThan(0);
    expect(requests.some((r) => r.req.seed !== undefined && r.abortAfter === undefined)).toBe(true);

    // Nothing held once traffic stops.
    expect(await cluster.waitForBlocksFreed(30_000)).toEqual([0, 0]);
    for (const d of await cluster.pipeline.describeAll()) {
      expect(d.kv!.sequences).toBe(0);
      expect(d.kv!.blocksFree + d.kv!.blocksCached).toBe(d.kv!.blocksTotal);
    }
    expect(cluster.engine.numRunning).toBe(0);
    expect(cluster.engine.numWaiting).toBe(0);

    // Each request again, alone.
    for (const [i, request] of requests.entries()) {
      const alone = await cluster.engine.generate(request.req);
      const soaked = results[i];
      const label = `request ${i}: ${JSON.stringify({ ...request.req, promptIds: request.req.promptIds.length })}, abort after ${request.abortAfter}`;
      if (soaked.result) {
        expect(soaked.result.tokenIds, label).toEqual(alone.tokenIds);
        expect(soaked.result.finishReason, label).toBe(alone.finishReason);
      }
      expect(soaked.streamed, label).toEqual(alone.tokenIds.slice(0, soaked.streamed.length));
    }
    expect(await cluster.waitForBlocksFreed(30_000)).toEqual([0, 0]);
  });
});
