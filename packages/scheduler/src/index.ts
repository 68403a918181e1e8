export { Scheduler, SchedulerCapacityError, type SchedulerSequence, type ScheduledChunk, type MicroBatch, type SchedulerOptions } from "./scheduler.ts";
