export { BlockPool, NO_BLOCK, type BlockEvent, type BlockPoolOptions, type ForkCopy, type KvPoolStats, type PrefixMatch } from "./block-pool.ts";
export { KvCapacityError, SequenceExistsError, UnknownSequenceError } from "./errors.ts";
export { BLOCK_HASH_BYTES, hashBlock, type ExtraKey } from "./hash.ts";
export { blocksForBudget, kvBytesPerToken } from "./sizing.ts";
export { StageBlockTables, BlockTableError } from "./stage-tables.ts";
export {
  ContiguousAllocator,
  KvExtentUnavailableError,
  KvReservationExceededError,
  type ContiguousAllocatorOptions,
  type ContiguousExtent,
  type ContiguousStats,
} from "./contiguous.ts";
export {
  KV_DTYPES,
  blocksForKvBudget,
  isKvDtype,
  kvBytesPerBlock,
  kvBytesPerElement,
  kvSideBytesPerBlockHead,
  parseKvDtype,
  type KvBlockLayout,
  type KvDtype,
} from "./kv-dtype.ts";
export { simulateKvWaste, type KvWasteOptions, type KvWasteRequest, type KvWasteResult } from "./kv-waste.ts";
