import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { KvEvictEventSchema, type KvEvictEvent } from "@strata/proto";
import { SUBJECTS } from "./subjects.ts";

export type EvictReason = "finished" | "aborted" | "preempted";

/** The NATS side of Strata: typed publish/subscribe over the subjects in subjects.ts. */
export class EventBus {
  private readonly subscriptions: Subscription[] = [];

  private constructor(readonly connection: NatsConnection) {}

  static async connect(url: string, name: string): Promise<EventBus> {
    // Reconnect forever: a NATS restart must not take a worker or the coordinator down with it.
    const nc = await connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    return new EventBus(nc);
  }

  publishEvict(seqId: number, reason: EvictReason): void {
    this.connection.publish(SUBJECTS.kvEvict(seqId), toBinary(KvEvictEventSchema, create(KvEvictEventSchema, { seqId, reason })));
  }

  /** Calls `onEvict` for every eviction event; malformed payloads are reported, not thrown. */
  onEvict(onEvict: (event: KvEvictEvent) => void, onBadPayload: (error: Error, subject: string) => void = () => {}): void {
    const sub = this.connection.subscribe(SUBJECTS.kvEvictAll, {
      callback: (err, msg) => {
        if (err) return onBadPayload(err, SUBJECTS.kvEvictAll);
        try {
          onEvict(fromBinary(KvEvictEventSchema, msg.data));
        } catch (error) {
          onBadPayload(error as Error, msg.subject);
        }
      },
    });
    this.subscriptions.push(sub);
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
