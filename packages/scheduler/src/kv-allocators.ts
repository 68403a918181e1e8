import { BlockPool, ContiguousAllocator, type BlockEvent, type ExtraKey, type KvPoolStats } from "@strata/kv";

/** What the scheduler needs from KV allocation, whichever allocator stands behind it. */
export interface SchedulerKvAllocator {
  /**
   * Creates seqId for its prompt if its first chunk (up to `firstChunkTokens` beyond any cached
   * prefix) fits; returns the prompt tokens already cached, or null with nothing changed. Also
   * null when its cached prefix holds a block of `unwritten` (blocks the batch being formed
   * writes, which none of its sequences can read as past): the next batch shares it instead.
   */
  admit(seqId: number, tokenIds: readonly number[], extraKeys: readonly ExtraKey[], maxLength: number, firstChunkTokens: number, unwritten: ReadonlySet<number>): number | null;
  canReserve(seqId: number, newLength: number): boolean;
  reserve(seqId: number, newLength: number, tokenIds: readonly number[]): void;
  /**
   * Hashes seqId's full blocks that `writtenTokenIds` covers beyond those hashed when reserved:
   * tokens whose KV every stage has written, so the blocks can be matched at once.
   */
  hashWrittenBlocks(seqId: number, writtenTokenIds: readonly number[]): void;
  blockTable(seqId: number): readonly number[];
  free(seqId: number): void;
  /** Sliding window: gives back blocks wholly before `firstNeededToken`. */
  dropBlocksBefore(seqId: number, firstNeededToken: number): void;
  /** Forgets every cached content hash (a batch failed: its blocks may hold nothing). */
  reset(): void;
  stats(): KvPoolStats;
  /** Prefix-cache block events since the last call (none unless asked for at construction). */
  drainBlockEvents(): BlockEvent[];
  /** Hashes of every block the prefix cache can match now. */
  blockHashes(): string[];
}

/** Paged blocks allocated as sequences grow, with prefix caching (the default). */
export class PagedKvAllocator implements SchedulerKvAllocator {
  private readonly pool: BlockPool;

  constructor(opts: { numBlocks: number; blockSizeTokens: number; enablePrefixCaching: boolean; recordBlockEvents?: boolean }) {
    this.pool = new BlockPool(opts);
  }

  admit(seqId: number, tokenIds: readonly number[], extraKeys: readonly ExtraKey[], _maxLength: number, firstChunkTokens: number, unwritten: ReadonlySet<number>): number | null {
    const match = this.pool.matchPrefix(tokenIds, extraKeys);
    if (match.blocks.some((block) => unwritten.has(block))) return null;
    const cached = this.pool.allocatePrefix(seqId, tokenIds, extraKeys, match);
    if (this.pool.canReserve(seqId, cached + Math.min(tokenIds.length - cached, firstChunkTokens))) return cached;
    this.pool.free(seqId);
    return null;
  }

  canReserve(seqId: number, newLength: number): boolean {
    return this.pool.canReserve(seqId, newLength);
  }

  // Token ids register the blocks a chunk fills in the prefix cache. Stages run batches in
  // order, so a later batch that shares these blocks reads them after they are written; the
  // batch that writes them must not (admit's `unwritten`).
  reserve(seqId: number, newLength: number, tokenIds: readonly number[]): void {
    this.pool.reserve(seqId, newLength, tokenIds);
  }

  hashWrittenBlocks(seqId: number, writtenTokenIds: readonly number[]): void {
    // Reserving what it holds already takes no block: it only extends the hash chain.
    if (this.pool.has(seqId)) this.pool.reserve(seqId, writtenTokenIds.length, writtenTokenIds);
  }

  blockTable(seqId: number): readonly number[] {
    return this.pool.blockTable(seqId);
  }

  free(seqId: number): void {
    this.pool.free(seqId);
  }

  dropBlocksBefore(seqId: number, firstNeededToken: number): void {
    this.pool.dropBlocksBefore(seqId, firstNeededToken);
  }

  reset(): void {
    this.pool.reset();
  }

  stats(): KvPoolStats {
    return this.pool.stats();
  }

  drainBlockEvents(): BlockEvent[] {
    return this.pool.drainBlockEvents();
  }

  blockHashes(): string[] {
    return this.pool.blockHashes();
  }
}

/**
 * The pre-PagedAttention baseline, for comparison (`--kv-allocator contiguous`): each sequence
 * reserves consecutive blocks for its whole possible length at admission and keeps them to the
 * end. No prefix sharing, no preemption ever needed, and the unused tails are the waste paging removes.
 */
export class ContiguousKvAllocator implements SchedulerKvAllocator {
  private readonly extents: ContiguousAllocator;
  private readonly tables = new Map<number, number[]>();

  constructor(
    private readonly numBlocks: number,
    private readonly blockSizeTokens: number,
  ) {
    // Measured in blocks, so every extent starts on a block boundary.
    this.extents = new ContiguousAllocator({ totalTokens: numBlocks });
  }

  admit(seqId: number, _tokenIds: readonly number[], _extraKeys: readonly ExtraKey[], maxLength: number): number | null {
    const blocks = Math.ceil(maxLength / this.blockSizeTokens);
    if (!this.extents.canAdmit(blocks)) return null;
    const first = this.extents.admit(seqId, blocks);
    this.tables.set(seqId, Array.from({ length: blocks }, (_, i) => first + i));
    return 0;
  }

  canReserve(seqId: number, newLength: number): boolean {
    return this.extents.canGrow(seqId, Math.ceil(newLength / this.blockSizeTokens));
  }

  reserve(seqId: number, newLength: number): void {
    this.extents.grow(seqId, Math.ceil(newLength / this.blockSizeTokens));
  }

  hashWrittenBlocks(): void {
    // No content addressing.
  }

  blockTable(seqId: number): readonly number[] {
    return this.tables.get(seqId) ?? [];
  }

  free(seqId: number): void {
    this.extents.free(seqId);
    this.tables.delete(seqId);
  }

  dropBlocksBefore(): void {
    // Reserved extents are kept whole: that is the baseline's cost.
  }

  reset(): void {}

  // No content addressing: nothing to report.
  drainBlockEvents(): BlockEvent[] {
    return [];
  }

  blockHashes(): string[] {
    return [];
  }

  stats(): KvPoolStats {
    const s = this.extents.stats();
    return {
      blockSizeTokens: this.blockSizeTokens,
      blocksTotal: this.numBlocks,
      // Reserved blocks count as used: no other sequence can have them.
      blocksUsed: s.tokensReserved,
      blocksCached: 0,
      blocksFree: this.numBlocks - s.tokensReserved,
      sequences: s.sequences,
      prefixQueryTokens: 0,
      prefixHitTokens: 0,
      evictions: 0,
    };
  }
}
