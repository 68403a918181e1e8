import { describe, expect, it } from "vitest";
import { BlockTableError, StageBlockTables, UnknownSequenceError } from "../src/index.ts";

describe("StageBlockTables", () => {
  it("counts distinct referenced blocks across shared prefixes", () => {
    const t = new StageBlockTables(8, 4);
    t.assign(1, 10, [0, 1, 2]);
    t.assign(2, 9, [0, 1, 5]); // shares two prefix blocks
    expect(t.blocksUsed).toBe(4);
    expect(t.free(1)).toBe(1); // block 2 only
    expect(t.blocksUsed).toBe(3);
    expect(t.free(2)).toBe(3);
    expect(t.blocksUsed).toBe(0);
    expect(t.free(2)).toBe(0); // eviction events may repeat
  });

  it("grows a table and keeps the length", () => {
    const t = new StageBlockTables(8, 4);
    t.assign(1, 4, [3]);
    t.assign(1, 5, [3, 6]);
    expect(t.blockTable(1)).toEqual([3, 6]);
    expect(t.length(1)).toBe(5);
    expect(t.blocksUsed).toBe(2);
  });

  it("rejects tables too short or out of range, changing nothing", () => {
    const t = new StageBlockTables(4, 4);
    expect(() => t.assign(1, 9, [0, 1])).toThrow(BlockTableError);
    expect(() => t.assign(1, 4, [4])).toThrow(/outside this stage's 4 blocks/);
    expect(t.has(1)).toBe(false);
    expect(t.blocksUsed).toBe(0);
    expect(() => t.length(1)).toThrow(UnknownSequenceError);
  });
});
