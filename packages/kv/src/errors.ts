/** Not enough free or evictable blocks; the pool is left as it was before the call. */
export class KvCapacityError extends Error {
  override readonly name = "KvCapacityError";
  constructor(
    readonly blocksNeeded: number,
    readonly blocksAvailable: number,
  ) {
    super(`KV cache full: need ${blocksNeeded} blocks, ${blocksAvailable} free or evictable`);
  }
}

export class UnknownSequenceError extends Error {
  override readonly name = "UnknownSequenceError";
  constructor(readonly seqId: number) {
    super(`unknown sequence ${seqId}`);
  }
}

/** allocatePrefix or fork named a sequence id that is already live. */
export class SequenceExistsError extends Error {
  override readonly name = "SequenceExistsError";
  constructor(readonly seqId: number) {
    super(`sequence ${seqId} already exists`);
  }
}
