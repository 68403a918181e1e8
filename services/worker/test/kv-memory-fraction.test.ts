import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import type { DescribeResponse } from "@strata/proto";
import { loadStage, useWorker } from "./support/worker-client.ts";

// LoadRequest.kv_memory_fraction over gRPC: a fraction outside [0, 1] is the caller's error, one
// that buys no block is the host's shortfall, and one that buys blocks sizes the stage's cache.

const worker = useWorker("kv-fraction-test");
beforeAll(worker.start);
afterAll(worker.stop);

function load(kvMemoryFraction: number): Promise<DescribeResponse> {
  return loadStage(worker.stub(), { modelDir: BUNDLED_MODEL_DIR, layerStart: 0, layerEnd: 5, stageIndex: 0, numStages: 1, kvMemoryFraction });
}

describe("a stage's KV cache as a fraction of available memory", () => {
  it("refuses a fraction outside [0, 1]", async () => {
    for (const fraction of [-0.5, 1.5, Number.NaN]) {
      await expect(load(fraction)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/kv_memory_fraction .* is not between 0 and 1/) });
    }
  });

  it("reports a fraction that buys no block as the host's shortfall", async () => {
    await expect(load(1e-12)).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/holds no block of 16 tokens at \d+ bytes\/block/) });
  });

  it("sizes the cache from it, and loads again after the refusals", async () => {
    const stage = await load(0.001);
    expect(stage.loaded).toBe(true);
    // 5 layers of stories260K: 20 KiB a block; 0.1% of what a host has available is megabytes.
    expect(stage.kv!.blocksTotal).toBeGreaterThan(50);
  });
});
