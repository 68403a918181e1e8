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
 * a stage keeps what it needs to check each chunk, count its used blocks and free on eviction.
 */
export class StageBlockTables {
  private readonly seqs = new Map<number, StageSequence>();
  private readonly refCounts: Uint32Array;
  private usedBlocks = 0;
  sequencesEvicted = 0;

  constructor(
    readonly numBlocks: number,
    readonly blockSizeTokens: number,
  ) {
    this.refCounts = new Uint32Array(numBlocks);
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

  /** Records seqId's table for positions [0, newLength); the table only grows. */
  assign(seqId: number, newLength: number, blockIds: readonly number[]): readonly number[] {
    this.check(seqId, newLength, blockIds);
    let seq = this.seqs.get(seqId);
    if (!seq) {
      seq = { lengthTokens: 0, blocks: [] };
      this.seqs.set(seqId, seq);
    }
    for (let i = 0; i < blockIds.length; i++) {
      if (seq.blocks[i] === blockIds[i]) continue;
      if (i < seq.blocks.length && seq.blocks[i] !== NO_BLOCK) this.release(seq.blocks[i]);
      seq.blocks[i] = blockIds[i];
      if (blockIds[i] !== NO_BLOCK) this.acquire(blockIds[i]);
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

  /** free() for an eviction event; counts the sequences it actually dropped. */
  evict(seqId: number): void {
    if (!this.seqs.has(seqId)) return;
    this.free(seqId);
    this.sequencesEvicted++;
  }

  /** Blocks referenced by at least one live sequence. */
  get blocksUsed(): number {
    return this.usedBlocks;
  }

  private get(seqId: number): StageSequence {
    const seq = this.seqs.get(seqId);
    if (!seq) throw new UnknownSequenceError(seqId);
    return seq;
  }

  private acquire(block: number): void {
    if (this.refCounts[block]++ === 0) this.usedBlocks++;
  }

  private release(block: number): boolean {
    if (--this.refCounts[block] === 0) {
      this.usedBlocks--;
      return true;
    }
    return false;
  }
}
