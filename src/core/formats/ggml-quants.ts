import { decodeFloats, type DType, f16ToF32 } from "../tensor.js";

/**
 * ggml tensor types as rwkv.cpp files use them (ggml after the May 2023 quantization change,
 * i.e. rwkv.cpp file version 101). Quantized types pack QK = 32 consecutive elements along ne0
 * into one block with an f16 scale (and f16 minimum for the _1 variants).
 */
export const QK = 32;

export interface GgmlType {
  readonly id: number;
  readonly name: string;
  readonly dtype: DType;
  /** Elements per block (1 for plain floats). */
  readonly blockElements: number;
  readonly blockBytes: number;
}

const TYPE_LIST: readonly GgmlType[] = [
  { id: 0, name: "FP32", dtype: "f32", blockElements: 1, blockBytes: 4 },
  { id: 1, name: "FP16", dtype: "f16", blockElements: 1, blockBytes: 2 },
  { id: 2, name: "Q4_0", dtype: "q4_0", blockElements: QK, blockBytes: 2 + QK / 2 },
  { id: 3, name: "Q4_1", dtype: "q4_1", blockElements: QK, blockBytes: 2 + 2 + QK / 2 },
  { id: 7, name: "Q5_0", dtype: "q5_0", blockElements: QK, blockBytes: 2 + 4 + QK / 2 },
  { id: 8, name: "Q5_1", dtype: "q5_1", blockElements: QK, blockBytes: 2 + 2 + 4 + QK / 2 },
  { id: 9, name: "Q8_0", dtype: "q8_0", blockElements: QK, blockBytes: 2 + QK },
];

export const GGML_TYPES: ReadonlyMap<number, GgmlType> = new Map(TYPE_LIST.map((t) => [t.id, t]));

/** Types 4 (Q4_2), 5 (Q4_3) and 6 (Q4_1_O) were dropped by ggml; files using them cannot be read. */
export const OBSOLETE_GGML_TYPES: ReadonlyMap<number, string> = new Map([[4, "Q4_2"], [5, "Q4_3"], [6, "Q4_1_O"]]);

export function isQuantized(t: GgmlType): boolean {
  return t.blockElements > 1;
}

/** Bytes taken by `count` elements (count must be a multiple of the block size). */
export function ggmlBytes(t: GgmlType, count: number): number {
  return (count / t.blockElements) * t.blockBytes;
}

/** Decodes `count` elements of type `t` (plain or block-quantized) into a fresh Float32Array. */
export function ggmlToFloat32(t: GgmlType, bytes: Uint8Array, count: number): Float32Array {
  if (t.dtype === "f32" || t.dtype === "f16") return decodeFloats(bytes, t.dtype, count);
  const out = new Float32Array(count);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const half = QK / 2;
  for (let o = 0, p = 0; o < count; o += QK, p += t.blockBytes) {
    const d = f16ToF32(dv.getUint16(p, true));
    switch (t.dtype) {
      case "q4_0": { // byte j: element j in the low nibble, element j+16 in the high nibble; (q-8)*d
        const qs = p + 2;
        for (let j = 0; j < half; j++) {
          const q = bytes[qs + j];
          out[o + j] = ((q & 0xf) - 8) * d;
          out[o + j + half] = ((q >> 4) - 8) * d;
        }
        break;
      }
      case "q4_1": { // q*d + m
        const m = f16ToF32(dv.getUint16(p + 2, true));
        const qs = p + 4;
        for (let j = 0; j < half; j++) {
          const q = bytes[qs + j];
          out[o + j] = (q & 0xf) * d + m;
          out[o + j + half] = (q >> 4) * d + m;
        }
        break;
      }
      case "q5_0": { // bit j of qh is the 5th bit of element j; (q-16)*d
        const qh = dv.getUint32(p + 2, true);
        const qs = p + 6;
        for (let j = 0; j < half; j++) {
          const q = bytes[qs + j];
          out[o + j] = (((q & 0xf) | (((qh >>> j) & 1) << 4)) - 16) * d;
          out[o + j + half] = (((q >> 4) | (((qh >>> (j + half)) & 1) << 4)) - 16) * d;
        }
        break;
      }
      case "q5_1": { // q*d + m
        const m = f16ToF32(dv.getUint16(p + 2, true));
        const qh = dv.getUint32(p + 4, true);
        const qs = p + 8;
        for (let j = 0; j < half; j++) {
          const q = bytes[qs + j];
          out[o + j] = ((q & 0xf) | (((qh >>> j) & 1) << 4)) * d + m;
          out[o + j + half] = ((q >> 4) | (((qh >>> (j + half)) & 1) << 4)) * d + m;
        }
        break;
      }
      case "q8_0": { // int8 q * d
        const qs = p + 2;
        for (let j = 0; j < QK; j++) out[o + j] = dv.getInt8(qs + j) * d;
        break;
      }
      default:
        throw new Error(`ggmlToFloat32: no decoder for ${t.name}`);
    }
  }
  return out;
}
