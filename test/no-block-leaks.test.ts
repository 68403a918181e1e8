import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster, RequestAbortedError, type GenerateResult } from "@strata/coordinator";
import { expectNoBlocksHeld, GREEDY, loadGreedyOracle, useNats } from "./support/cluster.ts";

// No block leaks: once traffic stops, every stage's used block count goes back to 0, whether
// requests ended by length, by a stop token, or by their client aborting them.

const oracle = loadGreedyOracle();
const generatedIds = oracle.token_ids.slice(oracle.prompt_token_ids.length);
const PERIOD = 426; // "." in tok512: the greedy story reaches it after ten tokens
const nats = useNats();
let cluster: LocalCluster;

// Small KV budget so that the batch below does not fit at once: requests wait for admission and
// reuse blocks that finished ones gave back.
const BLOCK_SIZE = 16;
const BYTES_PER_TOKEN_3_LAYERS = 2 * 3 * 4 * 8 * 4; // stories260K: 4 KV heads × head_dim 8, f32
const KV_CACHE_BYTES = 24 * BLOCK_SIZE * BYTES_PER_TOKEN_3_LAYERS;

beforeAll(async () => {
  await nats.start();
  cluster = await LocalCluster.start({
    modelDir: BUNDLED_MODEL_DIR,
    workers: 2,
    natsUrl: nats.url(),
    inProcessWorkers: true,
    blockSizeTokens: BLOCK_SIZE,
    kvCacheBytes: KV_CACHE_BYTES,
  });
});
afterAll(async () => {
  await cluster?.stop();
  await nats.stop();
});

/** The rejection a promise settles with (or its value), observed from the start so none goes unhandled. */
function settle<T>(p: Promise<T>): Promise<T | Error> {
  return p.then(
    (v) => v,
    (e: Error) => e,
  );
}

async function usedBlocks(): Promise<number[]> {
  return (await cluster.pipeline.describeAll()).map((d) => d.kv!.blocksUsed);
}

describe("no KV block leaks", () => {
  it("8 concurrent generations of different lengths, some ended by a stop token, free every block", async () => {
    const text = (n: number) => Array.from({ length: n }, (_, i) => 260 + ((i * 7) % 200));
    const requests = [
      { promptIds: oracle.prompt_token_ids, maxTokens: 60 },
      { promptIds: oracle.prompt_token_ids, maxTokens: 60, stopTokenIds: [PERIOD] },
      { promptIds: [1, ...text(40)], maxTokens: 30 },
      { promptIds: [1, ...text(3)], maxTokens: 100 },
      { promptIds: oracle.prompt_token_ids, maxTokens: 40, stopTokenIds: [PERIOD] },
      { promptIds: [1, ...text(70)], maxTokens: 9 },
      { promptIds: [1], maxTokens: 17 },
      { promptIds: [1, ...text(15)], maxTokens: 50, stopTokenIds: [PERIOD, 13] },
    ];
    // The batch needs more blocks than the tightest stage holds, so some requests wait for others.
    const stages = await cluster.pipeline.describeAll();
    const blocksWanted = requests.reduce((sum, r) => sum + Math.ceil((r.promptIds.length + r.maxTokens) / BLOCK_SIZE), 0);
    expect(blocksWanted).toBeGreaterThan(Math.min(...stages.map((s) => s.kv!.blocksTotal)));

    let sawBlocksInUse: Promise<number[]> | undefined;
    const results = await Promise.all(
      requests.map((r, i) =>
        cluster.engine.generate({
          ...r,
          sampling: GREEDY,
          // While a request streams, its KV is still held on every stage.
          onToken: i === 0 ? () => (sawBlocksInUse ??= usedBlocks()) : undefined,
        }),
      ),
    );

    expect((await sawBlocksInUse!).every((n) => n > 0)).toBe(true);
    expect(results[0].tokenIds).toEqual(generatedIds);
    expect(results[0].finishReason).toBe("length");
    // Stopped at the first period, which is not emitted.
    const firstPeriod = generatedIds.indexOf(PERIOD);
    expect(firstPeriod).toBeGreaterThan(0);
    for (const r of [results[1], results[4]]) {
      expect(r.finishReason).toBe("stop");
      expect(r.tokenIds).toEqual(generatedIds.slice(0, firstPeriod));
    }
    results.forEach((r: GenerateResult, i) => {
      if (r.finishReason === "length") expect(r.tokenIds).toHaveLength(requests[i].maxTokens);
      else expect(r.tokenIds.length).toBeLessThan(requests[i].maxTokens);
    });
    await expectNoBlocksHeld(cluster);
  });

  it("aborted requests free their blocks: mid-decode, while queued, and before they start", async () => {
    const mid = new AbortController();
    let tokens = 0;
    const midDecode = settle(cluster.engine.generate({
      promptIds: oracle.prompt_token_ids,
      maxTokens: 300,
      sampling: GREEDY,
      signal: mid.signal,
      onToken: () => {
        if (++tokens === 5) mid.abort();
      },
    }));
    // Holds most of the KV budget, so the next request has to wait behind it.
    const hog = cluster.engine.generate({ promptIds: [1], maxTokens: 300, sampling: GREEDY, stopTokenIds: [] });
    const queued = new AbortController();
    const waiting = settle(cluster.engine.generate({ promptIds: [1, 403], maxTokens: 300, sampling: GREEDY, signal: queued.signal }));
    queued.abort();
    const early = new AbortController();
    early.abort();
    const neverStarted = settle(cluster.engine.generate({ promptIds: [1, 403], maxTokens: 10, sampling: GREEDY, signal: early.signal }));

    for (const outcome of await Promise.all([midDecode, waiting, neverStarted])) expect(outcome).toBeInstanceOf(RequestAbortedError);
    expect(tokens).toBeGreaterThanOrEqual(5);
    expect((await hog).tokenIds).toHaveLength(300);
    await expectNoBlocksHeld(cluster);

    // The stages keep serving: the oracle story still comes out whole.
    const after = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: generatedIds.length, sampling: GREEDY });
    expect(after.tokenIds).toEqual(generatedIds);
    await expectNoBlocksHeld(cluster);
  });
});
