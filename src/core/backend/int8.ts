import type { Matrix } from "./backend.js";

/**
 * The "i8" weight type: symmetric int8 with one f32 scale per output row, made at load time from
 * f32/f16/bf16 weights (loadModel(path, { matrices: "int8" })). scale = max|w_row| / 127 and
 * q = round(w / scale) in [-127, 127] (never -128, so negation and the integer kernels' i16 pair
 * sums cannot overflow). Layout (see WeightType): O·I int8, then O little-endian f32 scales.
 */
export const INT8_MAX = 127;

/** Quantizes an (O, I) row-major f32 matrix to an i8 Matrix. */
export function quantizeInt8(w: Float32Array, O: number, I: number): Matrix {
  const data = new Uint8Array(O * I + 4 * O);
  const q = new Int8Array(data.buffer, 0, O * I);
  const scales = new DataView(data.buffer, O * I, 4 * O);
  for (let o = 0; o < O; o++) {
    let amax = 0;
    for (let i = 0; i < I; i++) amax = Math.max(amax, Math.abs(w[o * I + i]));
    const scale = Math.fround(amax / INT8_MAX);
    const inv = amax > 0 ? INT8_MAX / amax : 0;
    for (let i = 0; i < I; i++) q[o * I + i] = Math.max(-INT8_MAX, Math.min(INT8_MAX, Math.round(w[o * I + i] * inv)));
    scales.setFloat32(4 * o, scale, true);
  }
  return { rows: O, cols: I, type: "i8", data };
}
