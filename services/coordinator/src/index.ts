export { LocalCluster, type ClusterOptions } from "./cluster.ts";
export { Engine, ContextLengthError, RequestValidationError, RequestAbortedError, type GenerateRequest, type GenerateResult, type FinishReason } from "./engine.ts";
export { PipelineClient, StageFailure } from "./pipeline-client.ts";
export { createHttpApi } from "./http-api.ts";
