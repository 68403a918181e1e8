import { NO_BLOCK } from "./block-pool.ts";
import { UnknownSequenceError } from "./errors.ts";

export class BlockTableError extends Error {
  override name = "BlockTableError";
}

interface StageSequence {
  lengthTokens: number;
  blocks: number[];
}

/**
 * A stage's record of the block tables the coordinator assigned. The coordinator's BlockPool owns
 * allocation (so every stage uses the same block ids and prefix sharing holds on all of them);
 * a stage keeps what it needs to check each chunk, count its blocks and free on eviction.
 *
 * Its counts are this stage's own view: a block is used while a live sequence here references
 * it, cached while none does but it still holds a whole block of KV a sequence wrote (what a
 * prefix hit reuses), free otherwise; used + cached + free = numBlocks. A new sequence whose
 * first chunk starts past position 0 is a prefix hit: its leading blocks' KV was already here.
 */
export class StageBlockTables {
  private readonly seqs = new Map<number, StageSequence>();
  private readonly refCounts: Uint32Array;
  // 1 while a block holds all blockSizeTokens positions of KV that some sequence wrote.
  private readonly holdsKv: Uint8Array;
  private usedBlocks = 0;
  private cachedBlocks = 0;
  sequencesEvicted = 0;
  /** Sequences freed by a preemption's eviction (they are recomputed later under new ids). */
  preemptions = 0;
  /** New sequences admitted, those that began past position 0, and the positions they skipped. */
  prefixQueries = 0;
  prefixHits = 0;
  prefixHitTokens = 0;

  constructor(
    readonly numBlocks: number,
    readonly blockSizeTokens: number,
  ) {
    this.refCounts = new Uint32Array(numBlocks);
    this.holdsKv = new Uint8Array(numBlocks);
  }

  has(seqId: number): boolean {
    return this.seqs.has(seqId);
  }

  length(seqId: number): number {
    return this.get(seqId).lengthTokens;
  }

  blockTable(seqId: number): readonly number[] {
    return this.get(seqId).blocks;
  }

  sequenceIds(): number[] {
    return [...this.seqs.keys()].sort((a, b) => a - b);
  }

  /** Checks a table for positions [0, newLength) without changing anything. */
  check(seqId: number, newLength: number, blockIds: readonly number[]): void {
    const needed = Math.ceil(newLength / this.blockSizeTokens);
    if (blockIds.length < needed) {
      throw new BlockTableError(`sequence ${seqId}: ${blockIds.length} blocks cannot hold ${newLength} positions of ${this.blockSizeTokens}`);
    }
    const bad = blockIds.find((b) => b !== NO_BLOCK && (!Number.isInteger(b) || b < 0 || b >= this.numBlocks));
    if (bad !== undefined) throw new BlockTableError(`sequence ${seqId}: block id ${bad} is outside this stage's ${this.numBlocks} blocks`);
  }

  /**
   * Records seqId's table for positions [0, newLength), the chunk writing [writeFrom, newLength)
   * (default: from the sequence's current length); the table only grows.
   */
  assign(seqId: number, newLength: number, blockIds: readonly number[], writeFrom?: number): readonly number[] {
    this.check(seqId, newLength, blockIds);
    let seq = this.seqs.get(seqId);
    if (!seq) {
      seq = { lengthTokens: 0, blocks: [] };
      this.seqs.set(seqId, seq);
      this.prefixQueries++;
      if (writeFrom !== undefined && writeFrom > 0) {
        this.prefixHits++;
        this.prefixHitTokens += writeFrom;
      }
    }
    const from = writeFrom ?? seq.lengthTokens;
    const bs = this.blockSizeTokens;
    for (let i = 0; i < blockIds.length; i++) {
      const block = blockIds[i];
      if (seq.blocks[i] !== block) {
        if (i < seq.blocks.length && seq.blocks[i] !== NO_BLOCK) this.release(seq.blocks[i]);
        seq.blocks[i] = block;
        if (block !== NO_BLOCK) this.acquire(block);
      }
      if (block === NO_BLOCK || (i + 1) * bs <= from || i * bs >= newLength) continue;
      // Written from its start, the block no longer holds what it held; whole, it holds this.
      if (i * bs >= from) this.holdsKv[block] = 0;
      if ((i + 1) * bs <= newLength) this.holdsKv[block] = 1;
    }
    seq.lengthTokens = Math.max(seq.lengthTokens, newLength);
    return seq.blocks;
  }

  /** Forgets seqId; returns how many blocks no sequence on this stage references any more. */
  free(seqId: number): number {
    const seq = this.seqs.get(seqId);
    if (!seq) return 0;
    this.seqs.delete(seqId);
    let released = 0;
    for (const block of seq.blocks) if (block !== NO_BLOCK && this.release(block)) released++;
    return released;
  }

  /** free() for an eviction event (`preempted`: a preemption's); counts the sequences it actually dropped. */
  evict(seqId: number, preempted = false): void {
    if (!this.seqs.has(seqId)) return;
    this.free(seqId);
    this.sequencesEvicted++;
    if (preempted) this.preemptions++;
  }

  /** Blocks referenced by at least one live sequence. */
  get blocksUsed(): number {
    return this.usedBlocks;
  }

  /** Blocks no live sequence references that still hold a whole block of KV (see the class). */
  get blocksCached(): number {
    return this.cachedBlocks;
  }

  /** Blocks neither used nor cached. */
  get blocksFree(): number {
    return this.numBlocks - this.usedBlocks - this.cachedBlocks;
  }

  private get(seqId: number): StageSequence {
    const seq = this.seqs.get(seqId);
    if (!seq) throw new UnknownSequenceError(seqId);
    return seq;
  }

  private acquire(block: number): void {
    if (this.refCounts[block]++ === 0) {
      this.usedBlocks++;
      if (this.holdsKv[block]) this.cachedBlocks--;
    }
  }

  private release(block: number): boolean {
    if (--this.refCounts[block] === 0) {
      this.usedBlocks--;
      if (this.holdsKv[block]) this.cachedBlocks++;
      return true;
    }
    return false;
  }
}
