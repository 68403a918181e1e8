import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { GREEDY, loadGreedyOracle, useNats } from "./support/cluster.ts";

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
  it("a crashed stage is reloaded; requests after it are token-exact and nothing stale or leaked remains", async () => {
    const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url() });
    try {
      const before = await cluster.engine.generate({ promptIds: longPrompt, maxTokens: 20, sampling: GREEDY, stopTokenIds: [] });

      // Crash the last stage while requests are running; those may fail, nothing else may.
      let crashed: Promise<void> | undefined;
      let tokens = 0;
      const inFlight = Array.from({ length: 4 }, () =>
        cluster.engine
          .generate({ promptIds: oracle.prompt_token_ids, maxTokens: 60, sampling: GREEDY, stopTokenIds: [], onToken: () => void (++tokens === 20 && (crashed = cluster.crashWorker(1))) })
          .then(
            (r) => r.tokenIds,
            () => "failed" as const,
          ),
      );
      const outcomes = await Promise.all(inFlight);
      await crashed;
      for (const outcome of outcomes) if (outcome !== "failed") expect(outcome).toEqual(expected.slice(0, 60));

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
