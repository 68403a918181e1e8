import { createHash } from "node:crypto";

/**
 * Anything besides token ids that changes a block's KV: the adapter (name with its load
 * generation), a tenant's cache salt, ... `kind` is free-form but tagged into the hash, so a salt
 * equal to an adapter name never collides with it.
 */
export interface ExtraKey {
  readonly kind: string;
  readonly value: string;
}

export const BLOCK_HASH_BYTES = 32;

// Versioned so a change to the encoding can never match hashes made by the old one.
const DOMAIN = new TextEncoder().encode("strata.kv.block.v1\0");
const utf8 = new TextEncoder();

/**
 * Length-prefixed encoding of extra keys: count, then for each key its kind and value, each as a
 * u32 byte length followed by UTF-8. Length prefixes make the encoding injective, so no choice
 * of strings can make two different key lists hash alike. Order is significant.
 */
export function encodeExtraKeys(extraKeys: readonly ExtraKey[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const key of extraKeys) parts.push(utf8.encode(key.kind), utf8.encode(key.value));
  let totalBytes = 4;
  for (const part of parts) totalBytes += 4 + part.length;
  const out = new Uint8Array(totalBytes);
  const view = new DataView(out.buffer);
  view.setUint32(0, extraKeys.length, true);
  let offset = 4;
  for (const part of parts) {
    view.setUint32(offset, part.length, true);
    out.set(part, offset + 4);
    offset += 4 + part.length;
  }
  return out;
}

/** SHA-256 of one block's content given its parent's hash and pre-encoded extra keys. */
export function hashBlockEncoded(
  parentHash: Uint8Array | null,
  tokenIds: ArrayLike<number>,
  start: number,
  end: number,
  encodedExtraKeys: Uint8Array,
): Uint8Array {
  const tokenCount = end - start;
  const head = new Uint8Array(1 + BLOCK_HASH_BYTES + 4 + 4 * tokenCount);
  const view = new DataView(head.buffer);
  if (parentHash !== null) {
    if (parentHash.length !== BLOCK_HASH_BYTES) {
      throw new RangeError(`parent hash must be ${BLOCK_HASH_BYTES} bytes, got ${parentHash.length}`);
    }
    head[0] = 1;
    head.set(parentHash, 1);
  }
  view.setUint32(1 + BLOCK_HASH_BYTES, tokenCount, true);
  for (let i = 0; i < tokenCount; i++) {
    const token = tokenIds[start + i];
    if (!Number.isInteger(token) || token < 0 || token > 0xffff_ffff) {
      throw new RangeError(`token id must be a uint32, got ${token} at position ${start + i}`);
    }
    view.setUint32(1 + BLOCK_HASH_BYTES + 4 + 4 * i, token, true);
  }
  const hash = createHash("sha256");
  hash.update(DOMAIN);
  hash.update(head);
  hash.update(encodedExtraKeys);
  return new Uint8Array(hash.digest());
}

/** Content hash of a full block: SHA-256 over (parent hash, token ids, tagged extra keys). */
export function hashBlock(
  parentHash: Uint8Array | null,
  tokenIds: ArrayLike<number>,
  extraKeys: readonly ExtraKey[],
): Uint8Array {
  return hashBlockEncoded(parentHash, tokenIds, 0, tokenIds.length, encodeExtraKeys(extraKeys));
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

export function hashToHex(hash: Uint8Array): string {
  let out = "";
  for (const byte of hash) out += HEX[byte];
  return out;
}
