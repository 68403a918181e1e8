import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventBus, newEventScope } from "@strata/events";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { GREEDY, useNats } from "./support/cluster.ts";

// Clusters on one NATS server (two `pnpm start`s beside the system nats-server, say). Each
// coordinator process numbers its sequences from 1 and announces every finished one on NATS, and
// adapters of one name may be served by several: a stage must act only on its own cluster's
// announcements. Clusters in one process (as here) share the counter, so a coordinator of another
// process is played by a bus of its own scope announcing this cluster's sequence ids.

const nats = useNats();
let a: LocalCluster;
let b: LocalCluster;
beforeAll(async () => {
  await nats.start();
  const opts = { modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), inProcessWorkers: true, warmUp: false };
  [a, b] = await Promise.all([LocalCluster.start(opts), LocalCluster.start(opts)]);
});
afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await nats.stop();
});

const long = { promptIds: [1], maxTokens: 200, sampling: GREEDY, stopTokenIds: [] };

describe("clusters sharing a NATS server", () => {
  it("publish their block events under pools of their own, even from one process", () => {
    expect(a.engine.poolId).not.toBe(b.engine.poolId);
    for (const c of [a, b]) expect(c.engine.poolId).toMatch(new RegExp(`-${process.pid}-[A-Za-z0-9_-]+$`));
  });

  it("never act on each other's evictions: another cluster finishing its sequences 1 to 8 leaves this one's running", async () => {
    const other = await EventBus.connect(nats.url(), "another-coordinator", newEventScope());
    try {
      let tokens = 0;
      let running!: () => void;
      const started = new Promise<void>((resolve) => (running = resolve));
      const interfered = b.engine.generate({ ...long, onToken: () => ++tokens === 3 && running() });
      await started;
      // Another process's sequences 1 to 8 (b's first request is sequence 1 here) and an adapter
      // it unloads; and cluster a's real traffic, each of its requests announced evicted.
      for (let seqId = 1; seqId <= 8; seqId++) other.publishEvict(seqId, "finished");
      other.publishAdapterInvalidate("tenant-a", 1);
      await other.flush();
      for (let i = 0; i < 4; i++) await a.engine.generate({ promptIds: [1], maxTokens: 2, sampling: GREEDY, stopTokenIds: [] });
      const result = await interfered;
      expect(tokens).toBe(long.maxTokens);
      expect(result.tokenIds).toEqual((await b.engine.generate(long)).tokenIds);
      expect(await a.waitForBlocksFreed()).toEqual([0, 0]);
      expect(await b.waitForBlocksFreed()).toEqual([0, 0]);
    } finally {
      await other.close();
    }
  });
});
