function checkPositive(name: string, value: number): void {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number, got ${value}`);
}

function checkPositiveInt(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) throw new RangeError(`${name} must be a positive integer, got ${value}`);
}

/**
 * Bytes of K plus V for one token across `numLayers` layers (a stage passes only its own layer
 * count). GQA-aware: uses KV heads, not query heads. `bytesPerElement` may be fractional for
 * sub-byte formats.
 */
export function kvBytesPerToken(
  numLayers: number,
  numKvHeads: number,
  headDim: number,
  bytesPerElement: number,
): number {
  checkPositiveInt("numLayers", numLayers);
  checkPositiveInt("numKvHeads", numKvHeads);
  checkPositiveInt("headDim", headDim);
  checkPositive("bytesPerElement", bytesPerElement);
  return 2 * numLayers * numKvHeads * headDim * bytesPerElement;
}

/**
 * Whole blocks that fit in a KV budget. Accepts a bigint budget because proto uint64 fields
 * (e.g. `kv_cache_bytes`) arrive as bigint.
 */
export function blocksForBudget(
  kvCacheBytes: number | bigint,
  kvBytesPerTokenValue: number,
  blockSizeTokens: number,
): number {
  const budgetBytes = typeof kvCacheBytes === "bigint" ? Number(kvCacheBytes) : kvCacheBytes;
  if (!Number.isFinite(budgetBytes) || budgetBytes < 0) {
    throw new RangeError(`kvCacheBytes must be a non-negative number, got ${kvCacheBytes}`);
  }
  checkPositive("kvBytesPerTokenValue", kvBytesPerTokenValue);
  checkPositiveInt("blockSizeTokens", blockSizeTokens);
  return Math.floor(budgetBytes / (kvBytesPerTokenValue * blockSizeTokens));
}
