import { blocksForBudget, kvBytesPerToken } from "./sizing.ts";

/** How a stage stores its K/V. int8 and fp8 (e4m3, emulated) keep a float32 scale per block and KV head; fp8 also a float16 centre per channel. */
export type KvDtype = "fp32" | "fp16" | "int8" | "fp8";

export const KV_DTYPES: readonly KvDtype[] = ["fp32", "fp16", "int8", "fp8"];

export function isKvDtype(s: string): s is KvDtype {
  return (KV_DTYPES as readonly string[]).includes(s);
}

/** A flag or proto field ("" means the default, fp32) -> KvDtype, or a RangeError naming the choices. */
export function parseKvDtype(s: string | undefined): KvDtype {
  if (s === undefined || s === "") return "fp32";
  if (!isKvDtype(s)) throw new RangeError(`kv dtype must be one of ${KV_DTYPES.join(", ")}, got "${s}"`);
  return s;
}

const ELEMENT_BYTES: Record<KvDtype, number> = { fp32: 4, fp16: 2, int8: 1, fp8: 1 };

/** Bytes of one stored K or V element, scales not included. */
export function kvBytesPerElement(dtype: KvDtype): number {
  return ELEMENT_BYTES[dtype];
}

/**
 * Bytes kept beside the codes per block, per KV head, per K or V pool of one layer: a float32
 * scale for int8 and fp8, and for fp8 a float16 centre per channel too (see the KV store's Fp8Pool).
 */
export function kvSideBytesPerBlockHead(dtype: KvDtype, headDim: number): number {
  return dtype === "int8" ? 4 : dtype === "fp8" ? 4 + 2 * headDim : 0;
}

/** What one stage's KV pool holds per block: its own layers only. */
export interface KvBlockLayout {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  blockSizeTokens: number;
  kvDtype: KvDtype;
}

/** Exact bytes of one block across the stage's layers, K and V, scales included. */
export function kvBytesPerBlock(layout: KvBlockLayout): number {
  const { numLayers, numKvHeads, headDim, blockSizeTokens, kvDtype } = layout;
  const elements = kvBytesPerToken(numLayers, numKvHeads, headDim, kvBytesPerElement(kvDtype)) * blockSizeTokens;
  return elements + 2 * numLayers * numKvHeads * kvSideBytesPerBlockHead(kvDtype, headDim);
}

/**
 * Whole blocks of `layout` that fit in a stage's KV budget: the worker's block count. Takes a
 * proto uint64 budget as bigint.
 */
export function blocksForKvBudget(kvCacheBytes: number | bigint, layout: KvBlockLayout): number {
  if (!Number.isInteger(layout.blockSizeTokens) || layout.blockSizeTokens < 1) {
    throw new RangeError(`blockSizeTokens must be a positive integer, got ${layout.blockSizeTokens}`);
  }
  // A block is the unit here, so ask for whole "one-block tokens" of the block's exact size.
  return blocksForBudget(kvCacheBytes, kvBytesPerBlock(layout), 1);
}
