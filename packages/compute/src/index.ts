export { StageEngine, DeviceUnavailableError, KvBudgetError, checkKvMemoryFraction, runsByLength, runsByPrefix, type StageChunk, type StageOutput, type ForwardWants, type StageEngineOptions, type StageCompute, type Device } from "./stage-engine.ts";
export { buildStageGraph, defaultAttentionForm, STAGE_IO, type AttentionForm } from "./stage-graph.ts";
export { E4M3_DECODE, E4M3_MAX, KvPool, KvStore, ScaledPool, e4m3FromF32Bits, type KvChunk, type KvPoolShape, type KvStoreOptions } from "./kv-store.ts";
export { createStageCompute, ThreadedStageEngine } from "./engine-thread.ts";
export { availableMemoryBytes, cgroupHeadroomBytes, memAvailableBytes } from "./host-memory.ts";
