export { startWorkerServer, type RunningWorker, type WorkerServerOptions } from "./server.ts";
export { WorkerNode } from "./worker-service.ts";
export { DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_KV_CACHE_BYTES } from "./stage.ts";
