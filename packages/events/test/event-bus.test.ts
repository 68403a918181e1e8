import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkEventScope, EventBus, newEventScope, startNatsServer, type NatsServerProcess } from "../src/index.ts";

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
    const scope = newEventScope();
    const publisher = await EventBus.connect(nats.url, "test-pub", scope);
    const subscriber = await EventBus.connect(nats.url, "test-sub");
    const seen: Array<[number, string]> = [];
    subscriber.onEvict(scope, (e) => seen.push([e.seqId, e.reason]));
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
    const scope = newEventScope();
    const publisher = await EventBus.connect(nats.url, "test-adapter-pub", scope);
    const subscriber = await EventBus.connect(nats.url, "test-adapter-sub");
    const seen: Array<[string, number]> = [];
    const lags: Array<[string, number]> = [];
    subscriber.onAdapterInvalidate(scope, (e) => seen.push([e.adapterId, e.generation]));
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
    const bus = await EventBus.connect(nats.url, "test-bad", "bad-payloads");
    const seen: number[] = [];
    const bad: string[] = [];
    bus.onEvict("bad-payloads", (e) => seen.push(e.seqId), (_err, subject) => bad.push(subject));
    await bus.flush();
    bus.connection.publish("strata.kv.evict.bad-payloads.9", new Uint8Array([0xff, 0xff, 0xff]));
    bus.publishEvict(10, "finished");
    await until(() => seen.length === 1 && bad.length === 1);
    expect(bad).toEqual(["strata.kv.evict.bad-payloads.9"]);
    expect(seen).toEqual([10]);
    await bus.close();
  });

  it("keeps clusters apart: events reach the subscribers of their own scope only", async () => {
    const [a, b] = [newEventScope(), newEventScope()];
    expect(a).not.toBe(b);
    const publisherA = await EventBus.connect(nats.url, "scope-pub-a", a);
    const publisherB = await EventBus.connect(nats.url, "scope-pub-b", b);
    const worker = await EventBus.connect(nats.url, "scope-worker");
    const evicted: Array<[string, number]> = [];
    const dropped: Array<[string, string]> = [];
    for (const scope of [a, b]) {
      worker.onEvict(scope, (e) => evicted.push([scope, e.seqId]));
      worker.onAdapterInvalidate(scope, (e) => dropped.push([scope, e.adapterId]));
    }
    const stopA = worker.onEvict(a, (e) => evicted.push(["a again", e.seqId]));
    stopA();
    await worker.flush();
    // Both clusters number their sequences from 1 and serve an adapter of the same name.
    publisherA.publishEvict(1, "finished");
    publisherB.publishEvict(1, "aborted");
    publisherB.publishAdapterInvalidate("tenant-a", 2);
    await Promise.all([publisherA.flush(), publisherB.flush()]);
    await until(() => evicted.length === 2 && dropped.length === 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(evicted.sort()).toEqual([
      [a, 1],
      [b, 1],
    ].sort());
    expect(dropped).toEqual([[b, "tenant-a"]]);
    // A bus without a scope subscribes but cannot publish cluster events; a scope is one subject token.
    expect(() => worker.publishEvict(1, "finished")).toThrow(/without a scope/);
    expect(() => checkEventScope("a.b")).toThrow(/one NATS subject token/);
    expect(() => checkEventScope("*")).toThrow(/one NATS subject token/);
    await expect(EventBus.connect(nats.url, "bad-scope", "x>")).rejects.toThrow(/one NATS subject token/);
    await Promise.all([publisherA.close(), publisherB.close(), worker.close()]);
  });

  it("survives a nats-server restart", async () => {
    const scope = newEventScope();
    const publisher = await EventBus.connect(nats.url, "restart-pub", scope);
    const subscriber = await EventBus.connect(nats.url, "restart-sub");
    const seen: number[] = [];
    subscriber.onEvict(scope, (e) => seen.push(e.seqId));
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
