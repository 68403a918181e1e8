import { open } from "node:fs/promises";
import type { ByteReader } from "./byte-reader.ts";
import { DTYPE_BYTES, isDType, type DType } from "./dtype.ts";
import { ModelFormatError } from "./errors.ts";

// The format: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data,
// with offsets relative to the first byte after the header.

/** The format's own cap on header size; a larger value means the file is not safetensors. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface SafetensorsEntry {
  /** Stored dtype name as written (F32, F16, BF16, I64, …). */
  dtype: string;
  shape: number[];
  /** Absolute byte offset of the first element in the file. */
  offset: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  path: string;
  tensors: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
}

function isUint(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
}

export async function readSafetensorsHeader(reader: ByteReader, path: string): Promise<SafetensorsHeader> {
  const fileBytes = await reader.size(path);
  if (fileBytes < 8) throw new ModelFormatError(`${path}: ${fileBytes} bytes is too short for a safetensors file`);
  const lenBytes = new Uint8Array(8);
  await reader.read(path, 0, lenBytes);
  const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (headerLen > BigInt(Math.min(MAX_HEADER_BYTES, fileBytes - 8))) {
    throw new ModelFormatError(`${path}: bad safetensors header length ${headerLen} (file has ${fileBytes} bytes)`);
  }
  const json = new Uint8Array(Number(headerLen));
  await reader.read(path, 8, json);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(json));
  } catch (e) {
    throw new ModelFormatError(`${path}: safetensors header is not JSON (${(e as Error).message})`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new ModelFormatError(`${path}: safetensors header is not a JSON object`);
  }
  const dataStart = 8 + json.byteLength;
  const tensors = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(parsed)) {
    if (name === "__metadata__") {
      metadata = raw as Record<string, string>;
      continue;
    }
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const offs = e.data_offsets;
    const ok =
      typeof e.dtype === "string" &&
      Array.isArray(e.shape) &&
      e.shape.every(isUint) &&
      Array.isArray(offs) &&
      offs.length === 2 &&
      isUint(offs[0]) &&
      isUint(offs[1]) &&
      offs[0] <= offs[1];
    if (!ok) throw new ModelFormatError(`${path}: malformed safetensors entry for "${name}": ${JSON.stringify(raw)}`);
    const [begin, end] = offs as [number, number];
    const shape = e.shape as number[];
    const dtype = e.dtype as string;
    if (dataStart + end > fileBytes) {
      throw new ModelFormatError(`${path}: truncated: tensor "${name}" ends at byte ${dataStart + end}, file has ${fileBytes}`);
    }
    if (isDType(dtype) && shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype] !== end - begin) {
      throw new ModelFormatError(`${path}: tensor "${name}" has ${end - begin} bytes, shape ${JSON.stringify(shape)} × ${dtype} needs more or fewer`);
    }
    tensors.set(name, { dtype, shape, offset: dataStart + begin, byteLength: end - begin });
  }
  return { path, tensors, metadata };
}

export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  /** Called once, when the tensor is written, so large files never sit in memory whole. */
  data: () => Uint8Array;
}

export async function writeSafetensors(path: string, tensors: TensorToWrite[], metadata: Record<string, string> = {}): Promise<number> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let at = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + n] };
    at += n;
  }
  let json = JSON.stringify(header);
  // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const jsonBytes = Buffer.from(json, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(jsonBytes.byteLength));
  const fh = await open(path, "w");
  try {
    await fh.write(prefix);
    await fh.write(jsonBytes);
    for (const t of tensors) {
      const bytes = t.data();
      const expected = (header[t.name] as { data_offsets: [number, number] }).data_offsets;
      if (bytes.byteLength !== expected[1] - expected[0]) throw new Error(`tensor ${t.name}: got ${bytes.byteLength} bytes, shape needs ${expected[1] - expected[0]}`);
      await fh.write(bytes);
    }
  } finally {
    await fh.close();
  }
  return 8 + jsonBytes.byteLength + at;
}
