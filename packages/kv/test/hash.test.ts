import { describe, expect, it } from "vitest";
import { BLOCK_HASH_BYTES, hashBlock } from "../src/index.ts";

const hex = (h: Uint8Array): string => Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");

describe("hashBlock", () => {
  it("is a 32-byte SHA-256, deterministic", () => {
    const a = hashBlock(null, [1, 2, 3, 4], []);
    expect(a).toBeInstanceOf(Uint8Array);
    expect(a.length).toBe(BLOCK_HASH_BYTES);
    expect(hex(hashBlock(null, Uint32Array.of(1, 2, 3, 4), []))).toBe(hex(a));
  });

  it("depends on parent, tokens, and token order", () => {
    const root = hashBlock(null, [1, 2, 3, 4], []);
    const all = [
      root,
      hashBlock(root, [1, 2, 3, 4], []),
      hashBlock(null, [1, 2, 4, 3], []),
      hashBlock(null, [1, 2, 3], []),
      hashBlock(null, [1, 2, 3, 4, 0], []),
      hashBlock(null, [0x1_0000 + 1, 2, 3, 4], []),
    ];
    expect(new Set(all.map(hex)).size).toBe(all.length);
  });

  it("tags each extra key with its kind: a salt never collides with an equal adapter name", () => {
    const tokens = [7, 7, 7, 7];
    const variants = [
      [],
      [{ kind: "salt", value: "x" }],
      [{ kind: "adapter", value: "x" }],
      [{ kind: "adapter", value: "" }],
      [{ kind: "salt", value: "" }],
      // Length prefixes keep boundaries: none of these concatenate alike.
      [{ kind: "sal", value: "tx" }],
      [{ kind: "salt", value: "x" }, { kind: "", value: "" }],
      [{ kind: "adapter", value: "x" }, { kind: "salt", value: "x" }],
      [{ kind: "salt", value: "x" }, { kind: "adapter", value: "x" }],
      [{ kind: "adapter", value: "x\u0000salt" }],
      [{ kind: "adapter", value: "lora-a@1" }],
      [{ kind: "adapter", value: "lora-a@2" }],
    ];
    const hashes = variants.map((keys) => hex(hashBlock(null, tokens, keys)));
    expect(new Set(hashes).size).toBe(variants.length);
  });

  it("rejects token ids that are not uint32", () => {
    expect(() => hashBlock(null, [1, -1], [])).toThrow(RangeError);
    expect(() => hashBlock(null, [1.5], [])).toThrow(RangeError);
    expect(() => hashBlock(null, [2 ** 32], [])).toThrow(RangeError);
    expect(() => hashBlock(new Uint8Array(3), [1], [])).toThrow(RangeError);
  });
});
