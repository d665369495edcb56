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

/** Row `r` of W as f32 in `out` (I): exact for f16/bf16, ggml's dequantization for block types. */
export function decodeWeightRow(W: Matrix, r: number, out: Float32Array): Float32Array {
  const I = W.cols;
  if (W.type === "f32") { out.set((W.data as Float32Array).subarray(r * I, (r + 1) * I)); return out; }
  if (W.type === "f16" || W.type === "bf16" || W.type === "f16s") {
    const bits = W.data as Uint16Array;
    const conv = W.type === "f16" ? f16ToF32 : W.type === "f16s" ? f16sToF32 : bf16ToF32;
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

/** The whole matrix as f32 (O, I). */
export function decodeMatrix(W: Matrix): Float32Array {
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
