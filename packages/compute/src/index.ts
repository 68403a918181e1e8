export { StageEngine, type StageChunk, type StageOutput, type StageEngineOptions, type Device } from "./stage-engine.ts";
export { buildStageGraph, STAGE_IO } from "./stage-graph.ts";
