import { describe, expect, it } from "vitest";
import { blocksForBudget, blocksForKvBudget, kvBytesPerBlock, kvBytesPerElement, kvBytesPerToken, parseKvDtype, type KvBlockLayout } from "../src/index.ts";

const STORIES: Omit<KvBlockLayout, "kvDtype"> = { numLayers: 5, numKvHeads: 4, headDim: 8, blockSizeTokens: 16 };
// Half of a hidden 512, 8-layer, 4-KV-head, head_dim 64 model: one of two stages.
const SYNTH_STAGE: Omit<KvBlockLayout, "kvDtype"> = { numLayers: 4, numKvHeads: 4, headDim: 64, blockSizeTokens: 16 };

describe("KV sizing by dtype", () => {
  it("knows each dtype's element size", () => {
    expect([kvBytesPerElement("fp32"), kvBytesPerElement("fp16"), kvBytesPerElement("int8"), kvBytesPerElement("fp8")]).toEqual([4, 2, 1, 1]);
  });

  it("counts a block's exact bytes, with a float32 scale per layer, K/V and head for int8 and fp8", () => {
    expect(kvBytesPerBlock({ ...STORIES, kvDtype: "fp32" })).toBe(20_480); // 2 * 5 * 4 * 8 * 4 B * 16 tokens
    expect(kvBytesPerBlock({ ...STORIES, kvDtype: "fp16" })).toBe(10_240);
    expect(kvBytesPerBlock({ ...STORIES, kvDtype: "int8" })).toBe(5_120 + 160); // + 2 * 5 * 4 scales of 4 B
    expect(kvBytesPerBlock({ ...STORIES, kvDtype: "fp8" })).toBe(5_120 + 160 + 640); // + 2 * 5 * 4 * 8 float16 centres
    expect(kvBytesPerBlock({ ...SYNTH_STAGE, kvDtype: "int8" })).toBe(32_768 + 128);
  });

  it("fits whole blocks in a budget, agreeing with the dtype-blind sizing for fp32", () => {
    expect(blocksForKvBudget(1_048_576, { ...STORIES, kvDtype: "fp32" })).toBe(blocksForBudget(1_048_576, kvBytesPerToken(5, 4, 8, 4), 16));
    expect(blocksForKvBudget(1_048_576, { ...STORIES, kvDtype: "fp32" })).toBe(51);
    expect(blocksForKvBudget(1_048_576, { ...STORIES, kvDtype: "int8" })).toBe(198); // 198 * 5280 = 1,045,440
    expect(blocksForKvBudget(5_279, { ...STORIES, kvDtype: "int8" })).toBe(0);
    expect(blocksForKvBudget(256n * 1024n * 1024n, { ...SYNTH_STAGE, kvDtype: "fp32" })).toBe(2048);
    expect(blocksForKvBudget(256n * 1024n * 1024n, { ...SYNTH_STAGE, kvDtype: "int8" })).toBe(8160); // 3.98x, scales cost the rest
  });

  it("parses the flag / proto field, empty meaning fp32", () => {
    expect(parseKvDtype(undefined)).toBe("fp32");
    expect(parseKvDtype("")).toBe("fp32");
    expect(parseKvDtype("fp8")).toBe("fp8");
    expect(() => parseKvDtype("bf16")).toThrow(/fp32, fp16, int8, fp8/);
  });

  it("rejects nonsense shapes", () => {
    expect(() => kvBytesPerBlock({ ...STORIES, numLayers: 0, kvDtype: "int8" })).toThrow(RangeError);
    expect(() => blocksForKvBudget(1024, { ...STORIES, blockSizeTokens: 0, kvDtype: "int8" })).toThrow(RangeError);
    expect(() => blocksForKvBudget(-1, { ...STORIES, kvDtype: "int8" })).toThrow(RangeError);
  });
});
