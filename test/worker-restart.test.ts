import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster, StageFailure } from "@strata/coordinator";
import { GREEDY, loadGreedyOracle, useNats } from "./support/cluster.ts";
import { parsePrometheus } from "./support/prometheus.ts";

// DESIGN.md: no stale KV and no leaks across worker restarts. A worker process is killed and an
// empty one takes its port: the coordinator reloads its layers, forgets the prefix cache (the
// blocks' contents died with the process) and serves the same tokens as before.
const oracle = loadGreedyOracle();
const expected = oracle.token_ids.slice(oracle.prompt_token_ids.length);
// Two full blocks of 16 and a few more: a prefix-cache hit if the cache survived the restart.
const longPrompt = [1, ...Array.from({ length: 39 }, (_, i) => 300 + ((i * 17) % 200))];
const nats = useNats();
beforeAll(nats.start);
afterAll(nats.stop);

async function until(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  // A worker that is still starting refuses connections: that is a "not yet".
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The oracle's story, token for token, then every stage back to no block in use. */
async function expectStoryThenNoBlockUsed(cluster: LocalCluster): Promise<void> {
  const story = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 60, sampling: GREEDY, stopTokenIds: [] });
  expect(story.tokenIds).toEqual(expected.slice(0, 60));
  await until(async () => {
    await cluster.engine.reconcile();
    return (await cluster.pipeline.describeAll()).every((d) => d.kv?.blocksUsed === 0);
  }, 20_000);
}

describe("worker restart", () => {
  it("a crashed stage is reloaded; requests in flight through it recompute to the same tokens, later ones are token-exact, and nothing stale or leaked remains", async () => {
    const lines: string[] = [];
    const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), log: (line) => lines.push(line) });
    try {
      const before = await cluster.engine.generate({ promptIds: longPrompt, maxTokens: 20, sampling: GREEDY, stopTokenIds: [] });

      // Crash the last stage while requests are running, greedy and sampled: their batches in
      // flight are lost, and they recompute once the stage is back, to the same tokens.
      const sampled = { promptIds: oracle.prompt_token_ids, maxTokens: 60, sampling: { temperature: 0.9, topP: 0.95, topK: 0 }, seed: 4242, stopTokenIds: [] };
      const sampledAlone = (await cluster.engine.generate(sampled)).tokenIds;
      let crashed: Promise<void> | undefined;
      let tokens = 0;
      const crashAfter20Tokens = () => void (++tokens === 20 && (crashed = cluster.crashWorker(1)));
      const greedyInFlight = Array.from({ length: 4 }, () =>
        cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 60, sampling: GREEDY, stopTokenIds: [], onToken: crashAfter20Tokens }),
      );
      const sampledStreamed: number[] = [];
      const sampledInFlight = cluster.engine.generate({ ...sampled, onToken: (id) => (sampledStreamed.push(id), crashAfter20Tokens()) });
      for (const outcome of await Promise.all(greedyInFlight)) expect(outcome.tokenIds).toEqual(expected.slice(0, 60));
      expect((await sampledInFlight).tokenIds).toEqual(sampledAlone);
      // A client streaming it saw each token once, in order, across the crash.
      expect(sampledStreamed).toEqual(sampledAlone);
      await crashed;
      expect(cluster.engine.stats().lostBatchRecomputes).toBeGreaterThan(0);
      // They were held while the stage was down, and let go once it was back.
      expect(lines.some((l) => l.startsWith("a stage lost a micro-batch"))).toBe(true);
      expect(lines.some((l) => l.startsWith("every stage answers loaded"))).toBe(true);

      await until(async () => {
        await cluster.recoverStages();
        return (await cluster.pipeline.describeAll()).every((d) => d.loaded);
      }, 30_000);

      const hitsBefore = cluster.engine.stats().prefixHitTokens;
      const after = await cluster.engine.generate({ promptIds: longPrompt, maxTokens: 20, sampling: GREEDY, stopTokenIds: [] });
      expect(after.tokenIds).toEqual(before.tokenIds);
      // The cached blocks of the first request lived partly on the dead worker: no hit allowed.
      expect(cluster.engine.stats().prefixHitTokens).toBe(hitsBefore);
      await expectStoryThenNoBlockUsed(cluster);
    } finally {
      await cluster.stop();
    }
  });

  it("over 3 workers, a crash of the middle one mid-run: requests in flight recompute to the oracle's tokens", async () => {
    const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url() });
    try {
      let crashed: Promise<void> | undefined;
      let tokens = 0;
      const inFlight = Array.from({ length: 4 }, () =>
        cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 60, sampling: GREEDY, stopTokenIds: [], onToken: () => void (++tokens === 20 && (crashed = cluster.crashWorker(1))) }),
      );
      for (const outcome of await Promise.all(inFlight)) expect(outcome.tokenIds).toEqual(expected.slice(0, 60));
      await crashed;
      expect(cluster.engine.stats().lostBatchRecomputes).toBeGreaterThan(0);
      await expectStoryThenNoBlockUsed(cluster);
    } finally {
      await cluster.stop();
    }
  });

  it.each([1, 0])("a stage that stays down (worker %i, stopped as a lost host's) fails the requests held for it once the wait runs out, and fails new ones at once while it is down", async (worker) => {
    const lines: string[] = [];
    const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), lostBatchWaitMs: 1500, log: (line) => lines.push(line) });
    const recoveryWait = async () => parsePrometheus(await cluster.telemetry.metrics.registry.metrics()).value("strata_stage_recovery_wait");
    try {
      let lost: Promise<void> | undefined;
      let tokens = 0;
      const inFlight = cluster.engine
        .generate({ promptIds: oracle.prompt_token_ids, maxTokens: 60, sampling: GREEDY, stopTokenIds: [], onToken: () => void (++tokens === 10 && (lost = cluster.loseWorker(worker))) })
        .then(
          () => "finished",
          (error: Error) => error,
        );
      await until(async () => cluster.engine.holdingForRecovery, 20_000);
      expect(await recoveryWait()).toBe(1);
      const outcome = await inFlight;
      await lost;
      // It waited for the stage, did not get it back, and failed with the stage's error.
      expect(outcome).toBeInstanceOf(StageFailure);
      expect(cluster.engine.holdingForRecovery).toBe(false);
      expect(await recoveryWait()).toBe(0);
      expect(lines.filter((l) => l.startsWith("a stage lost a micro-batch") || l.startsWith("the stages were not back within 1.5 s"))).toHaveLength(2);
      expect(cluster.engine.stats().lostBatchRecomputes).toBe(1);
      // While the stage is still down, a new request is not held: it fails with the stage's error.
      const next = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 8, sampling: GREEDY }).catch((e: Error) => e);
      expect(next).toBeInstanceOf(StageFailure);
      expect(cluster.engine.holdingForRecovery).toBe(false);
    } finally {
      await cluster.stop();
    }
  });

  it("a worker process that dies is started again on its port by the cluster itself and reloaded; it then serves the same tokens, with nothing leaked", async () => {
    const lines: string[] = [];
    const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), log: (line) => lines.push(line) });
    try {
      const before = await cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: 60, sampling: GREEDY, stopTokenIds: [] });
      expect(before.tokenIds).toEqual(expected.slice(0, 60));
      const [, pid] = cluster.workerPids();
      process.kill(pid!, "SIGKILL");
      // No drill helper: the cluster sees the exit, starts a new process and reloads its stage.
      await until(async () => lines.some((l) => l.includes("reloaded stage 1")), 30_000);
      expect(lines.some((l) => l.includes("worker 1 exited (killed by SIGKILL)"))).toBe(true);
      expect(cluster.workerPids()[1]).not.toBe(pid);
      await expectStoryThenNoBlockUsed(cluster);
    } finally {
      await cluster.stop();
    }
  });
});
