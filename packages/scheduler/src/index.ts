export {
  Scheduler,
  SchedulerCapacityError,
  type SchedulerSequence,
  type ScheduledChunk,
  type MicroBatch,
  type Preemption,
  type ScheduleResult,
  type SchedulerOptions,
  type SchedulerStats,
} from "./scheduler.ts";
export { PagedKvAllocator, ContiguousKvAllocator, type SchedulerKvAllocator } from "./kv-allocators.ts";
export { decodeRunCap, MovingMean } from "./run-length.ts";
