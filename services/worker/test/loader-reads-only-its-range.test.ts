import { statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_HF_MODEL_DIR, BUNDLED_MODEL_DIR } from "@strata/model";
import type { DescribeResponse } from "@strata/proto";
import { describeWorker as describeOver, loadStage, useWorker } from "./support/worker-client.ts";

// A worker loading one layer range reads that range's bytes from the weight file and not the rest:
// a middle stage of stories260K reads one layer's tensors, not the embedding, not the other layers.

const D = 64; // stories260K: dim 64, 8 heads, 4 KV heads (head_dim 8), hidden_dim 172, 5 layers, vocab 512
const KV = 32;
const FF = 172;
const LAYER_FLOATS = D + D * D + KV * D + KV * D + D * D + D + 3 * FF * D;
const LAYER_BYTES = LAYER_FLOATS * 4; // 181,760
const EMBEDDING_BYTES = 512 * D * 4; // 131,072

const worker = useWorker("loader-test");
beforeAll(worker.start);
afterAll(worker.stop);

function load(modelDir: string, layerStart: number, layerEnd: number): Promise<DescribeResponse> {
  return loadStage(worker.stub(), { modelDir, layerStart, layerEnd, stageIndex: 1, numStages: 3, device: "cpu", blockSizeTokens: 16, kvCacheBytes: 1n << 20n });
}

function describeWorker(): Promise<DescribeResponse> {
  return describeOver(worker.stub());
}

describe("a worker reads only its layer range", () => {
  it("llama2.c checkpoint: layer 2 of 5 as a middle stage reads one layer's bytes", async () => {
    const fileBytes = statSync(join(BUNDLED_MODEL_DIR, "stories260K.bin")).size;
    expect(fileBytes).toBe(1_056_540);

    const ready = await load(BUNDLED_MODEL_DIR, 2, 3);
    expect(ready).toMatchObject({ loaded: true, layerStart: 2, layerEnd: 3, firstStage: false, lastStage: false });

    const described = await describeWorker();
    expect(described.loaded).toBe(true);
    const read = Number(described.weightBytesRead);
    expect(read).toBeGreaterThanOrEqual(LAYER_BYTES);
    expect(read).toBeLessThan(fileBytes / 4);
    // Not the embedding (the only tensor larger than the slack) nor a second layer: one layer plus headers.
    expect(read).toBeLessThan(LAYER_BYTES + Math.min(EMBEDDING_BYTES, LAYER_BYTES) / 4);
  });

  it("Hugging Face safetensors: the same range reads the same share of the file", async () => {
    const fileBytes = statSync(join(BUNDLED_HF_MODEL_DIR, "model.safetensors")).size;
    await load(BUNDLED_HF_MODEL_DIR, 2, 3);
    const read = Number((await describeWorker()).weightBytesRead);
    expect(read).toBeGreaterThanOrEqual(LAYER_BYTES);
    expect(read).toBeLessThan(fileBytes / 4);
  });

  it("a first stage adds the embedding, and the count is per load, not cumulative", async () => {
    await load(BUNDLED_MODEL_DIR, 0, 1);
    const read = Number((await describeWorker()).weightBytesRead);
    expect(read).toBeGreaterThanOrEqual(LAYER_BYTES + EMBEDDING_BYTES);
    expect(read).toBeLessThan(LAYER_BYTES + EMBEDDING_BYTES + LAYER_BYTES / 4);
  });
});
