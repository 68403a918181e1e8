import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  AdapterInvalidateEventSchema,
  KvBlockEventBatchSchema,
  KvEvictEventSchema,
  type AdapterInvalidateEvent,
  type KvBlockEventBatch,
  type KvEvictEvent,
} from "@strata/proto";
import { checkEventScope, SUBJECTS } from "./subjects.ts";

// Sub-millisecond wall clock: lags on one host are tens of microseconds.
const wallClockMs = () => performance.timeOrigin + performance.now();

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
  /** Called for every event received with its lag (receipt minus the publisher's clock), in seconds. */
  onLag: ((kind: string, seconds: number) => void) | undefined;

  /**
   * @param scope the cluster this bus publishes eviction and adapter events for (one subject
   * token): only stages loaded with the same scope act on them.
   */
  private constructor(
    readonly connection: NatsConnection,
    readonly scope: string | undefined,
  ) {}

  /** `scope`: the cluster this bus publishes for; a bus that only subscribes (a worker) needs none. */
  static async connect(url: string, name: string, scope?: string): Promise<EventBus> {
    if (scope !== undefined) checkEventScope(scope);
    // Reconnect forever: a NATS restart must not take a worker or the coordinator down with it.
    const nc = await connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    return new EventBus(nc, scope);
  }

  private publishScope(): string {
    if (this.scope === undefined) throw new Error("this event bus was connected without a scope: it cannot publish cluster events");
    return this.scope;
  }

  publishEvict(seqId: number, reason: EvictReason): void {
    this.connection.publish(SUBJECTS.kvEvict(this.publishScope(), seqId), toBinary(KvEvictEventSchema, create(KvEvictEventSchema, { seqId, reason, publishedUnixMs: wallClockMs() })));
    this.count("published", "kv_evict", reason);
  }

  /** Tells every worker of this cluster to drop `adapterId` if it holds `generation` or older. */
  publishAdapterInvalidate(adapterId: string, generation: number): void {
    const event = create(AdapterInvalidateEventSchema, { adapterId, generation, publishedUnixMs: wallClockMs() });
    this.connection.publish(SUBJECTS.adapterSwitch(this.publishScope(), adapterId), toBinary(AdapterInvalidateEventSchema, event));
    this.count("published", "adapter_invalidate", "unloaded");
  }

  /** One batch of prefix-cache block events; the caller numbers batches (event_id) without gaps. */
  publishKvBlockEvents(batch: Omit<KvBlockEventBatch, "$typeName" | "publishedUnixMs">): void {
    const message = create(KvBlockEventBatchSchema, { ...batch, publishedUnixMs: wallClockMs() });
    this.connection.publish(SUBJECTS.kvBlockEvents(batch.poolId), toBinary(KvBlockEventBatchSchema, message));
    this.count("published", "kv_block_events", "batch");
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

  /** Calls `onEvict` for every eviction event of cluster `scope`; malformed payloads are reported, not thrown. Returns the unsubscribe. */
  onEvict(scope: string, onEvict: (event: KvEvictEvent) => void, onBadPayload: (error: Error, subject: string) => void = () => {}): () => void {
    return this.subscribe(SUBJECTS.kvEvictAll(checkEventScope(scope)), KvEvictEventSchema, "kv_evict", (e) => e.reason, onEvict, onBadPayload);
  }

  /** Calls `onInvalidate` for every adapter invalidation event of cluster `scope`; malformed payloads are reported, not thrown. Returns the unsubscribe. */
  onAdapterInvalidate(scope: string, onInvalidate: (event: AdapterInvalidateEvent) => void, onBadPayload: (error: Error, subject: string) => void = () => {}): () => void {
    return this.subscribe(SUBJECTS.adapterSwitchAll(checkEventScope(scope)), AdapterInvalidateEventSchema, "adapter_invalidate", () => "unloaded", onInvalidate, onBadPayload);
  }

  /** Calls `onBatch` for every block-event batch of every pool; malformed payloads are reported, not thrown. */
  onKvBlockEvents(onBatch: (batch: KvBlockEventBatch) => void, onBadPayload: (error: Error, subject: string) => void = () => {}): () => void {
    return this.subscribe(SUBJECTS.kvBlockEventsAll, KvBlockEventBatchSchema, "kv_block_events", () => "batch", onBatch, onBadPayload);
  }

  private subscribe<S extends DescMessage>(
    subject: string,
    schema: S,
    kind: string,
    reasonOf: (event: MessageShape<S> & { publishedUnixMs: number }) => string,
    onEvent: (event: MessageShape<S> & { publishedUnixMs: number }) => void,
    onBadPayload: (error: Error, subject: string) => void,
  ): () => void {
    const sub = this.connection.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return onBadPayload(err, subject);
        try {
          const event = fromBinary(schema, msg.data) as MessageShape<S> & { publishedUnixMs: number };
          this.count("received", kind, reasonOf(event));
          // 0: a publisher that predates the timestamp; its lag is unknown.
          if (event.publishedUnixMs > 0) this.onLag?.(kind, Math.max(0, wallClockMs() - event.publishedUnixMs) / 1000);
          onEvent(event);
        } catch (error) {
          onBadPayload(error as Error, msg.subject);
        }
      },
    });
    this.subscriptions.push(sub);
    return () => {
      sub.unsubscribe();
      this.subscriptions.splice(this.subscriptions.indexOf(sub), 1);
    };
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
