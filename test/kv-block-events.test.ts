import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventBus, KvBlockIndex } from "@strata/events";
import type { KvBlockEventBatch } from "@strata/proto";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { useNats } from "./support/cluster.ts";
import { startApiServer, type ApiServer } from "./support/api-server.ts";

// strata.kv.events.<pool id>: a consumer that rebuilds the prefix cache's block hashes from the
// events alone agrees with the coordinator's snapshot, through sharing, LRU eviction and
// preemption; one that misses a batch sees the gap and resyncs from GET /debug/kv/blocks.

const nats = useNats();
let cluster: LocalCluster;
let api: ApiServer;
let bus: EventBus;
const batches: KvBlockEventBatch[] = [];

beforeAll(async () => {
  await nats.start();
  // 22 blocks on the 3-layer stage (16 tokens × K and V × 3 layers × 4 KV heads × 8 dims × 4
  // bytes each): 4 running 65-token sequences hold 20, so cached prefixes must be evicted.
  cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), inProcessWorkers: true, kvCacheBytes: 22 * 16 * 2 * 3 * 4 * 8 * 4, warmUp: false });
  api = await startApiServer(cluster, BUNDLED_MODEL_DIR);
  bus = await EventBus.connect(nats.url(), "test-kv-events");
  bus.onKvBlockEvents((b) => batches.push(b));
  await bus.flush();
});

afterAll(async () => {
  await bus?.close();
  await api?.close();
  await cluster?.stop();
  await nats.stop();
});

async function snapshot(): Promise<{ pool_id: string; event_id: number; block_hashes: string[] }> {
  return (await (await fetch(`${api.url}/debug/kv/blocks`)).json()) as { pool_id: string; event_id: number; block_hashes: string[] };
}

async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 20));
  }
}

function prompt(prefix: number, suffix: number): number[] {
  return [1, ...Array.from({ length: 47 }, (_, i) => 10 + ((prefix * 31 + i) % 400)), ...Array.from({ length: 9 }, (_, i) => 20 + ((suffix * 7 + i) % 300))];
}

describe("KV block events over NATS", () => {
  it("a consumer rebuilt from the events holds exactly the pool's matchable blocks, through eviction", async () => {
    // Rounds of requests sharing 3-block prefixes, more distinct prefixes than the pool holds.
    for (let round = 0; round < 4; round++) {
      await Promise.all(
        Array.from({ length: 4 }, (_, i) =>
          api.client.completions.create({ model: "stories260K", prompt: prompt(round * 2 + (i % 2), i), max_tokens: 8, temperature: 0 }),
        ),
      );
    }
    const snap = await snapshot();
    expect(snap.pool_id).toBe(cluster.engine.poolId);
    await until(() => batches.length > 0 && batches[batches.length - 1].eventId === BigInt(snap.event_id));

    const index = new KvBlockIndex();
    for (const b of batches) expect(index.apply(b)).toBe("applied");
    expect(index.gaps).toBe(0);
    expect([...index.hashes].sort()).toEqual([...snap.block_hashes].sort());
    expect(snap.block_hashes.length).toBeGreaterThan(0);
    const kinds = new Set(batches.flatMap((b) => b.events.map((e) => e.event.case)));
    expect(kinds.has("stored")).toBe(true);
    expect(kinds.has("removed")).toBe(true); // the pool is too small to keep every prefix
    expect(batches.map((b) => b.eventId)).toEqual(batches.map((_, i) => BigInt(i + 1)));
    expect(batches.every((b) => b.poolId === snap.pool_id && b.publishedUnixMs > 0)).toBe(true);
  });

  it("a consumer that misses a batch sees the gap, resyncs from the snapshot, and then agrees again", async () => {
    const index = new KvBlockIndex();
    const lost = 2;
    batches.forEach((b, i) => i !== lost && index.apply(b));
    expect(index.needsSnapshot).toBe(true);
    expect(index.gaps).toBe(1);
    const snap = await snapshot();
    index.loadSnapshot({ eventId: BigInt(snap.event_id), blockHashes: snap.block_hashes });
    expect(index.needsSnapshot).toBe(false);

    // More traffic after the resync is applied on top of the snapshot.
    const seen = batches.length;
    await api.client.completions.create({ model: "stories260K", prompt: prompt(40, 1), max_tokens: 4, temperature: 0 });
    const after = await snapshot();
    await until(() => batches[batches.length - 1].eventId === BigInt(after.event_id));
    for (const b of batches.slice(seen)) expect(index.apply(b)).toBe("applied");
    expect([...index.hashes].sort()).toEqual([...after.block_hashes].sort());
  });
});
