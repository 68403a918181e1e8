import { describe, expect, it } from "vitest";
import { allPartitions, evenPartition, parsePartition, PartitionError } from "../src/index.ts";

describe("partitions", () => {
  it("splits evenly, remainder first", () => {
    expect(evenPartition(5, 1)).toEqual([[0, 5]]);
    expect(evenPartition(5, 2)).toEqual([[0, 3], [3, 5]]);
    expect(evenPartition(5, 3)).toEqual([[0, 2], [2, 4], [4, 5]]);
    expect(evenPartition(126, 8).map(([a, b]) => b - a)).toEqual([16, 16, 16, 16, 16, 16, 15, 15]);
  });

  it("rejects more stages than layers", () => {
    expect(() => evenPartition(5, 6)).toThrow(PartitionError);
  });

  it("parses and validates by hand", () => {
    expect(parsePartition("0-1,1-4,4-5", 5)).toEqual([[0, 1], [1, 4], [4, 5]]);
    expect(() => parsePartition("0-1,2-5", 5)).toThrow(/contiguous/);
    expect(() => parsePartition("0-3", 5)).toThrow(/5 layers/);
    expect(() => parsePartition("0-x", 5)).toThrow(/START-END/);
    expect(() => parsePartition("0-0,0-5", 5)).toThrow(/empty/);
  });

  it("enumerates every partition: C(L-1, S-1) of them", () => {
    expect(allPartitions(5, 1)).toHaveLength(1);
    expect(allPartitions(5, 2)).toHaveLength(4);
    expect(allPartitions(5, 3)).toHaveLength(6);
    expect(allPartitions(5, 5)).toEqual([[[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]]);
  });
});
