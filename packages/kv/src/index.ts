export { BlockPool, type BlockPoolOptions, type ForkCopy, type KvPoolStats } from "./block-pool.ts";
export { KvCapacityError, SequenceExistsError, UnknownSequenceError } from "./errors.ts";
export { BLOCK_HASH_BYTES, hashBlock, type ExtraKey } from "./hash.ts";
export { blocksForBudget, kvBytesPerToken } from "./sizing.ts";
export { StageBlockTables, BlockTableError } from "./stage-tables.ts";
