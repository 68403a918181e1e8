export { LocalCluster, type ClusterOptions } from "./cluster.ts";
export { Engine, ContextLengthError, RequestValidationError, RequestAbortedError, type GenerateRequest, type GenerateResult, type FinishReason } from "./engine.ts";
export { PipelineClient, StageFailure, type WorkerStub } from "./pipeline-client.ts";
export { createHttpApi, type HttpApiOptions } from "./http-api.ts";
export { ChatTemplate, DEFAULT_CHAT_TEMPLATE, type ChatMessage } from "./chat-template.ts";
export { ModelRegistry, type ServedModel } from "./models.ts";
export { CoordinatorMetrics } from "./metrics.ts";
export { CoordinatorTelemetry, RequestTrace } from "./tracing.ts";
export { TraceLog, renderWaterfall, type StepRecord, type RequestRecord } from "./trace-view.ts";
