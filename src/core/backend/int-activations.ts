import type { Matrix } from "./backend.js";
import { f16ToF32 } from "../tensor.js";

/*
 * The specification of the wasm backend's integer matmul (assembly/kernels.ts, "Integer path"):
 * y (T, O) = x (T, I) Wᵀ for the ggml block types and i8, with the activations rounded as the
 * kernels round them. Plain and slow; tests compare every integer kernel with it.
 *
 * Per row t of x and block b of 32 columns (the last block zero-padded):
 *   d_tb = max_b |x| / 127 (f32),  q_ti = round_half_even(x_ti · (127 / max_b |x|)) (f32 product),
 *   s_tb = Σ_{i in b} x_ti (the unrounded sum, for the _1 types' minimum term),
 * and with the weights of block b of row o as w_i = e_b·u_i + m_b (u_i integers; e_b the block
 * scale, or the row scale for i8; m_b the _1 types' minimum, else 0):
 *   y_to = Σ_b e_b·d_tb·(Σ_{i in b} u_i·q_ti) + m_b·s_tb.
 * The integer sums are exact in every kernel; the kernels accumulate the block terms in f32, this
 * in f64, so they differ by f32 rounding only (tests: within (nb + 3)·2^-23·Σ_b |terms|).
 */

/** Largest |q| of an activation (and of a q8_0/i8 weight): symmetric int8. */
const Q_MAX = 127;
/** Elements per block (ggml's QK). */
const QK = 32;

/** Activations (T, I) rounded per block: q (T, nb·32) integers, d and s (T, nb). */
export interface QuantizedActivations {
  readonly q: Int8Array;
  readonly d: Float32Array;
  readonly s: Float64Array;
  /** Σ_{i in b} |x_ti| (T, nb): bounds the f32 rounding of a kernel's s_tb. */
  readonly sAbs: Float64Array;
  readonly nb: number;
}

/** Round half to even, as WebAssembly's f32 nearest. */
function roundEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function quantizeActivations(x: Float32Array, T: number, I: number): QuantizedActivations {
  const nb = Math.ceil(I / QK);
  const q = new Int8Array(T * nb * QK), d = new Float32Array(T * nb), s = new Float64Array(T * nb), sAbs = new Float64Array(T * nb);
  for (let t = 0; t < T; t++) {
    for (let b = 0; b < nb; b++) {
      const c0 = b * QK, c1 = Math.min(I, c0 + QK);
      let amax = 0, sum = 0, abs = 0;
      for (let i = c0; i < c1; i++) { amax = Math.max(amax, Math.abs(x[t * I + i])); sum += x[t * I + i]; abs += Math.abs(x[t * I + i]); }
      const inv = amax > 0 ? Math.fround(Q_MAX / amax) : 0;
      for (let i = c0; i < c1; i++) q[t * nb * QK + i] = roundEven(Math.fround(x[t * I + i] * inv));
      d[t * nb + b] = Math.fround(amax / Q_MAX);
      s[t * nb + b] = sum;
      sAbs[t * nb + b] = abs;
    }
  }
  return { q, d, s, sAbs, nb };
}

/** Block b of row o: its integers u (32, zero past the row), scale e and minimum m. */
interface WeightBlock { readonly u: Int32Array; e: number; m: number }

/** Bytes per 32-weight block of the ggml types (ggml's block_q*_*). */
const BLOCK_BYTES: Readonly<Record<string, number>> = { q8_0: 34, q5_0: 22, q5_1: 24, q4_0: 18, q4_1: 20 };

function weightBlock(W: Matrix, o: number, b: number, out: WeightBlock): void {
  const bytes = W.data as Uint8Array;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u = out.u;
  u.fill(0);
  out.m = 0;
  if (W.type === "i8") {
    const I = W.cols;
    for (let i = b * QK; i < Math.min(I, b * QK + QK); i++) u[i - b * QK] = (bytes[o * I + i] << 24) >> 24;
    out.e = dv.getFloat32(W.rows * I + 4 * o, true);
    return;
  }
  const bb = BLOCK_BYTES[W.type];
  if (bb === undefined) throw new Error(`quantized-activation matmul: weight type ${W.type} has no integer form`);
  const p = (o * (W.cols / QK) + b) * bb;
  out.e = f16ToF32(dv.getUint16(p, true));
  if (W.type === "q8_0") {
    for (let i = 0; i < QK; i++) u[i] = (bytes[p + 2 + i] << 24) >> 24;
    return;
  }
  const one = W.type === "q4_1" || W.type === "q5_1";
  if (one) out.m = f16ToF32(dv.getUint16(p + 2, true));
  const five = W.type === "q5_0" || W.type === "q5_1";
  const qh = five ? dv.getUint32(p + (one ? 4 : 2), true) : 0;
  const nib = p + (one ? 4 : 2) + (five ? 4 : 0);
  const offset = one ? 0 : five ? 16 : 8;
  for (let i = 0; i < QK / 2; i++) {
    const v = bytes[nib + i];
    u[i] = (v & 0xf) + (five ? ((qh >>> i) & 1) << 4 : 0) - offset;
    u[i + QK / 2] = (v >> 4) + (five ? ((qh >>> (i + QK / 2)) & 1) << 4 : 0) - offset;
  }
}

/** The f32 unit roundoff. */
const U32 = 2 ** -24;

/**
 * y (T, O) = x (T, I) Wᵀ with the activations rounded as above, in f64, and per output a bound on
 * a kernel's f32 rounding: each block term rounded twice (scale product, multiply-add), nb + 1
 * additions and up to 4 of partial sums, and the f32 block sums s_tb (32 additions each).
 */
export function matmulQuantizedActivations(x: Float32Array, T: number, W: Matrix): { y: Float64Array; bound: Float64Array } {
  const { rows: O, cols: I } = W;
  const a = quantizeActivations(x, T, I);
  const y = new Float64Array(T * O), bound = new Float64Array(T * O);
  const blk: WeightBlock = { u: new Int32Array(QK), e: 0, m: 0 };
  for (let o = 0; o < O; o++) {
    for (let b = 0; b < a.nb; b++) {
      weightBlock(W, o, b, blk);
      for (let t = 0; t < T; t++) {
        let dot = 0, dotAbs = 0;
        const q0 = (t * a.nb + b) * QK;
        for (let i = 0; i < QK; i++) { dot += blk.u[i] * a.q[q0 + i]; dotAbs += Math.abs(blk.u[i] * a.q[q0 + i]); }
        const scale = blk.e * a.d[t * a.nb + b], min = blk.m * a.s[t * a.nb + b];
        y[t * O + o] += scale * dot + min;
        // Kernels may scale partial integer sums (lanes) before adding them: Σ|u·q| bounds those.
        bound[t * O + o] += (a.nb + 6) * 2 * U32 * (Math.abs(scale) * dotAbs + Math.abs(min)) + Math.abs(blk.m) * a.sAbs[t * a.nb + b] * QK * U32;
      }
    }
  }
  for (let i = 0; i < bound.length; i++) bound[i] += 1e-30;
  return { y, bound };
}
