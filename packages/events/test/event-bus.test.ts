import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventBus, startNatsServer, type NatsServerProcess } from "../src/index.ts";

let nats: NatsServerProcess;
beforeAll(async () => {
  nats = await startNatsServer();
});
afterAll(async () => {
  await nats.stop();
});

async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("event bus over a real nats-server", () => {
  it("delivers eviction events keyed by sequence id", async () => {
    const publisher = await EventBus.connect(nats.url, "test-pub");
    const subscriber = await EventBus.connect(nats.url, "test-sub");
    const seen: Array<[number, string]> = [];
    subscriber.onEvict((e) => seen.push([e.seqId, e.reason]));
    await subscriber.flush();
    publisher.publishEvict(7, "finished");
    publisher.publishEvict(4_000_000_000, "aborted");
    await publisher.flush();
    await until(() => seen.length === 2);
    expect(seen).toEqual([
      [7, "finished"],
      [4_000_000_000, "aborted"],
    ]);
    await publisher.close();
    await subscriber.close();
  });

  it("delivers adapter switch events keyed by adapter id, with their lag", async () => {
    const publisher = await EventBus.connect(nats.url, "test-adapter-pub");
    const subscriber = await EventBus.connect(nats.url, "test-adapter-sub");
    const seen: Array<[string, number]> = [];
    const lags: Array<[string, number]> = [];
    subscriber.onAdapterInvalidate((e) => seen.push([e.adapterId, e.generation]));
    subscriber.onLag = (kind, seconds) => lags.push([kind, seconds]);
    await subscriber.flush();
    publisher.publishAdapterInvalidate("tenant-a", 3);
    await publisher.flush();
    await until(() => seen.length === 1);
    expect(seen).toEqual([["tenant-a", 3]]);
    expect(lags).toHaveLength(1);
    expect(lags[0][0]).toBe("adapter_invalidate");
    expect(lags[0][1]).toBeGreaterThanOrEqual(0);
    expect(lags[0][1]).toBeLessThan(5);
    expect(subscriber.eventCounts()).toContainEqual({ direction: "received", kind: "adapter_invalidate", reason: "unloaded", count: 1 });
    await publisher.close();
    await subscriber.close();
  });

  it("reports a malformed payload and keeps delivering", async () => {
    const bus = await EventBus.connect(nats.url, "test-bad");
    const seen: number[] = [];
    const bad: string[] = [];
    bus.onEvict((e) => seen.push(e.seqId), (_err, subject) => bad.push(subject));
    await bus.flush();
    bus.connection.publish("strata.kv.evict.9", new Uint8Array([0xff, 0xff, 0xff]));
    bus.publishEvict(10, "finished");
    await until(() => seen.length === 1 && bad.length === 1);
    expect(bad).toEqual(["strata.kv.evict.9"]);
    expect(seen).toEqual([10]);
    await bus.close();
  });

  it("survives a nats-server restart", async () => {
    const publisher = await EventBus.connect(nats.url, "restart-pub");
    const subscriber = await EventBus.connect(nats.url, "restart-sub");
    const seen: number[] = [];
    subscriber.onEvict((e) => seen.push(e.seqId));
    await subscriber.flush();
    await nats.restart();
    // Clients reconnect on their own; keep publishing until the resubscribed consumer sees one.
    await until(() => {
      publisher.publishEvict(11, "finished");
      return seen.includes(11);
    }, 20_000);
    await publisher.close();
    await subscriber.close();
  });
});
