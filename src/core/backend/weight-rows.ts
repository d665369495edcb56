import { GGML_TYPES, ggmlToFloat32, type GgmlType } from "../formats/ggml-quants.js";
import { bf16ToF32, f16ToF32 } from "../tensor.js";
import { BLOCK_TYPES, type Matrix, type WeightType } from "./backend.js";

/** Bytes of one row of `cols` weights of type `t`. */
export function rowBytes(t: WeightType, cols: number): number {
  if (t === "f32") return 4 * cols;
  if (t === "i8") return cols; // plus one f32 scale per row after all rows
  if (t === "f16" || t === "bf16" || t === "f16s") return 2 * cols;
  const g = ggmlType(t);
  return (cols / g.blockElements) * g.blockBytes;
}

/** Bytes of a (rows, cols) matrix of `type` as Matrix.data holds it (i8: the row scales too). */
export function matrixBytes(type: WeightType, rows: number, cols: number): number {
  return rows * rowBytes(type, cols) + (type === "i8" ? 4 * rows : 0);
}

/**
 * A Matrix over `bytes` of `type` as stored (f32 and f16/bf16 as typed views, block types as the
 * bytes), with a copy only where they are not aligned for a typed view.
 */
export function matrixOver(type: WeightType, rows: number, cols: number, bytes: Uint8Array, name?: string): Matrix {
  const own = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  const data = type === "f32" ? new Float32Array(own.buffer, own.byteOffset, rows * cols)
    : type === "f16" || type === "bf16" ? new Uint16Array(own.buffer, own.byteOffset, rows * cols) : own;
  return name === undefined ? { rows, cols, type, data } : { rows, cols, type, data, name };
}

/** W in words for messages: its tensor name when known, and its shape and type. */
export function describeMatrix(W: Matrix): string {
  const shape = `${W.rows}x${W.cols} ${W.type}`;
  return W.name ? `matrix ${W.name} (${shape})` : `a ${shape} matrix`;
}

/**
 * Throws unless W's weights are in JavaScript memory. The WebGPU backend's adopt() returns a
 * matrix with empty data (the weights live in GPU buffers only, so a model does not hold them
 * twice); CPU code handed such a matrix would otherwise read nothing and compute with zeros.
 */
export function requireHostData(W: Matrix): void {
  if (W.data.length === 0 && W.rows > 0 && W.cols > 0) {
    throw new Error(`${describeMatrix(W)} has no weights in JavaScript memory: the WebGPU backend keeps an adopted matrix on the GPU only, where the CPU cannot read it (read it before adopt(), or adopt it with adoptForHost() when CPU code needs it)`);
  }
}

/** Row `r` of W as f32 in `out` (I): exact for f16/bf16, ggml's dequantization for block types. */
export function decodeWeightRow(W: Matrix, r: number, out: Float32Array): Float32Array {
  requireHostData(W);
  const I = W.cols;
  if (W.type === "f32") { out.set((W.data as Float32Array).subarray(r * I, (r + 1) * I)); return out; }
  if (W.type === "f16s") {
    const bits = W.data as Uint16Array;
    for (let i = 0; i < I; i++) out[i] = f16sToF32(bits[r * I + f16sPosition(i, I)]);
    return out;
  }
  if (W.type === "f16" || W.type === "bf16") {
    const bits = W.data as Uint16Array;
    const conv = W.type === "f16" ? f16ToF32 : bf16ToF32;
    for (let i = 0; i < I; i++) out[i] = conv(bits[r * I + i]);
    return out;
  }
  const bytes = W.data as Uint8Array;
  if (W.type === "i8") {
    const scale = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getFloat32(W.rows * I + 4 * r, true);
    for (let i = 0; i < I; i++) out[i] = ((bytes[r * I + i] << 24) >> 24) * scale;
    return out;
  }
  const n = rowBytes(W.type, I);
  out.set(ggmlToFloat32(ggmlType(W.type), bytes.subarray(r * n, (r + 1) * n), I));
  return out;
}

/** The f16s encoding's factor 2^10: lifts every f16 subnormal (>= 2^-24) to a normal (>= 2^-14). */
export const F16S_SCALE = 1024;
/** f16s bits (f16 of w·2^10) -> w, exact. */
const f16sToF32 = (h: number): number => f16ToF32(h) / F16S_SCALE;

/** Columns per f16s group: one v128 of halves, reordered so the kernel converts it without widening. */
const F16S_GROUP = 8;

/**
 * Where column `c` of a row of `cols` f16s weights is stored in the row: in each full group of 8,
 * columns [0, 1, 2, 3, 4, 5, 6, 7] sit at [0, 2, 4, 6, 1, 3, 5, 7] (column j < 4 at 2j, j >= 4 at
 * 2(j - 4) + 1), so 32-bit lane l of the group holds columns l and l + 4 (see f16sLo in
 * assembly/kernels.ts); the last cols % 8 columns keep their places.
 */
export function f16sPosition(c: number, cols: number): number {
  const g = c - (c % F16S_GROUP);
  if (g + F16S_GROUP > cols) return c;
  const j = c - g;
  return g + (j < 4 ? 2 * j : 2 * (j - 4) + 1);
}

/**
 * f16 bits (O, I) -> f16s bits in `out` (f16 of w·2^10, exactly; subnormals become normals,
 * normals gain 10 in the exponent), each row in f16sPosition order. False, with `out` partly
 * written, when some |w|·2^10 would overflow f16 (|w| >= 64) or a weight is Inf/NaN: such a
 * matrix stays f16.
 */
export function toF16s(bits: Uint16Array, cols: number, out: Uint16Array): boolean {
  const SHIFT = Math.log2(F16S_SCALE); // 10
  const MAX_EXP = 30; // the largest finite f16 biased exponent
  const rows = bits.length / cols;
  const pos = Int32Array.from({ length: cols }, (_, c) => f16sPosition(c, cols));
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) {
      const h = bits[base + c], sign = h & 0x8000, e = (h >> 10) & 0x1f, m = h & 0x3ff;
      let v: number;
      if (e === 0) {
        if (m === 0) v = h;
        else {
          // m·2^-24 · 2^10 = m·2^-14: normalize the mantissa, whose top bit p gives exponent p + 1.
          const p = 31 - Math.clz32(m);
          v = sign | ((p + 1) << 10) | ((m << (10 - p)) & 0x3ff);
        }
      } else {
        if (e + SHIFT > MAX_EXP) return false;
        v = sign | ((e + SHIFT) << 10) | m;
      }
      out[base + pos[c]] = v;
    }
  }
  return true;
}

/** The whole matrix as f32 (O, I). */
export function decodeMatrix(W: Matrix): Float32Array {
  requireHostData(W);
  if (W.type === "f32") return W.data as Float32Array;
  const out = new Float32Array(W.rows * W.cols); // (O, I)
  for (let r = 0; r < W.rows; r++) decodeWeightRow(W, r, out.subarray(r * W.cols, (r + 1) * W.cols));
  return out;
}

const BY_DTYPE = new Map([...GGML_TYPES.values()].map((g) => [g.dtype as string, g]));

function ggmlType(t: WeightType): GgmlType {
  const g = BY_DTYPE.get(t);
  if (!g || !BLOCK_TYPES.has(t)) throw new Error(`no ggml block type for ${t}`);
  return g;
}

/** Whether toF16s can rewrite these f16 bits (no exponent that the f16s rescale would overflow). */
export function fitsF16s(bits: Uint16Array): boolean {
  const MAX_E = 30 - Math.log2(F16S_SCALE); // as in toF16s: the largest biased exponent that still fits
  for (let i = 0; i < bits.length; i++) if (((bits[i] >> 10) & 0x1f) > MAX_E) return false;
  return true;
}
