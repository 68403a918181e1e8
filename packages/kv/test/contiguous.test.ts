import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ContiguousAllocator, KvExtentUnavailableError, KvReservationExceededError, SequenceExistsError, UnknownSequenceError } from "../src/index.ts";

describe("ContiguousAllocator", () => {
  it("reserves first fit, frees with merging, and shows external fragmentation in stats", () => {
    const a = new ContiguousAllocator({ totalTokens: 10 });
    expect(a.admit(1, 3, 2)).toBe(0);
    expect(a.admit(2, 4, 1)).toBe(3);
    expect(a.admit(3, 3)).toBe(7);
    expect(a.stats()).toEqual({ tokensTotal: 10, tokensReserved: 10, tokensUsed: 3, tokensFree: 0, largestFreeExtentTokens: 0, freeExtents: 0, sequences: 3 });
    expect(a.free(1)).toBe(3);
    expect(a.free(3)).toBe(3);
    // 6 tokens free, but in two pieces of 3: a 4-token reservation does not fit.
    expect(a.stats()).toMatchObject({ tokensReserved: 4, tokensUsed: 1, tokensFree: 6, largestFreeExtentTokens: 3, freeExtents: 2, sequences: 1 });
    expect(a.canAdmit(4)).toBe(false);
    expect(() => a.admit(4, 4)).toThrow(KvExtentUnavailableError);
    expect(a.admit(4, 2)).toBe(0); // the lowest extent that fits
    expect(a.stats()).toMatchObject({ largestFreeExtentTokens: 3, freeExtents: 2 });
    expect(a.free(2)).toBe(4);
    // [2, 3) + [3, 7) + [7, 10) merge into one extent.
    expect(a.stats()).toMatchObject({ tokensReserved: 2, tokensFree: 8, largestFreeExtentTokens: 8, freeExtents: 1 });
    a.checkInvariants();
  });

  it("grows within the reservation only, never shrinking", () => {
    const a = new ContiguousAllocator({ totalTokens: 16 });
    a.admit(7, 8, 5);
    expect(a.canGrow(7, 8)).toBe(true);
    expect(a.canGrow(7, 9)).toBe(false);
    a.grow(7, 6);
    a.grow(7, 3);
    expect(a.extent(7)).toEqual({ startToken: 0, reservedTokens: 8, lengthTokens: 6 });
    expect(() => a.grow(7, 9)).toThrow(KvReservationExceededError);
    expect(a.stats().tokensUsed).toBe(6);
  });

  it("rejects bad calls with typed errors and changes nothing", () => {
    const a = new ContiguousAllocator({ totalTokens: 8 });
    a.admit(1, 4);
    expect(() => a.admit(1, 2)).toThrow(SequenceExistsError);
    expect(() => a.admit(2, 2, 3)).toThrow(KvReservationExceededError);
    expect(() => a.admit(2, 0)).toThrow(RangeError);
    expect(() => a.grow(9, 1)).toThrow(UnknownSequenceError);
    expect(a.free(9)).toBe(0); // eviction events may arrive twice
    expect(a.stats()).toMatchObject({ tokensReserved: 4, sequences: 1 });
    a.checkInvariants();
  });

  type Op = { op: "admit"; seqId: number; reserve: number; length: number } | { op: "grow"; seqId: number; by: number } | { op: "free"; seqId: number };
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ op: fc.constant("admit" as const), seqId: fc.integer({ min: 0, max: 7 }), reserve: fc.integer({ min: 1, max: 12 }), length: fc.integer({ min: 0, max: 12 }) }),
    fc.record({ op: fc.constant("grow" as const), seqId: fc.integer({ min: 0, max: 7 }), by: fc.integer({ min: 0, max: 4 }) }),
    fc.record({ op: fc.constant("free" as const), seqId: fc.integer({ min: 0, max: 7 }) }),
  );

  it("keeps extents tiling the range and counts exact under random admit / grow / free", () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 60 }), (ops) => {
        const a = new ContiguousAllocator({ totalTokens: 32 });
        const live = new Map<number, { reserve: number; length: number }>();
        for (const o of ops) {
          if (o.op === "admit") {
            const fits = a.canAdmit(o.reserve);
            try {
              a.admit(o.seqId, o.reserve, Math.min(o.length, o.reserve));
              expect(fits && !live.has(o.seqId)).toBe(true);
              live.set(o.seqId, { reserve: o.reserve, length: Math.min(o.length, o.reserve) });
            } catch (e) {
              expect(e instanceof SequenceExistsError ? live.has(o.seqId) : !fits).toBe(true);
            }
          } else if (o.op === "grow") {
            const s = live.get(o.seqId);
            if (s === undefined) continue;
            const target = s.length + o.by;
            if (target <= s.reserve) {
              a.grow(o.seqId, target);
              s.length = target;
            } else expect(() => a.grow(o.seqId, target)).toThrow(KvReservationExceededError);
          } else {
            expect(a.free(o.seqId)).toBe(live.get(o.seqId)?.reserve ?? 0);
            live.delete(o.seqId);
          }
          a.checkInvariants();
          const st = a.stats();
          const reserved = [...live.values()].reduce((x, s) => x + s.reserve, 0);
          expect(st.tokensReserved).toBe(reserved);
          expect(st.tokensUsed).toBe([...live.values()].reduce((x, s) => x + s.length, 0));
          expect(st.tokensFree).toBe(32 - reserved);
          expect(st.largestFreeExtentTokens).toBeLessThanOrEqual(st.tokensFree);
        }
        for (const id of [...live.keys()]) a.free(id);
        expect(a.stats()).toMatchObject({ tokensReserved: 0, tokensUsed: 0, largestFreeExtentTokens: 32, freeExtents: 1 });
      }),
      { numRuns: 300 },
    );
  });
});
