import { GGML_TYPES, ggmlToFloat32, type GgmlType } from "../formats/ggml-quants.js";
import { bf16ToF32, f16ToF32 } from "../tensor.js";
import { BLOCK_TYPES, type Matrix, type WeightType } from "./backend.js";

/** Bytes of one row of `cols` weights of type `t`. */
export function rowBytes(t: WeightType, cols: number): number {
  if (t === "f32") return 4 * cols;
  if (t === "i8") return cols; // plus one f32 scale per row after all rows
  if (t === "f16" || t === "bf16" || t === "f16s") return 2 * cols;
  const g = ggmlType(Q5S_BASE[t] ?? t);
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
  const base = Q5S_BASE[W.type];
  if (base) {
    const row = bytes.slice(r * n, (r + 1) * n);
    permuteQh(row, base, Q5S_TO_GGML);
    out.set(ggmlToFloat32(ggmlType(base), row, I));
    return out;
  }
  out.set(ggmlToFloat32(ggmlType(W.type), bytes.subarray(r * n, (r + 1) * n), I));
  return out;
}

/** The checkpoint type of each wasm q5 layout. */
const Q5S_BASE: Partial<Record<WeightType, "q5_0" | "q5_1">> = { q5_0s: "q5_0", q5_1s: "q5_1" };

/**
 * Where the fifth bit of element j (0..31) of a q5 block sits in its qh word in the wasm backend's
 * q5_0s/q5_1s (ggml: at bit j). With i = j mod 16 (the byte of its half's vector), m = i >> 1 (its
 * i16 lane) and c = i & 1 (its byte in the lane): bit 16·(m & 1) + 4·(j >> 4) + (m >> 1) + 8·c. The
 * kernel broadcasts qh to every 32-bit lane, so i16 lane m holds qh's low half (m even) or high
 * half (m odd); the high half of the block first shifts each i16 right by 4; then one multiply by
 * 2^(4 - (m >> 1)) moves the bits of lane m's two bytes to bit 4 of each, where a mask keeps them
 * (kernels.ts fifthBits). Any other bit of the lane moves elsewhere, so no shuffle is needed.
 */
export function q5sBit(j: number): number {
  const i = j & 15, m = i >> 1;
  return 16 * (m & 1) + 4 * (j >> 4) + (m >> 1) + 8 * (i & 1);
}

/** For each byte k of a qh word and its value b: the word with those 8 bits moved as `to` says. */
function qhTables(to: (bit: number) => number): Uint32Array {
  const t = new Uint32Array(4 * 256);
  for (let k = 0; k < 4; k++) {
    for (let b = 0; b < 256; b++) {
      let w = 0;
      for (let i = 0; i < 8; i++) if ((b >> i) & 1) w |= 1 << to(8 * k + i);
      t[256 * k + b] = w >>> 0;
    }
  }
  return t;
}
const GGML_TO_Q5S = qhTables(q5sBit);
const Q5S_BITS = Array.from({ length: 32 }, (_, j) => q5sBit(j));
const Q5S_TO_GGML = qhTables((bit) => Q5S_BITS.indexOf(bit));

/** Permutes the qh word of every block of q5 `bytes` in place, by one of the tables above. */
function permuteQh(bytes: Uint8Array, base: "q5_0" | "q5_1", tables: Uint32Array): void {
  const g = ggmlType(base);
  const at = base === "q5_0" ? 2 : 4; // qh after d (and m)
  for (let p = at; p < bytes.length; p += g.blockBytes) {
    const w = tables[bytes[p]] | tables[256 + bytes[p + 1]] | tables[512 + bytes[p + 2]] | tables[768 + bytes[p + 3]];
    bytes[p] = w; bytes[p + 1] = w >>> 8; bytes[p + 2] = w >>> 16; bytes[p + 3] = w >>> 24;
  }
}

/**
 * q5_0/q5_1 block bytes -> the wasm backend's q5_0s/q5_1s in place (each block's qh word in q5sBit
 * order; nothing else moves). Returns the new type.
 */
export function toQ5s(bytes: Uint8Array, type: "q5_0" | "q5_1"): "q5_0s" | "q5_1s" {
  permuteQh(bytes, type, GGML_TO_Q5S);
  return type === "q5_0" ? "q5_0s" : "q5_1s";
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
