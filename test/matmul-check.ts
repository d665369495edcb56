import assert from "node:assert/strict";
import type { Matrix, WeightType } from "../src/core/backend/backend.js";
import { quantizeInt8 } from "../src/core/backend/int8.js";
import { decodeWeightRow } from "../src/core/backend/weight-rows.js";
import { f32ToBf16, f32ToF16 } from "../src/core/tensor.js";

/*
 * Random weights and the matmul error bounds of the backend conformance suite (see the header of
 * backend-conformance.test.ts), shared with the Chromium run of the relaxed i8·i7 kernels.
 */

/** The f32 unit roundoff. */
export const U = 2 ** -24;

/** Deterministic uniform [-1, 1). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}


export const BLOCK_BYTES: Partial<Record<WeightType, number>> = { q8_0: 34, q5_0: 22, q5_1: 24, q4_0: 18, q4_1: 20 };
export const INT_TYPES: ReadonlySet<WeightType> = new Set<WeightType>(["q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "i8"]);

/**
 * A random (O, I) matrix of `type`: float types from random values (times `scale.value`), block
 * types from random bytes (every bit pattern) with sane scales (times `scale.block`). Also the
 * weights of the kernel timings (bench/kernels/matmul.ts).
 */
export function randomMatrix(type: WeightType, O: number, I: number, r: () => number, scale = { value: 1, block: 1 }): Matrix {
  const f = Float32Array.from({ length: O * I }, () => scale.value * r());
  if (type === "f32") return { rows: O, cols: I, type, data: f };
  if (type === "f16") return { rows: O, cols: I, type, data: Uint16Array.from(f, f32ToF16) };
  if (type === "bf16") return { rows: O, cols: I, type, data: Uint16Array.from(f, f32ToBf16) };
  if (type === "i8") return quantizeInt8(f, O, I);
  const bb = BLOCK_BYTES[type]!;
  const data = Uint8Array.from({ length: (O * I / 32) * bb }, () => Math.floor((r() + 1) * 128) & 0xff);
  const dv = new DataView(data.buffer);
  for (let p = 0; p < data.length; p += bb) {
    dv.setUint16(p, f32ToF16(scale.block * 0.02 * r()), true); // d
    if (type === "q4_1" || type === "q5_1") dv.setUint16(p + 2, f32ToF16(scale.block * 0.1 * r()), true); // m
  }
  return { rows: O, cols: I, type, data };
}

/** Per-output error bounds for matmul (see the header). */
export function matmulBounds(x: Float32Array, T: number, W: Matrix): Float32Array {
  const { rows: O, cols: I } = W;
  const nb = Math.ceil(I / 32);
  const d = new Float64Array(T * nb); // activation quantization step per block
  for (let t = 0; t < T; t++) {
    for (let b = 0; b < nb; b++) {
      let m = 0;
      for (let i = b * 32; i < Math.min(I, b * 32 + 32); i++) m = Math.max(m, Math.abs(x[t * I + i]));
      d[t * nb + b] = m / 127;
    }
  }
  const integer = INT_TYPES.has(W.type);
  const bound = new Float32Array(T * O);
  const row = new Float32Array(I);
  for (let o = 0; o < O; o++) {
    decodeWeightRow(W, o, row);
    for (let t = 0; t < T; t++) {
      let abs = 0, quant = 0;
      for (let i = 0; i < I; i++) {
        const db = integer ? d[t * nb + (i >> 5)] : 0;
        abs += Math.abs(row[i]) * (Math.abs(x[t * I + i]) + db);
        quant += Math.abs(row[i]) * 0.501 * db;
      }
      bound[t * O + o] = (I + 2 + (integer ? 4 : 0)) * U * abs + quant + 1e-30;
    }
  }
  return bound;
}

export function assertWithin(got: Float32Array, want: Float32Array, bound: (i: number) => number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= bound(i))) assert.fail(`${what}: element ${i}: got ${got[i]}, reference ${want[i]}, |diff| ${e} > bound ${bound(i)}`);
  }
}

