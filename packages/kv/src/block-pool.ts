import { KvCapacityError, SequenceExistsError, UnknownSequenceError } from "./errors.ts";
import { encodeExtraKeys, hashBlockEncoded, hashToHex, type ExtraKey } from "./hash.ts";

export interface BlockPoolOptions {
  numBlocks: number;
  blockSizeTokens: number;
  enablePrefixCaching?: boolean;
  /** Keep a log of block events for drainBlockEvents (default off: nobody drains it). */
  recordBlockEvents?: boolean;
}

/**
 * What happened to the prefix cache's content-addressed blocks: a block got a hash (stored), a
 * hashed block was evicted and its content forgotten (removed), or every hash was dropped
 * (cleared). Hashes are lowercase hex SHA-256 (see hash.ts); a parent of null starts a chain.
 */
export type BlockEvent =
  | { kind: "stored"; blockHash: string; parentHash: string | null }
  | { kind: "removed"; blockHash: string }
  | { kind: "cleared" };

export interface KvPoolStats {
  blockSizeTokens: number;
  blocksTotal: number;
  /** Blocks referenced by at least one live sequence. */
  blocksUsed: number;
  /** Unreferenced blocks that keep a content hash and can be reused by a prefix match. */
  blocksCached: number;
  /** Blocks holding nothing. blocksFree + blocksUsed + blocksCached = blocksTotal. */
  blocksFree: number;
  sequences: number;
  /** Prompt tokens looked up by allocatePrefix since construction. */
  prefixQueryTokens: number;
  /** Of those, tokens served from the cache. */
  prefixHitTokens: number;
  /** Cached blocks evicted (LRU), by allocation or by evictCached; reset() is not counted. */
  evictions: number;
}

/** What fork's caller must copy: the parent's partial last block into the child's fresh one. */
export interface ForkCopy {
  copiedFrom: number;
  copiedTo: number;
}

interface Sequence {
  readonly blocks: number[];
  lengthTokens: number;
  /**
   * Content hashes of this sequence's leading full blocks, as far as its token ids are known.
   * Kept apart from the blocks' own hashes: a block computed twice by two sequences at once keeps
   * no hash (only one block may own a hash), but both sequences still know its content.
   */
  readonly chain: Uint8Array[];
  readonly encodedExtraKeys: Uint8Array;
}

/** A prompt's cached prefix as matchPrefix found it: its blocks and their content hashes. */
export interface PrefixMatch {
  readonly blocks: readonly number[];
  readonly chain: readonly Uint8Array[];
  readonly encodedExtraKeys: Uint8Array;
}

const NO_EXTRA_KEYS = encodeExtraKeys([]);

/**
 * A block-table entry whose block was given back: every position in it lies outside the sliding
 * window of every later query. Stages read nothing there (the attention mask hides it).
 */
export const NO_BLOCK = 0xffff_ffff;

function checkIndex(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${name} must be an integer in [0, ${max}], got ${value}`);
  }
}

const checkSeqId = (seqId: number): void => checkIndex("seqId", seqId, 0xffff_ffff);
const checkTokens = (name: string, value: number): void => checkIndex(name, value, Number.MAX_SAFE_INTEGER);

/**
 * Paged KV block manager for one stage: block ids, per-sequence block tables, ref counts and the
 * prefix cache. The KV tensors live elsewhere, indexed by block id.
 *
 * Every block is in exactly one state: free (refcount 0, no hash), cached (refcount 0, hashed,
 * in the LRU) or used (refcount > 0, hashed or not).
 */
export class BlockPool {
  readonly numBlocks: number;
  readonly blockSizeTokens: number;
  readonly prefixCachingEnabled: boolean;

  private readonly refCounts: Int32Array;
  private readonly blockHashKeys: (string | null)[];
  // A stack: the most recently freed block is reused first.
  private readonly freeBlocks: number[] = [];
  // Insertion order is LRU order: the first entry is evicted first.
  private readonly cachedLru = new Set<number>();
  private readonly blockByHash = new Map<string, number>();
  private readonly seqs = new Map<number, Sequence>();
  private usedBlocks = 0;
  private prefixQueryTokens = 0;
  private prefixHitTokens = 0;
  private evictions = 0;
  private readonly blockEvents: BlockEvent[] | undefined;

  constructor(opts: BlockPoolOptions) {
    checkIndex("numBlocks", opts.numBlocks, 0x7fff_ffff);
    if (!Number.isInteger(opts.blockSizeTokens) || opts.blockSizeTokens < 1) {
      throw new RangeError(`blockSizeTokens must be a positive integer, got ${opts.blockSizeTokens}`);
    }
    this.numBlocks = opts.numBlocks;
    this.blockSizeTokens = opts.blockSizeTokens;
    this.prefixCachingEnabled = opts.enablePrefixCaching ?? false;
    this.refCounts = new Int32Array(opts.numBlocks);
    this.blockHashKeys = new Array<string | null>(opts.numBlocks).fill(null);
    this.blockEvents = opts.recordBlockEvents ? [] : undefined;
    // Pushed in reverse so allocation hands out 0, 1, 2, ...
    for (let b = opts.numBlocks - 1; b >= 0; b--) this.freeBlocks.push(b);
  }

  /** New blocks seqId would need to hold positions [0, newLength). */
  blocksNeeded(seqId: number, newLength: number): number {
    checkSeqId(seqId);
    checkTokens("newLength", newLength);
    const have = this.seqs.get(seqId)?.blocks.length ?? 0;
    return Math.max(0, Math.ceil(newLength / this.blockSizeTokens) - have);
  }

  canReserve(seqId: number, newLength: number): boolean {
    return this.blocksNeeded(seqId, newLength) <= this.allocatableBlocks();
  }

  /**
   * Makes room for positions [0, newLength), creating the sequence if new; never shrinks it.
   * With prefix caching on, `tokenIds` (the sequence's tokens so far) registers content hashes
   * for the blocks it fills, so later prompts can share them. A registered block can be matched
   * at once, so pass tokens whose KV is written before any sequence admitted later reads it.
   * Throws KvCapacityError, with nothing changed, when free plus evictable blocks fall short.
   */
  reserve(seqId: number, newLength: number, tokenIds?: ArrayLike<number>): void {
    const needed = this.blocksNeeded(seqId, newLength);
    const available = this.allocatableBlocks();
    if (needed > available) throw new KvCapacityError(needed, available);

    const existing = this.seqs.get(seqId);
    const seq = existing ?? newSequence(NO_EXTRA_KEYS);
    const lengthTokens = Math.max(seq.lengthTokens, newLength);
    // Hashed before any change so a bad token id leaves the pool as it was.
    const newHashes =
      tokenIds !== undefined && this.prefixCachingEnabled ? this.extendChain(seq, lengthTokens, tokenIds) : [];

    if (existing === undefined) this.seqs.set(seqId, seq);
    for (let i = 0; i < needed; i++) seq.blocks.push(this.takeBlock());
    seq.lengthTokens = lengthTokens;
    for (const hash of newHashes) {
      const block = seq.blocks[seq.chain.length];
      const parent = seq.chain.length > 0 ? seq.chain[seq.chain.length - 1] : null;
      if (block !== NO_BLOCK) this.register(block, hash, parent);
      seq.chain.push(hash);
    }
  }

  /**
   * Blocks of seqId in position order. A live view: it grows with reserve, so copy it to keep
   * it past the next call.
   */
  blockTable(seqId: number): readonly number[] {
    return this.get(seqId).blocks;
  }

  /** Tokens reserved for seqId. */
  length(seqId: number): number {
    return this.get(seqId).lengthTokens;
  }

  has(seqId: number): boolean {
    return this.seqs.has(seqId);
  }

  /** Live sequence ids, ascending (for snapshots and describe). */
  sequenceIds(): number[] {
    return [...this.seqs.keys()].sort((x, y) => x - y);
  }

  /**
   * Drops seqId and returns how many of its blocks became unreferenced (to the free list or,
   * when hashed, the prefix cache). Unknown ids return 0: eviction events may arrive twice.
   */
  free(seqId: number): number {
    const seq = this.seqs.get(seqId);
    if (seq === undefined) return 0;
    this.seqs.delete(seqId);
    let released = 0;
    // Tail first, so a prompt's last blocks (least likely to be shared) are evicted before its
    // first ones.
    for (let i = seq.blocks.length - 1; i >= 0; i--) {
      if (seq.blocks[i] !== NO_BLOCK && this.release(seq.blocks[i])) released++;
    }
    return released;
  }

  /**
   * Sliding window: gives back seqId's blocks that lie wholly before `firstNeededToken` (no later
   * query can see them), leaving NO_BLOCK in their table entries. Returns how many it released.
   */
  dropBlocksBefore(seqId: number, firstNeededToken: number): number {
    const seq = this.get(seqId);
    const end = Math.min(Math.floor(firstNeededToken / this.blockSizeTokens), seq.blocks.length);
    let dropped = 0;
    for (let i = 0; i < end; i++) {
      if (seq.blocks[i] === NO_BLOCK) continue;
      this.release(seq.blocks[i]);
      seq.blocks[i] = NO_BLOCK;
      dropped++;
    }
    return dropped;
  }

  /**
   * The longest cached prefix of a prompt (whole blocks, and never the whole prompt, so the last
   * token is always computed), looked up without changing anything; attach it with
   * allocatePrefix. `extraKeys` (adapter with load generation, salt, ...) go into every block
   * hash; their order matters. Throws on a bad token id.
   */
  matchPrefix(tokenIds: ArrayLike<number>, extraKeys: readonly ExtraKey[] = []): PrefixMatch {
    const encodedExtraKeys = encodeExtraKeys(extraKeys);
    const match = { encodedExtraKeys, blocks: [] as number[], chain: [] as Uint8Array[] };
    if (!this.prefixCachingEnabled) return match;
    const B = this.blockSizeTokens;
    const maxBlocks = tokenIds.length > 0 ? Math.floor((tokenIds.length - 1) / B) : 0;
    let parent: Uint8Array | null = null;
    for (let i = 0; i < maxBlocks; i++) {
      const hash = hashBlockEncoded(parent, tokenIds, i * B, (i + 1) * B, encodedExtraKeys);
      const block = this.blockByHash.get(hashToHex(hash));
      if (block === undefined) break;
      match.blocks.push(block);
      match.chain.push(hash);
      parent = hash;
    }
    return match;
  }

  /**
   * Creates seqId for a prompt and attaches its longest cached prefix (`match`, from matchPrefix
   * with no change to the pool since; by default looked up now). Returns the number of prompt
   * tokens already cached, which is also the new sequence's length.
   */
  allocatePrefix(seqId: number, tokenIds: ArrayLike<number>, extraKeys: readonly ExtraKey[] = [], match?: PrefixMatch): number {
    checkSeqId(seqId);
    if (this.seqs.has(seqId)) throw new SequenceExistsError(seqId);
    // Looked up before any change: hashing throws on a bad token id, which must change nothing.
    const found = match ?? this.matchPrefix(tokenIds, extraKeys);
    const seq: Sequence = { blocks: [...found.blocks], lengthTokens: found.blocks.length * this.blockSizeTokens, chain: [...found.chain], encodedExtraKeys: found.encodedExtraKeys };
    for (const block of seq.blocks) this.acquire(block);
    if (this.prefixCachingEnabled) {
      this.prefixQueryTokens += tokenIds.length;
      this.prefixHitTokens += seq.lengthTokens;
    }
    this.seqs.set(seqId, seq);
    return seq.lengthTokens;
  }

  /**
   * Makes childSeqId a copy of parentSeqId: full blocks are shared by ref count; a partial last
   * block gets a fresh block id, returned so the caller copies its KV over. Null when there is
   * no partial block. Throws KvCapacityError, with nothing changed, if that block can't be had.
   */
  fork(parentSeqId: number, childSeqId: number): ForkCopy | null {
    const parent = this.get(parentSeqId);
    checkSeqId(childSeqId);
    if (this.seqs.has(childSeqId)) throw new SequenceExistsError(childSeqId);
    const fullBlocks = Math.floor(parent.lengthTokens / this.blockSizeTokens);
    const hasPartial = parent.blocks.length > fullBlocks;
    if (hasPartial && this.allocatableBlocks() < 1) throw new KvCapacityError(1, this.allocatableBlocks());

    const child: Sequence = {
      blocks: parent.blocks.slice(0, fullBlocks),
      lengthTokens: parent.lengthTokens,
      chain: parent.chain.slice(),
      encodedExtraKeys: parent.encodedExtraKeys,
    };
    for (const block of child.blocks) if (block !== NO_BLOCK) this.acquire(block);
    let copy: ForkCopy | null = null;
    if (hasPartial) {
      copy = { copiedFrom: parent.blocks[fullBlocks], copiedTo: this.takeBlock() };
      child.blocks.push(copy.copiedTo);
    }
    this.seqs.set(childSeqId, child);
    return copy;
  }

  /** Evicts up to `count` unreferenced cached blocks, least recently used first. */
  evictCached(count: number): number {
    checkTokens("count", count);
    let evicted = 0;
    while (evicted < count && this.cachedLru.size > 0) {
      this.freeBlocks.push(this.evictLru());
      evicted++;
    }
    return evicted;
  }

  /**
   * Forgets every content hash: cached blocks become free and live sequences' blocks go to the
   * free list when released. Block tables of live sequences are unchanged.
   */
  reset(): void {
    for (const block of this.cachedLru) this.freeBlocks.push(block);
    this.cachedLru.clear();
    for (const block of this.blockByHash.values()) this.blockHashKeys[block] = null;
    this.blockByHash.clear();
    this.blockEvents?.push({ kind: "cleared" });
  }

  /** The block events since the last call, oldest first (empty unless recordBlockEvents). */
  drainBlockEvents(): BlockEvent[] {
    return this.blockEvents?.splice(0) ?? [];
  }

  /** Hex hashes of every block the prefix cache can match now (used or cached). */
  blockHashes(): string[] {
    return [...this.blockByHash.keys()];
  }

  stats(): KvPoolStats {
    return {
      blockSizeTokens: this.blockSizeTokens,
      blocksTotal: this.numBlocks,
      blocksUsed: this.usedBlocks,
      blocksCached: this.cachedLru.size,
      blocksFree: this.freeBlocks.length,
      sequences: this.seqs.size,
      prefixQueryTokens: this.prefixQueryTokens,
      prefixHitTokens: this.prefixHitTokens,
      evictions: this.evictions,
    };
  }

  /** Recomputes every count from scratch and throws if any bookkeeping disagrees. */
  checkInvariants(): void {
    const fail = (msg: string): never => {
      throw new Error(`KV block pool invariant violated: ${msg}`);
    };
    const B = this.blockSizeTokens;
    const refs = new Int32Array(this.numBlocks);
    for (const [seqId, seq] of this.seqs) {
      if (seq.blocks.length !== Math.ceil(seq.lengthTokens / B)) {
        fail(`seq ${seqId} holds ${seq.blocks.length} blocks for ${seq.lengthTokens} tokens`);
      }
      if (seq.chain.length > Math.floor(seq.lengthTokens / B)) fail(`seq ${seqId} hashes a partial block`);
      const held = seq.blocks.filter((b) => b !== NO_BLOCK);
      if (new Set(held).size !== held.length) fail(`seq ${seqId} holds a block twice`);
      for (const block of held) {
        if (!Number.isInteger(block) || block < 0 || block >= this.numBlocks) fail(`seq ${seqId} holds block ${block}`);
        refs[block]++;
      }
      seq.chain.forEach((hash, i) => {
        if (seq.blocks[i] === NO_BLOCK) return;
        const key = this.blockHashKeys[seq.blocks[i]];
        if (key !== null && key !== hashToHex(hash)) fail(`seq ${seqId} block ${i} content differs from its hash`);
      });
    }

    const freeSet = new Set(this.freeBlocks);
    if (freeSet.size !== this.freeBlocks.length) fail("a block is on the free list twice");
    let used = 0;
    let hashed = 0;
    for (let b = 0; b < this.numBlocks; b++) {
      const refCount = this.refCounts[b];
      if (refCount < 0) fail(`block ${b} refcount ${refCount}`);
      if (refCount !== refs[b]) fail(`block ${b} refcount ${refCount}, referenced ${refs[b]} times`);
      const key = this.blockHashKeys[b];
      if (key !== null) {
        hashed++;
        if (this.blockByHash.get(key) !== b) fail(`block ${b} hash is not mapped back to it`);
      }
      const inFree = freeSet.has(b);
      const inCache = this.cachedLru.has(b);
      if (refCount > 0) {
        used++;
        if (inFree || inCache) fail(`block ${b} is referenced and also ${inFree ? "free" : "cached"}`);
      } else if (inFree === inCache) {
        fail(`unreferenced block ${b} is ${inFree ? "both free and cached" : "neither free nor cached"}`);
      } else if (inFree && key !== null) {
        fail(`free block ${b} keeps a hash`);
      } else if (inCache && key === null) {
        fail(`cached block ${b} has no hash`);
      }
    }
    if (hashed !== this.blockByHash.size) fail(`${this.blockByHash.size} hashes map to ${hashed} hashed blocks`);
    if (used !== this.usedBlocks) fail(`used count ${this.usedBlocks}, actually ${used}`);
    if (this.freeBlocks.length + used + this.cachedLru.size !== this.numBlocks) {
      fail(`free ${this.freeBlocks.length} + used ${used} + cached ${this.cachedLru.size} != ${this.numBlocks}`);
    }
  }

  private get(seqId: number): Sequence {
    const seq = this.seqs.get(seqId);
    if (seq === undefined) throw new UnknownSequenceError(seqId);
    return seq;
  }

  private allocatableBlocks(): number {
    return this.freeBlocks.length + this.cachedLru.size;
  }

  /** Hashes of the full blocks of `seq` beyond its chain that `tokenIds` covers, up to lengthTokens. */
  private extendChain(seq: Sequence, lengthTokens: number, tokenIds: ArrayLike<number>): Uint8Array[] {
    const B = this.blockSizeTokens;
    const fullBlocks = Math.floor(Math.min(lengthTokens, tokenIds.length) / B);
    const hashes: Uint8Array[] = [];
    let parent = seq.chain.length > 0 ? seq.chain[seq.chain.length - 1] : null;
    for (let i = seq.chain.length; i < fullBlocks; i++) {
      parent = hashBlockEncoded(parent, tokenIds, i * B, (i + 1) * B, seq.encodedExtraKeys);
      hashes.push(parent);
    }
    return hashes;
  }

  /** Hands out a block with refcount 1, evicting the LRU cached block if none is free. */
  private takeBlock(): number {
    const block = this.freeBlocks.pop() ?? this.evictLru();
    this.refCounts[block] = 1;
    this.usedBlocks++;
    return block;
  }

  private evictLru(): number {
    const first = this.cachedLru.values().next();
    if (first.done) throw new KvCapacityError(1, 0);
    const block = first.value;
    this.cachedLru.delete(block);
    this.blockByHash.delete(this.blockHashKeys[block]!);
    this.blockEvents?.push({ kind: "removed", blockHash: this.blockHashKeys[block]! });
    this.blockHashKeys[block] = null;
    this.evictions++;
    return block;
  }

  private acquire(block: number): void {
    if (this.refCounts[block] === 0) {
      this.cachedLru.delete(block);
      this.usedBlocks++;
    }
    this.refCounts[block]++;
  }

  /** Drops one reference; true when that was the last one. */
  private release(block: number): boolean {
    if (--this.refCounts[block] > 0) return false;
    this.usedBlocks--;
    if (this.blockHashKeys[block] !== null) this.cachedLru.add(block);
    else this.freeBlocks.push(block);
    return true;
  }

  /**
   * Gives `block` the content hash if nobody owns it yet. When two sequences computed the same
   * block at once, the later one's copy stays unhashed and is freed, not cached, when released.
   */
  private register(block: number, hash: Uint8Array, parent: Uint8Array | null): void {
    const key = hashToHex(hash);
    if (this.blockHashKeys[block] !== null || this.blockByHash.has(key)) return;
    this.blockHashKeys[block] = key;
    this.blockByHash.set(key, block);
    this.blockEvents?.push({ kind: "stored", blockHash: key, parentHash: parent && hashToHex(parent) });
  }
}

function newSequence(encodedExtraKeys: Uint8Array): Sequence {
  return { blocks: [], lengthTokens: 0, chain: [], encodedExtraKeys };
}
