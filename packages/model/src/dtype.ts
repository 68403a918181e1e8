/** Stored element types we read and write; everything is computed as float32. */
export type DType = "F32" | "F16" | "BF16";

export const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };

export function isDType(s: string): s is DType {
  return s === "F32" || s === "F16" || s === "BF16";
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 -> IEEE half bits, round to nearest even (subnormals and overflow to infinity included). */
export function f32ToF16Bits(value: number): number {
  f32[0] = value;
  return f16BitsFromF32Bits(u32[0]);
}

/** The same from float32 bits (a Uint32Array view), for loops that avoid a conversion per element. */
export function f16BitsFromF32Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    // Subnormal half: shift the full significand (implicit 1 included) into 10 bits.
    const m = mant | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rest > mid || (rest === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++;
  return sign | half;
}

export function bf16BitsToF32(b: number): number {
  u32[0] = b << 16;
  return f32[0];
}

/** float32 -> bfloat16 bits, round to nearest even; NaN stays NaN. */
export function f32ToBf16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

let f16Lookup: Float32Array | undefined;
function f16Table(): Float32Array {
  if (!f16Lookup) {
    f16Lookup = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Lookup[h] = f16BitsToF32(h);
  }
  return f16Lookup;
}

const LITTLE_ENDIAN_HOST = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/**
 * Little-endian stored bytes -> Float32Array. F32 bytes that are aligned on a little-endian host are
 * viewed in place (no copy), so the caller must not reuse `bytes`.
 */
export function decodeToF32(bytes: Uint8Array, dtype: DType): Float32Array {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  if (dtype === "F32" && LITTLE_ENDIAN_HOST && bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  if (dtype === "F32") {
    for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
  } else if (dtype === "F16") {
    const table = f16Table();
    for (let i = 0; i < n; i++) out[i] = table[view.getUint16(i * 2, true)];
  } else {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) bits[i] = view.getUint16(i * 2, true) << 16;
  }
  return out;
}

/** Float32Array -> little-endian stored bytes in `dtype`. */
export function encodeFromF32(values: Float32Array, dtype: DType): Uint8Array {
  const out = new Uint8Array(values.length * DTYPE_BYTES[dtype]);
  const view = new DataView(out.buffer);
  if (dtype === "F32") {
    for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i], true);
  } else {
    const conv = dtype === "F16" ? f32ToF16Bits : f32ToBf16Bits;
    for (let i = 0; i < values.length; i++) view.setUint16(i * 2, conv(values[i]), true);
  }
  return out;
}
