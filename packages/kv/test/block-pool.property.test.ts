import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BlockPool, KvCapacityError, SequenceExistsError, type ExtraKey } from "../src/index.ts";

// Small alphabet, small pool, few ids: prefix hits, shared blocks, evictions and id clashes are
// all common in a run of a few dozen operations.
const SEQ_IDS = 6;
const KEY_SETS: readonly (readonly ExtraKey[])[] = [
  [],
  [{ kind: "salt", value: "x" }],
  [{ kind: "adapter", value: "x" }],
  [{ kind: "adapter", value: "x" }, { kind: "salt", value: "y" }],
];
const BASE_PROMPTS = [
  [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1],
  [1, 2, 1, 2, 0, 0, 0, 0, 1],
  [2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
];
const token = fc.integer({ min: 0, max: 2 });

type Op =
  | { op: "start"; seqId: number; base: number; baseLen: number; suffix: number[]; keys: number; prefill: boolean }
  | { op: "grow"; seqId: number; tokens: number[]; passTokens: boolean }
  | { op: "fork"; parent: number; child: number }
  | { op: "free"; seqId: number }
  | { op: "evict"; count: number }
  | { op: "reset" };

const seqId = fc.integer({ min: 0, max: SEQ_IDS - 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("start" as const),
      seqId,
      base: fc.integer({ min: 0, max: BASE_PROMPTS.length - 1 }),
      baseLen: fc.integer({ min: 0, max: 11 }),
      suffix: fc.array(token, { maxLength: 4 }),
      keys: fc.integer({ min: 0, max: KEY_SETS.length - 1 }),
      prefill: fc.boolean(),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("grow" as const),
      seqId,
      tokens: fc.array(token, { minLength: 1, maxLength: 6 }),
      passTokens: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("fork" as const), parent: seqId, child: seqId }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("free" as const), seqId }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("evict" as const), count: fc.integer({ min: 0, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("reset" as const) }) },
);

interface ModelSeq {
  /** Tokens this sequence has (a reserve may still be pending for the tail of a prompt). */
  tokens: number[];
  keys: number;
}

/**
 * Drives a pool as an engine would, with a stand-in for the KV tensors: `storage[block][slot]`
 * holds what was "computed" there (keys and token). After every step each live sequence must
 * read back exactly its own tokens under its own keys; a block shared, matched or reused wrongly
 * shows up as a mismatch.
 */
class Harness {
  readonly pool: BlockPool;
  readonly seqs = new Map<number, ModelSeq>();
  readonly storage: (string | undefined)[][];
  capacityErrors = 0;
  // What a block-event consumer knows: the pool's matchable hashes, rebuilt from events alone.
  readonly replayedHashes = new Set<string>();

  constructor(
    readonly numBlocks: number,
    readonly blockSizeTokens: number,
    enablePrefixCaching: boolean,
  ) {
    this.pool = new BlockPool({ numBlocks, blockSizeTokens, enablePrefixCaching, recordBlockEvents: true });
    this.storage = Array.from({ length: numBlocks }, () => new Array<string | undefined>(blockSizeTokens));
  }

  apply(op: Op): void {
    switch (op.op) {
      case "start": {
        const prompt = [...BASE_PROMPTS[op.base].slice(0, op.baseLen), ...op.suffix];
        if (this.seqs.has(op.seqId)) {
          expect(() => this.pool.allocatePrefix(op.seqId, prompt, KEY_SETS[op.keys])).toThrow(SequenceExistsError);
          return;
        }
        const cachedTokens = this.pool.allocatePrefix(op.seqId, prompt, KEY_SETS[op.keys]);
        expect(cachedTokens % this.blockSizeTokens).toBe(0);
        expect(cachedTokens).toBeLessThanOrEqual(Math.max(0, prompt.length - 1));
        expect(this.pool.length(op.seqId)).toBe(cachedTokens);
        // Attached blocks must already hold this prompt's KV: checked by verify() below.
        this.seqs.set(op.seqId, { tokens: prompt.slice(0, cachedTokens), keys: op.keys });
        if (op.prefill) this.reserve(op.seqId, prompt, prompt.length, true);
        return;
      }
      case "grow": {
        const seq = this.seqs.get(op.seqId);
        if (seq === undefined) return;
        const tokens = [...seq.tokens, ...op.tokens];
        this.reserve(op.seqId, tokens, tokens.length, op.passTokens);
        return;
      }
      case "fork": {
        const parent = this.seqs.get(op.parent);
        if (parent === undefined) return;
        if (this.seqs.has(op.child)) {
          expect(() => this.pool.fork(op.parent, op.child)).toThrow(SequenceExistsError);
          return;
        }
        const partial = parent.tokens.length % this.blockSizeTokens !== 0;
        if (partial && this.pool.stats().blocksFree + this.pool.stats().blocksCached === 0) {
          this.expectUnchangedAfterCapacityError(() => this.pool.fork(op.parent, op.child));
          return;
        }
        const copy = this.pool.fork(op.parent, op.child);
        expect(copy === null).toBe(!partial);
        if (copy !== null) this.storage[copy.copiedTo] = [...this.storage[copy.copiedFrom]];
        this.seqs.set(op.child, { tokens: [...parent.tokens], keys: parent.keys });
        return;
      }
      case "free": {
        const seq = this.seqs.get(op.seqId);
        const tableBlocks = seq === undefined ? 0 : this.pool.blockTable(op.seqId).length;
        const released = this.pool.free(op.seqId);
        expect(released).toBeLessThanOrEqual(tableBlocks);
        this.seqs.delete(op.seqId);
        expect(this.pool.free(op.seqId)).toBe(0);
        return;
      }
      case "evict": {
        const before = this.pool.stats();
        const evicted = this.pool.evictCached(op.count);
        expect(evicted).toBe(Math.min(op.count, before.blocksCached));
        expect(this.pool.stats().evictions).toBe(before.evictions + evicted);
        return;
      }
      case "reset": {
        this.pool.reset();
        expect(this.pool.stats().blocksCached).toBe(0);
        return;
      }
    }
  }

  /** Reserves up to newLength and "computes" the new positions into storage. */
  private reserve(seqId: number, tokens: number[], newLength: number, passTokens: boolean): void {
    const seq = this.seqs.get(seqId)!;
    const oldLength = this.pool.length(seqId);
    const canReserve = this.pool.canReserve(seqId, newLength);
    if (!canReserve) {
      this.expectUnchangedAfterCapacityError(() =>
        this.pool.reserve(seqId, newLength, passTokens ? tokens : undefined),
      );
      return;
    }
    this.pool.reserve(seqId, newLength, passTokens ? tokens : undefined);
    const table = this.pool.blockTable(seqId);
    for (let p = oldLength; p < newLength; p++) {
      this.storage[table[Math.floor(p / this.blockSizeTokens)]][p % this.blockSizeTokens] = `${seq.keys}:${tokens[p]}`;
    }
    seq.tokens = tokens.slice(0, newLength);
  }

  private expectUnchangedAfterCapacityError(call: () => unknown): void {
    const before = this.snapshot();
    expect(call).toThrow(KvCapacityError);
    this.capacityErrors++;
    expect(this.snapshot()).toEqual(before);
  }

  private snapshot(): unknown {
    const tables = [...this.seqs.keys()].map((id) => [id, this.pool.length(id), [...this.pool.blockTable(id)]]);
    return { stats: this.pool.stats(), tables };
  }

  verify(): void {
    this.pool.checkInvariants();
    for (const event of this.pool.drainBlockEvents()) {
      if (event.kind === "cleared") this.replayedHashes.clear();
      else if (event.kind === "removed") expect(this.replayedHashes.delete(event.blockHash)).toBe(true);
      else {
        expect(this.replayedHashes.has(event.blockHash)).toBe(false);
        this.replayedHashes.add(event.blockHash);
      }
    }
    expect([...this.replayedHashes].sort()).toEqual(this.pool.blockHashes().sort());
    const stats = this.pool.stats();
    expect(stats.blocksTotal).toBe(this.numBlocks);
    expect(stats.blocksFree + stats.blocksUsed + stats.blocksCached).toBe(this.numBlocks);
    expect(stats.sequences).toBe(this.seqs.size);
    const referenced = new Set<number>();
    for (const [id, seq] of this.seqs) {
      expect(this.pool.has(id)).toBe(true);
      expect(this.pool.length(id)).toBe(seq.tokens.length);
      const table = this.pool.blockTable(id);
      expect(table.length).toBe(Math.ceil(seq.tokens.length / this.blockSizeTokens));
      for (const block of table) referenced.add(block);
      const readBack = seq.tokens.map(
        (_, p) => this.storage[table[Math.floor(p / this.blockSizeTokens)]][p % this.blockSizeTokens],
      );
      expect(readBack).toEqual(seq.tokens.map((t) => `${seq.keys}:${t}`));
    }
    expect(stats.blocksUsed).toBe(referenced.size);
    expect(stats.prefixHitTokens).toBeLessThanOrEqual(stats.prefixQueryTokens);
  }

  drain(): void {
    for (const id of [...this.seqs.keys()]) {
      this.pool.free(id);
      this.seqs.delete(id);
      this.verify();
    }
    const drained = this.pool.stats();
    expect(drained.blocksUsed).toBe(0);
    expect(drained.sequences).toBe(0);
    expect(drained.blocksFree + drained.blocksCached).toBe(this.numBlocks);
    this.pool.reset();
    this.verify();
    expect(this.pool.stats()).toMatchObject({ blocksUsed: 0, blocksCached: 0, blocksFree: this.numBlocks });
  }
}

describe("BlockPool under random interleavings", () => {
  // fast-check's default size keeps arrays to about ten items; interleavings need longer runs.
  const ops = fc.array(opArb, { maxLength: 80, size: "max" });
  const config = fc.record({
    numBlocks: fc.integer({ min: 1, max: 12 }),
    blockSizeTokens: fc.integer({ min: 1, max: 4 }),
    enablePrefixCaching: fc.boolean(),
  });

  it("keeps its counts, ref counts and hashes consistent and never serves another's KV", () => {
    fc.assert(
      fc.property(config, ops, (cfg, ops) => {
        const h = new Harness(cfg.numBlocks, cfg.blockSizeTokens, cfg.enablePrefixCaching);
        for (const op of ops) {
          h.apply(op);
          h.verify();
        }
        h.drain();
      }),
      { numRuns: 300 },
    );
  });

  it("reaches prefix hits, evictions and capacity errors (the properties above are not vacuous)", () => {
    let hits = 0;
    let evictions = 0;
    let capacityErrors = 0;
    fc.assert(
      fc.property(ops, (ops) => {
        const h = new Harness(6, 2, true);
        for (const op of ops) h.apply(op);
        const stats = h.pool.stats();
        hits += stats.prefixHitTokens;
        evictions += stats.evictions;
        capacityErrors += h.capacityErrors;
      }),
      { numRuns: 100, seed: 42 },
    );
    expect(hits).toBeGreaterThan(0);
    expect(evictions).toBeGreaterThan(0);
    expect(capacityErrors).toBeGreaterThan(0);
  });
});
