import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { StageWeights } from "@strata/model";
import * as ort from "onnxruntime-node";
import { GraphBuilder } from "../src/graph-builder.ts";
import { createSessionRunner } from "../src/session-runner.ts";
import { DeviceUnavailableError, StageEngine } from "../src/index.ts";
import { loadWholeModel } from "./support/greedy-kv.ts";

// Stages run onnxruntime through its native session directly (session-runner.ts). What its
// InferenceSession wrapper did for us must still hold: a run that onnxruntime refuses rejects
// with onnxruntime's message (and the engine serves the next call), and a CUDA provider that
// cannot start is a clear DeviceUnavailableError.

let weights: StageWeights;
beforeAll(async () => {
  weights = await loadWholeModel();
});

const CUDA_PROVIDER = join(dirname(createRequire(import.meta.url).resolve("onnxruntime-node/dist/binding.js")), "../bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so");

describe("native session runner", () => {
  it("a refused run rejects with onnxruntime's reason, and the session goes on serving", async () => {
    const g = new GraphBuilder();
    g.output(g.node("Add", [g.input("a", "float", [2]), g.input("b", "float", [2])]), "sum", "float", [2]);
    const runner = await createSessionRunner(g.toBytes("add"), { executionProviders: ["cpu"] });
    const f32 = (...v: number[]) => new ort.Tensor("float32", Float32Array.from(v), [v.length]);
    // A well-formed tensor of the wrong shape: only onnxruntime itself can refuse it.
    await expect(runner.run({ a: f32(1, 2, 3), b: f32(1, 2, 3) })).rejects.toThrow(/Got invalid dimensions for input: a/);
    const out = await runner.run({ a: f32(1, 2), b: f32(10, 20) });
    expect(Array.from(out.sum.data as Float32Array)).toEqual([11, 22]);
    await runner.close();
  });

  it.skipIf(existsSync(CUDA_PROVIDER))("asking for CUDA without its provider libraries is a DeviceUnavailableError that says how to get them", async () => {
    const created = StageEngine.create(weights, { numBlocks: 4, blockSizeTokens: 4, firstStage: true, lastStage: true, device: "cuda" });
    await expect(created).rejects.toBeInstanceOf(DeviceUnavailableError);
    await expect(created).rejects.toThrow(/ONNXRUNTIME_NODE_INSTALL=cuda12/);
  });
});
