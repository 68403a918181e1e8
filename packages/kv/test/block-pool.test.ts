import { describe, expect, it } from "vitest";
import { BlockPool, KvCapacityError, SequenceExistsError, UnknownSequenceError } from "../src/index.ts";

const range = (start: number, end: number): number[] => Array.from({ length: end - start }, (_, i) => start + i);

/** Everything observable about a pool, for "nothing changed" checks. */
function snapshot(pool: BlockPool, seqIds: number[]): unknown {
  return {
    stats: pool.stats(),
    seqs: seqIds.map((id) => (pool.has(id) ? [id, pool.length(id), [...pool.blockTable(id)]] : [id, null])),
  };
}

describe("BlockPool allocation", () => {
  it("allocates a block per blockSizeTokens, crossing block boundaries", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSizeTokens: 4 });
    const blocks: number[] = [];
    for (let len = 1; len <= 9; len++) {
      pool.reserve(1, len);
      blocks.push(pool.blockTable(1).length);
      pool.checkInvariants();
    }
    expect(blocks).toEqual([1, 1, 1, 1, 2, 2, 2, 2, 3]);
    expect(pool.blockTable(1)).toEqual([0, 1, 2]);
    expect(pool.length(1)).toBe(9);
    expect(pool.stats()).toMatchObject({ blocksUsed: 3, blocksFree: 5, blocksCached: 0, sequences: 1 });
  });

  it("reports blocks needed and never shrinks", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSizeTokens: 4 });
    expect(pool.blocksNeeded(1, 0)).toBe(0);
    expect(pool.blocksNeeded(1, 9)).toBe(3);
    pool.reserve(1, 5);
    expect(pool.blocksNeeded(1, 8)).toBe(0);
    expect(pool.blocksNeeded(1, 13)).toBe(2);
    pool.reserve(1, 2);
    expect(pool.length(1)).toBe(5);
    expect(pool.blockTable(1)).toEqual([0, 1]);
  });

  it("creates a sequence on reserve, even at length 0", () => {
    const pool = new BlockPool({ numBlocks: 2, blockSizeTokens: 4 });
    expect(pool.has(3)).toBe(false);
    pool.reserve(3, 0);
    expect(pool.has(3)).toBe(true);
    expect(pool.blockTable(3)).toEqual([]);
  });

  it("lists live sequence ids in ascending order", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSizeTokens: 4 });
    for (const id of [7, 2, 5]) pool.reserve(id, 1);
    pool.free(5);
    expect(pool.sequenceIds()).toEqual([2, 7]);
  });

  it("free returns every block to the free list", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSizeTokens: 4 });
    pool.reserve(1, 9);
    pool.reserve(2, 4);
    expect(pool.free(1)).toBe(3);
    expect(pool.has(1)).toBe(false);
    expect(pool.free(2)).toBe(1);
    expect(pool.stats()).toMatchObject({ blocksUsed: 0, blocksFree: 8, blocksCached: 0, sequences: 0 });
    pool.checkInvariants();
  });

  it("frees an unknown or already freed id as a no-op returning 0", () => {
    const pool = new BlockPool({ numBlocks: 4, blockSizeTokens: 4 });
    expect(pool.free(42)).toBe(0);
    pool.reserve(1, 4);
    expect(pool.free(1)).toBe(1);
    expect(pool.free(1)).toBe(0);
    expect(pool.stats().blocksFree).toBe(4);
    pool.checkInvariants();
  });

  it("throws KvCapacityError and leaves state unchanged when blocks run out", () => {
    const pool = new BlockPool({ numBlocks: 4, blockSizeTokens: 4 });
    pool.reserve(1, 10);
    const before = snapshot(pool, [1, 2]);
    expect(pool.canReserve(1, 17)).toBe(false);
    expect(pool.canReserve(2, 5)).toBe(false);
    expect(pool.canReserve(2, 4)).toBe(true);
    const err = (() => {
      try {
        pool.reserve(1, 17);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(KvCapacityError);
    expect(err).toMatchObject({ blocksNeeded: 2, blocksAvailable: 1 });
    expect(() => pool.reserve(2, 5)).toThrow(KvCapacityError);
    expect(snapshot(pool, [1, 2])).toEqual(before);
    expect(pool.has(2)).toBe(false);
    pool.checkInvariants();
  });

  it("throws UnknownSequenceError for ids it does not hold", () => {
    const pool = new BlockPool({ numBlocks: 4, blockSizeTokens: 4 });
    expect(() => pool.blockTable(9)).toThrow(UnknownSequenceError);
    expect(() => pool.length(9)).toThrow(UnknownSequenceError);
    expect(() => pool.fork(9, 10)).toThrow(UnknownSequenceError);
  });

  it("rejects bad ids and lengths", () => {
    const pool = new BlockPool({ numBlocks: 4, blockSizeTokens: 4 });
    expect(() => pool.reserve(-1, 4)).toThrow(RangeError);
    expect(() => pool.reserve(2 ** 32, 4)).toThrow(RangeError);
    expect(() => pool.reserve(1, 1.5)).toThrow(RangeError);
    expect(() => new BlockPool({ numBlocks: 4, blockSizeTokens: 0 })).toThrow(RangeError);
  });
});

describe("BlockPool fork", () => {
  it("shares full blocks and copies the partial last block into a fresh one", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSizeTokens: 4 });
    pool.reserve(1, 10);
    expect(pool.fork(1, 2)).toEqual({ copiedFrom: 2, copiedTo: 3 });
    expect(pool.blockTable(2)).toEqual([0, 1, 3]);
    expect(pool.length(2)).toBe(10);
    expect(pool.stats().blocksUsed).toBe(4);
    pool.checkInvariants();

    expect(pool.free(1)).toBe(1); // only its own partial block; 0 and 1 still held by 2
    expect(pool.free(2)).toBe(3);
    expect(pool.stats()).toMatchObject({ blocksUsed: 0, blocksFree: 8 });
    pool.checkInvariants();
  });

  it("returns null when there is no partial block", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSizeTokens: 4 });
    pool.reserve(1, 8);
    expect(pool.fork(1, 2)).toBeNull();
    expect(pool.blockTable(2)).toEqual([0, 1]);
    expect(() => pool.fork(1, 2)).toThrow(SequenceExistsError);
  });

  it("fails without change when the copy block is not available", () => {
    const pool = new BlockPool({ numBlocks: 2, blockSizeTokens: 4 });
    pool.reserve(1, 6);
    const before = snapshot(pool, [1, 2]);
    expect(() => pool.fork(1, 2)).toThrow(KvCapacityError);
    expect(snapshot(pool, [1, 2])).toEqual(before);
  });
});

describe("BlockPool prefix caching", () => {
  const prompt = range(100, 113); // 13 tokens: 3 full blocks of 4 and one more token

  it("shares the physical blocks of an equal 3-block prefix", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    expect(pool.allocatePrefix(1, prompt)).toBe(0);
    pool.reserve(1, prompt.length, prompt);
    expect(pool.blockTable(1)).toEqual([0, 1, 2, 3]);

    expect(pool.allocatePrefix(2, prompt)).toBe(12);
    expect(pool.length(2)).toBe(12);
    expect(pool.blockTable(2)).toEqual([0, 1, 2]);
    pool.reserve(2, prompt.length, prompt);
    expect(pool.blockTable(2)).toEqual([0, 1, 2, 4]);
    expect(pool.stats()).toMatchObject({ blocksUsed: 5, prefixQueryTokens: 26, prefixHitTokens: 12 });
    pool.checkInvariants();
  });

  it("never serves the whole prompt: the last token is always computed", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    const twelve = prompt.slice(0, 12);
    pool.allocatePrefix(1, twelve);
    pool.reserve(1, 12, twelve);
    expect(pool.allocatePrefix(2, twelve)).toBe(8);
    expect(pool.allocatePrefix(3, prompt.slice(0, 1))).toBe(0);
    expect(pool.allocatePrefix(4, [])).toBe(0);
  });

  it("stops at the first block that differs", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    pool.allocatePrefix(1, prompt);
    pool.reserve(1, prompt.length, prompt);
    const other = [...prompt];
    other[5] = 0; // second block differs, so the third can't match even though its tokens do
    expect(pool.allocatePrefix(2, other)).toBe(4);
    expect(pool.blockTable(2)).toEqual([0]);
  });

  it("keeps freed hashed blocks cached and serves a later prompt from them", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    pool.allocatePrefix(1, prompt);
    pool.reserve(1, prompt.length, prompt);
    expect(pool.free(1)).toBe(4);
    expect(pool.stats()).toMatchObject({ blocksUsed: 0, blocksCached: 3, blocksFree: 13 });
    pool.checkInvariants();

    expect(pool.allocatePrefix(2, prompt)).toBe(12);
    expect(pool.blockTable(2)).toEqual([0, 1, 2]);
    expect(pool.stats()).toMatchObject({ blocksUsed: 3, blocksCached: 0, blocksFree: 13 });
    pool.checkInvariants();
  });

  it("registers hashes as decode fills blocks, so generated text is shared too", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    const tokens = prompt.slice(0, 6);
    pool.allocatePrefix(1, tokens);
    pool.reserve(1, 6, tokens);
    for (const next of [50, 51, 52]) {
      tokens.push(next);
      pool.reserve(1, tokens.length, tokens);
    }
    pool.free(1);
    expect(pool.allocatePrefix(2, [...tokens, 53])).toBe(8);
  });

  it("keeps tenants apart: a different salt gets different blocks", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    const a = [{ kind: "salt", value: "tenant-a" }];
    const b = [{ kind: "salt", value: "tenant-b" }];
    pool.allocatePrefix(1, prompt, a);
    pool.reserve(1, prompt.length, prompt);
    expect(pool.allocatePrefix(2, prompt, b)).toBe(0);
    pool.reserve(2, prompt.length, prompt);
    expect(pool.blockTable(2)).toEqual([4, 5, 6, 7]);
    expect(pool.allocatePrefix(3, prompt, a)).toBe(12);
    expect(pool.blockTable(3)).toEqual([0, 1, 2]);
    expect(pool.allocatePrefix(4, prompt, b)).toBe(12);
    expect(pool.blockTable(4)).toEqual([4, 5, 6]);
    expect(pool.allocatePrefix(5, prompt)).toBe(0);
    pool.checkInvariants();
  });

  it("never shares between salt 'x' and adapter 'x'", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    pool.allocatePrefix(1, prompt, [{ kind: "salt", value: "x" }]);
    pool.reserve(1, prompt.length, prompt);
    pool.free(1);
    expect(pool.allocatePrefix(2, prompt, [{ kind: "adapter", value: "x" }])).toBe(0);
    pool.reserve(2, prompt.length, prompt);
    // 3 was the salted sequence's unhashed partial block; its cached 0, 1, 2 are left alone.
    expect(pool.blockTable(2)).toEqual([3, 4, 5, 6]);
    expect(pool.stats()).toMatchObject({ blocksCached: 3, blocksUsed: 4 });
  });

  it("misses after an adapter reload bumps its generation", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    pool.allocatePrefix(1, prompt, [{ kind: "adapter", value: "lora-a@1" }]);
    pool.reserve(1, prompt.length, prompt);
    expect(pool.allocatePrefix(2, prompt, [{ kind: "adapter", value: "lora-a@2" }])).toBe(0);
  });

  it("gives the fork child its parent's hashes, so its blocks cache too", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    const salt = [{ kind: "salt", value: "s" }];
    pool.allocatePrefix(1, prompt.slice(0, 6), salt);
    pool.reserve(1, 6, prompt.slice(0, 6));
    expect(pool.fork(1, 2)).toEqual({ copiedFrom: 1, copiedTo: 2 });
    const child = [...prompt.slice(0, 6), 9, 9];
    pool.reserve(2, 8, child);
    pool.free(1);
    pool.free(2);
    expect(pool.allocatePrefix(3, [...child, 1], salt)).toBe(8);
    expect(pool.blockTable(3)).toEqual([0, 2]);
    pool.checkInvariants();
  });

  it("keeps one owner per hash when two sequences computed the same block at once", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    pool.allocatePrefix(1, prompt);
    pool.allocatePrefix(2, prompt); // both miss: neither has been computed yet
    pool.reserve(1, prompt.length, prompt);
    pool.reserve(2, prompt.length, prompt);
    expect(pool.blockTable(2)).toEqual([4, 5, 6, 7]);
    pool.checkInvariants();
    expect(pool.free(2)).toBe(4);
    expect(pool.stats()).toMatchObject({ blocksCached: 0, blocksUsed: 4 }); // 2's copies were not cached
    expect(pool.free(1)).toBe(4);
    expect(pool.stats()).toMatchObject({ blocksCached: 3, blocksUsed: 0 });
    pool.checkInvariants();
  });

  it("does nothing with token ids when prefix caching is off", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4 });
    expect(pool.allocatePrefix(1, prompt)).toBe(0);
    pool.reserve(1, prompt.length, prompt);
    pool.free(1);
    expect(pool.stats()).toMatchObject({ blocksCached: 0, blocksFree: 16, prefixQueryTokens: 0 });
    expect(pool.allocatePrefix(2, prompt)).toBe(0);
    expect(() => pool.allocatePrefix(2, prompt)).toThrow(SequenceExistsError);
  });

  it("rejects a bad token id without changing anything", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    pool.allocatePrefix(1, prompt);
    const before = snapshot(pool, [1, 2]);
    expect(() => pool.reserve(1, 8, [1, 2, 3, 4, 5, 6, -7, 8])).toThrow(RangeError);
    expect(() => pool.allocatePrefix(2, [1, 2, 3, 4.5, 5])).toThrow(RangeError);
    expect(snapshot(pool, [1, 2])).toEqual(before);
    pool.checkInvariants();
  });

  it("reset drops the cache; live sequences keep their blocks and release them to free", () => {
    const pool = new BlockPool({ numBlocks: 16, blockSizeTokens: 4, enablePrefixCaching: true });
    pool.allocatePrefix(1, prompt);
    pool.reserve(1, prompt.length, prompt);
    pool.allocatePrefix(2, range(0, 9));
    pool.reserve(2, 9, range(0, 9));
    pool.free(2);
    expect(pool.stats()).toMatchObject({ blocksUsed: 4, blocksCached: 2 });
    pool.reset();
    expect(pool.stats()).toMatchObject({ blocksUsed: 4, blocksCached: 0, blocksFree: 12, evictions: 0 });
    expect(pool.blockTable(1)).toEqual([0, 1, 2, 3]);
    pool.checkInvariants();
    expect(pool.allocatePrefix(3, prompt)).toBe(0);
    pool.free(1);
    pool.free(3);
    expect(pool.stats()).toMatchObject({ blocksUsed: 0, blocksCached: 0, blocksFree: 16 });
    pool.checkInvariants();
  });
});

describe("BlockPool LRU eviction", () => {
  const promptA = range(100, 113); // blocks 0,1,2 full + 3 partial
  const promptB = range(200, 209); // blocks 4,5 full + 6 partial

  function poolWithTwoCachedPrompts(): BlockPool {
    const pool = new BlockPool({ numBlocks: 8, blockSizeTokens: 4, enablePrefixCaching: true });
    pool.allocatePrefix(1, promptA);
    pool.reserve(1, promptA.length, promptA);
    pool.allocatePrefix(2, promptB);
    pool.reserve(2, promptB.length, promptB);
    expect(pool.blockTable(1)).toEqual([0, 1, 2, 3]);
    expect(pool.blockTable(2)).toEqual([4, 5, 6]);
    pool.free(1); // LRU: 2, 1, 0 (a prompt's tail goes first)
    pool.free(2); // LRU: 2, 1, 0, 5, 4
    expect(pool.stats()).toMatchObject({ blocksCached: 5, blocksFree: 3 });
    return pool;
  }

  it("evicts least recently used first, each prompt's tail before its head", () => {
    const pool = poolWithTwoCachedPrompts();
    expect(pool.evictCached(2)).toBe(2); // blocks 2 and 1
    expect(pool.stats()).toMatchObject({ blocksCached: 3, blocksFree: 5, evictions: 2 });
    pool.checkInvariants();
    expect(pool.allocatePrefix(3, promptA)).toBe(4);
    expect(pool.blockTable(3)).toEqual([0]);
    expect(pool.allocatePrefix(4, promptB)).toBe(8);
    expect(pool.blockTable(4)).toEqual([4, 5]);
  });

  it("a prefix hit makes blocks most recently used again", () => {
    const pool = poolWithTwoCachedPrompts();
    expect(pool.allocatePrefix(3, promptA)).toBe(12);
    pool.free(3); // LRU: 5, 4, 2, 1, 0
    expect(pool.evictCached(2)).toBe(2);
    expect(pool.allocatePrefix(4, promptB)).toBe(0);
    expect(pool.allocatePrefix(5, promptA)).toBe(12);
  });

  it("allocation uses free blocks first, then evicts LRU cached blocks transparently", () => {
    const pool = poolWithTwoCachedPrompts();
    pool.reserve(9, 12); // 3 free blocks: 6, 3, 7 in some order, no eviction
    expect(pool.stats()).toMatchObject({ blocksFree: 0, blocksCached: 5, evictions: 0 });
    expect(pool.canReserve(9, 32)).toBe(true);
    pool.reserve(9, 20); // evicts 2, then 1
    expect(pool.blockTable(9).slice(3)).toEqual([2, 1]);
    expect(pool.stats()).toMatchObject({ blocksFree: 0, blocksCached: 3, evictions: 2 });
    pool.checkInvariants();
    expect(pool.allocatePrefix(3, promptA)).toBe(4);
    expect(pool.canReserve(9, 33)).toBe(false);
    expect(() => pool.reserve(9, 33)).toThrow(KvCapacityError);
  });

  it("evictCached stops when the cache is empty", () => {
    const pool = poolWithTwoCachedPrompts();
    expect(pool.evictCached(0)).toBe(0);
    expect(pool.evictCached(100)).toBe(5);
    expect(pool.stats()).toMatchObject({ blocksCached: 0, blocksFree: 8, evictions: 5 });
    pool.checkInvariants();
  });
});
