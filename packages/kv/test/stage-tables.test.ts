import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BlockTableError, StageBlockTables, UnknownSequenceError } from "../src/index.ts";

describe("StageBlockTables", () => {
  it("counts distinct referenced blocks across shared prefixes", () => {
    const t = new StageBlockTables(8, 4);
    t.assign(1, 10, [0, 1, 2]);
    t.assign(2, 9, [0, 1, 5]); // shares two prefix blocks
    expect(t.blocksUsed).toBe(4);
    expect(t.free(1)).toBe(1); // block 2 only
    expect(t.blocksUsed).toBe(3);
    expect(t.free(2)).toBe(3);
    expect(t.blocksUsed).toBe(0);
    expect(t.free(2)).toBe(0); // eviction events may repeat
  });

  it("grows a table and keeps the length", () => {
    const t = new StageBlockTables(8, 4);
    t.assign(1, 4, [3]);
    t.assign(1, 5, [3, 6]);
    expect(t.blockTable(1)).toEqual([3, 6]);
    expect(t.length(1)).toBe(5);
    expect(t.blocksUsed).toBe(2);
  });

  it("rejects tables too short or out of range, changing nothing", () => {
    const t = new StageBlockTables(4, 4);
    expect(() => t.assign(1, 9, [0, 1])).toThrow(BlockTableError);
    expect(() => t.assign(1, 4, [4])).toThrow(/outside this stage's 4 blocks/);
    expect(t.has(1)).toBe(false);
    expect(t.blocksUsed).toBe(0);
    expect(() => t.length(1)).toThrow(UnknownSequenceError);
  });

  it("keeps a finished sequence's whole blocks as cached, frees its partial last block, and counts a prefix hit that takes them back", () => {
    const t = new StageBlockTables(8, 4);
    t.assign(1, 10, [0, 1, 2], 0); // blocks 0 and 1 whole, 2 holds positions 8-9
    expect([t.blocksUsed, t.blocksCached, t.blocksFree]).toEqual([3, 0, 5]);
    t.free(1);
    expect([t.blocksUsed, t.blocksCached, t.blocksFree]).toEqual([0, 2, 6]);
    // A new sequence whose first chunk starts at 8: its first 8 positions' KV is blocks 0 and 1.
    t.assign(2, 10, [0, 1, 5], 8);
    expect([t.blocksUsed, t.blocksCached, t.blocksFree]).toEqual([3, 0, 5]);
    expect([t.prefixQueries, t.prefixHits, t.prefixHitTokens]).toEqual([2, 1, 8]);
    t.free(2);
    expect(t.blocksCached).toBe(2);
    // Block 1 given to a sequence that writes it from its start: what it held is gone.
    t.assign(3, 2, [1], 0);
    t.free(3);
    expect([t.blocksUsed, t.blocksCached, t.blocksFree]).toEqual([0, 1, 7]);
  });

  it("counts preemptions among evictions", () => {
    const t = new StageBlockTables(8, 4);
    t.assign(1, 4, [0], 0);
    t.assign(2, 4, [1], 0);
    t.assign(3, 4, [2], 0);
    t.evict(1);
    t.evict(2, true);
    t.evict(2, true); // events may repeat
    t.evict(3, false);
    expect([t.sequencesEvicted, t.preemptions]).toEqual([3, 1]);
  });

  it("used + cached + free = total after any interleaving of chunks, frees and evictions; used = 0 once every sequence ends", () => {
    const BLOCKS = 12;
    const BS = 4;
    type Op = { op: "chunk"; seqId: number; blocks: number[]; tokens: number; start: number } | { op: "free"; seqId: number } | { op: "evict"; seqId: number; preempted: boolean };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ op: fc.constant("chunk" as const), seqId: fc.integer({ min: 1, max: 4 }), blocks: fc.array(fc.integer({ min: 0, max: BLOCKS - 1 }), { minLength: 4, maxLength: 4 }), tokens: fc.integer({ min: 1, max: 6 }), start: fc.integer({ min: 0, max: 8 }) }),
      fc.record({ op: fc.constant("free" as const), seqId: fc.integer({ min: 1, max: 4 }) }),
      fc.record({ op: fc.constant("evict" as const), seqId: fc.integer({ min: 1, max: 4 }), preempted: fc.boolean() }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const t = new StageBlockTables(BLOCKS, BS);
        for (const o of ops) {
          if (o.op === "chunk") {
            // A known sequence continues where it is; a new one may start past 0 (a prefix hit).
            const start = t.has(o.seqId) ? t.length(o.seqId) : o.start;
            const end = Math.min(start + o.tokens, 4 * BS);
            if (end <= start) continue;
            const table = t.has(o.seqId) ? [...t.blockTable(o.seqId), ...o.blocks].slice(0, Math.ceil(end / BS)) : o.blocks.slice(0, Math.ceil(end / BS));
            t.assign(o.seqId, end, table, start);
          } else if (o.op === "free") t.free(o.seqId);
          else t.evict(o.seqId, o.preempted);
          expect(t.blocksUsed + t.blocksCached + t.blocksFree).toBe(BLOCKS);
          expect(t.blocksCached).toBeGreaterThanOrEqual(0);
          expect(t.blocksFree).toBeGreaterThanOrEqual(0);
          expect(t.preemptions).toBeLessThanOrEqual(t.sequencesEvicted);
        }
        for (const id of t.sequenceIds()) t.free(id);
        expect(t.blocksUsed).toBe(0);
        expect(t.blocksCached + t.blocksFree).toBe(BLOCKS);
      }),
    );
  });
});
