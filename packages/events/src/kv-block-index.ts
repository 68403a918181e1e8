import type { KvBlockEventBatch } from "@strata/proto";

/** A pool's block hashes at one event id: what GET /debug/kv/blocks answers. */
export interface KvBlockSnapshot {
  eventId: bigint;
  blockHashes: string[];
}

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");

/**
 * A consumer's copy of one pool's matchable block hashes (what a KV-aware router keeps),
 * rebuilt from strata.kv.events batches. Core NATS may drop messages: a batch whose event id
 * skips one means some were lost, so the index asks for a snapshot and holds later batches until
 * it gets one. Pure: the caller does the I/O.
 */
export class KvBlockIndex {
  readonly hashes = new Set<string>();
  lastEventId = 0n;
  gaps = 0;
  private held: KvBlockEventBatch[] | undefined;

  /** True while a gap is waiting for loadSnapshot. */
  get needsSnapshot(): boolean {
    return this.held !== undefined;
  }

  /** Applies a batch in order; on a gap, holds it and returns "gap" (load a snapshot next). */
  apply(batch: KvBlockEventBatch): "applied" | "stale" | "gap" {
    if (this.held) {
      this.held.push(batch);
      return "gap";
    }
    if (batch.eventId <= this.lastEventId) return "stale";
    if (batch.eventId !== this.lastEventId + 1n) {
      this.gaps++;
      this.held = [batch];
      return "gap";
    }
    for (const e of batch.events) {
      switch (e.event.case) {
        case "stored":
          this.hashes.add(hex(e.event.value.blockHash));
          break;
        case "removed":
          this.hashes.delete(hex(e.event.value.blockHash));
          break;
        case "cleared":
          this.hashes.clear();
          break;
      }
    }
    this.lastEventId = batch.eventId;
    return "applied";
  }

  /** Replaces the state with a snapshot, then applies the held batches that come after it. */
  loadSnapshot(snapshot: KvBlockSnapshot): void {
    this.hashes.clear();
    for (const h of snapshot.blockHashes) this.hashes.add(h);
    this.lastEventId = snapshot.eventId;
    const held = (this.held ?? []).sort((a, b) => (a.eventId < b.eventId ? -1 : a.eventId > b.eventId ? 1 : 0));
    this.held = undefined;
    for (const batch of held) this.apply(batch);
  }
}
