import { describe, expect, it } from "vitest";
import { blocksForBudget, kvBytesPerToken } from "../src/index.ts";

describe("KV sizing", () => {
  it("counts K and V for every layer and KV head (stories260K, fp32)", () => {
    expect(kvBytesPerToken(5, 4, 8, 4)).toBe(1280);
  });

  it("is GQA-aware and per stage: a stage of 16 of Llama-3-8B's layers in bf16", () => {
    // 8 KV heads (not the 32 query heads), head_dim 128.
    expect(kvBytesPerToken(16, 8, 128, 2)).toBe(65_536);
    expect(kvBytesPerToken(32, 8, 128, 2)).toBe(131_072);
  });

  it("fits whole blocks in a budget, rounding down", () => {
    expect(blocksForBudget(1_048_576, 1280, 16)).toBe(51); // 1 MiB / 20480 B per block = 51.2
    expect(blocksForBudget(20_480, 1280, 16)).toBe(1);
    expect(blocksForBudget(20_479, 1280, 16)).toBe(0);
    expect(blocksForBudget(0, 1280, 16)).toBe(0);
  });

  it("takes a proto uint64 budget as bigint", () => {
    expect(blocksForBudget(8n * 1024n ** 3n, 131_072, 16)).toBe(4096);
  });

  it("rejects nonsense sizes", () => {
    expect(() => kvBytesPerToken(0, 4, 8, 4)).toThrow(RangeError);
    expect(() => kvBytesPerToken(5, 4.5, 8, 4)).toThrow(RangeError);
    expect(() => blocksForBudget(-1, 1280, 16)).toThrow(RangeError);
    expect(() => blocksForBudget(1024, 1280, 0)).toThrow(RangeError);
  });
});
