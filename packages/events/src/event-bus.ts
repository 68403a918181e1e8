import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { KvEvictEventSchema, type KvEvictEvent } from "@strata/proto";
import { SUBJECTS } from "./subjects.ts";

export type EvictReason = "finished" | "aborted" | "preempted";

/** How many events one connection published or received, by kind and reason (for metrics). */
export interface EventCount {
  direction: "published" | "received";
  kind: string;
  reason: string;
  count: number;
}

/** The NATS side of Strata: typed publish/subscribe over the subjects in subjects.ts. */
export class EventBus {
  private readonly subscriptions: Subscription[] = [];
  private readonly counts = new Map<string, EventCount>();

  private constructor(readonly connection: NatsConnection) {}

  static async connect(url: string, name: string): Promise<EventBus> {
    // Reconnect forever: a NATS restart must not take a worker or the coordinator down with it.
    const nc = await connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    return new EventBus(nc);
  }

  publishEvict(seqId: number, reason: EvictReason): void {
    this.connection.publish(SUBJECTS.kvEvict(seqId), toBinary(KvEvictEventSchema, create(KvEvictEventSchema, { seqId, reason })));
    this.count("published", "kv_evict", reason);
  }

  eventCounts(): EventCount[] {
    return [...this.counts.values()];
  }

  private count(direction: EventCount["direction"], kind: string, reason: string): void {
    const key = `${direction}/${kind}/${reason}`;
    const entry = this.counts.get(key);
    if (entry) entry.count++;
    else this.counts.set(key, { direction, kind, reason, count: 1 });
  }

  /** Calls `onEvict` for every eviction event; malformed payloads are reported, not thrown. */
  onEvict(onEvict: (event: KvEvictEvent) => void, onBadPayload: (error: Error, subject: string) => void = () => {}): void {
    const sub = this.connection.subscribe(SUBJECTS.kvEvictAll, {
      callback: (err, msg) => {
        if (err) return onBadPayload(err, SUBJECTS.kvEvictAll);
        try {
          const event = fromBinary(KvEvictEventSchema, msg.data);
          this.count("received", "kv_evict", event.reason);
          onEvict(event);
        } catch (error) {
          onBadPayload(error as Error, msg.subject);
        }
      },
    });
    this.subscriptions.push(sub);
  }

  /**
   * Calls `onReconnect` each time the connection comes back. Core NATS is at-most-once: what
   * was published while a subscriber was away is gone, so owners of state re-check it here.
   */
  onReconnect(onReconnect: () => void): void {
    void (async () => {
      for await (const status of this.connection.status()) {
        if (status.type === "reconnect") onReconnect();
      }
    })();
  }

  /** Resolves once the server has seen everything published so far. */
  async flush(): Promise<void> {
    await this.connection.flush();
  }

  async close(): Promise<void> {
    for (const sub of this.subscriptions) sub.unsubscribe();
    await this.connection.drain().catch(() => this.connection.close());
  }
}
