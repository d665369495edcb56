/**
 * Storage types and their conversion to f32. Quantized block formats are rwkv.cpp/ggml's
 * (32 elements per block along the contiguous axis); their decoders live in formats/ggml-quants.ts.
 */
export type DType = "f32" | "f16" | "bf16" | "f64" | "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0";

/** A named tensor in a checkpoint, decoded on demand so big files are never held twice. */
export interface TensorEntry {
  readonly name: string;
  /** How it is stored in the file. */
  readonly dtype: DType;
  /** PyTorch order (row-major, last axis contiguous). */
  readonly shape: readonly number[];
  /** A fresh row-major Float32Array (upcast / dequantized / with file-specific transforms undone). */
  toFloat32(): Float32Array;
  /**
   * The stored bytes, row-major in `shape` order (block formats: 32 consecutive elements of the last
   * axis per block), present only when the file holds the tensor exactly so (no transform, no
   * strides). Lets weight matrices stay in their compact type in memory.
   */
  raw?(): Uint8Array;
  /**
   * raw()'s bytes written straight into `dest` (exactly raw's length), e.g. a view of a backend's
   * memory: a file-backed entry reads into it with no buffer of its own, so loading never holds a
   * tensor twice. Present only with raw.
   */
  rawInto?(dest: Uint8Array): void;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** IEEE half -> float (exact). */
export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** float -> IEEE half, round to nearest even (what numpy/torch/ggml do). */
export function f32ToF16(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && (r & 1))) r++;
    return sign | r;
  }
  let r = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1))) {
    r++;
    if (r === 0x400) { r = 0; e++; if (e >= 31) return sign | 0x7c00; }
  }
  return sign | (e << 10) | r;
}

export function bf16ToF32(b: number): number {
  u32buf[0] = b << 16;
  return f32buf[0];
}

/** float -> bfloat16, round to nearest even (torch's .bfloat16()). */
export function f32ToBf16(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0];
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff)) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Decode little-endian raw bytes of a plain float dtype into a new Float32Array. */
export function decodeFloats(bytes: Uint8Array, dtype: "f32" | "f16" | "bf16" | "f64", count: number): Float32Array {
  const out = new Float32Array(count);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case "f32":
      if (bytes.byteOffset % 4 === 0) out.set(new Float32Array(bytes.buffer, bytes.byteOffset, count));
      else for (let i = 0; i < count; i++) out[i] = dv.getFloat32(4 * i, true);
      break;
    case "f64":
      for (let i = 0; i < count; i++) out[i] = dv.getFloat64(8 * i, true);
      break;
    case "f16":
      for (let i = 0; i < count; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
      break;
    case "bf16":
      for (let i = 0; i < count; i++) out[i] = bf16ToF32(dv.getUint16(2 * i, true));
      break;
  }
  return out;
}

export const DTYPE_BYTES: Record<"f32" | "f16" | "bf16" | "f64", number> = { f32: 4, f16: 2, bf16: 2, f64: 8 };

/** (A, R, K) row-major -> (A, K, R). */
export function transposeLast2(m: Float32Array, a: number, r: number, k: number): Float32Array {
  const out = new Float32Array(m.length);
  for (let s = 0; s < a; s++) {
    const base = s * r * k;
    for (let i = 0; i < r; i++) for (let j = 0; j < k; j++) out[base + j * r + i] = m[base + i * k + j];
  }
  return out;
}
