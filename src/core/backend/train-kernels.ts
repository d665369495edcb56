import { alloc, type Buf, dtypeOf, type TrainDType } from "./buffers.js";
import { referenceOps, type TrainOps } from "./train-ops.js";
import { wkv4Backward, wkv4Forward, wkv5Backward, wkv5Forward, wkv7Backward, wkv7Forward, wkvChunks } from "./wkv-train.js";

// The storage primitives, re-exported for callers that import them with the kernels.
export { alloc, type Buf, dtypeOf, type TrainDType };

/*
 * The kernels training is written against.
 *
 * The reference kernels (plain TypeScript) are the specification: f32 storage (Float32Array) with
 * every dot product and WKV state in a JS number (f64), as the reference inference kernels do; the
 * same code runs on Float64Array storage (buffers.ts).
 *
 * A fast implementation (wasm-train.ts: WebAssembly SIMD, threads) provides the same methods and
 * may keep tensors in its own memory: the graph allocates every tensor through `alloc`, and a
 * training step releases what it allocated with `mark`/`release`, so nothing is copied per call
 * and nothing waits for the garbage collector.
 */

/** A model's parameter storage as the kernels see it (train/params.ts ParamStore): moved by `relocate`. */
export interface ParamPlacement {
  readonly dtype: TrainDType;
  /** Replaces every value and gradient buffer by one from `allocate`, copying the values. */
  relocate(allocate: (n: number) => Buf): void;
}

export interface TrainKernels {
  readonly name: string;
  /**
   * What decides the rounding of every result (e.g. "wasm relaxed-simd"): runs on the same build
   * give bit-identical results whatever the thread count; another build rounds differently.
   */
  readonly build: string;
  /**
   * A tensor of n elements, valid until the `release` of an earlier `mark`: zero-filled, or with
   * `uninitialized` (for outputs every element of which is written) whatever the memory held.
   */
  alloc(dtype: TrainDType, n: number, uninitialized?: boolean): Buf;
  /** Marks the tensors allocated so far; `release(mark)` frees every later one (stack order). */
  mark(): number;
  release(mark: number): void;
  /** The element-wise ops of the graph (ops.ts's reference functions, or faster equivalents). */
  readonly ops: TrainOps;
  /**
   * AdamW's update of one tensor (optim.ts AdamW.step, the same formula), when these kernels can
   * run it on these buffers; false: the caller runs its own loop.
   */
  adamwUpdate?(data: Buf, grad: Buf, m: Buf, v: Buf, rate: number, wd: number, beta1: number, beta2: number, eps: number, bc1: number, bc2: number): boolean;
  /** Moves a model's parameters and gradients into storage the kernels read in place (if they have such). */
  placeParams?(store: ParamPlacement): void;
  /**
   * C (M, N) = op(A) · op(B); with `accumulate` C += instead of C =.
   *   op(A) = A stored (M, K), or with transA Aᵀ of A stored (K, M);
   *   op(B) = B stored (K, N), or with transB Bᵀ of B stored (N, K).
   * The reference sums in f64 whatever the storage type.
   */
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Buf, B: Buf, C: Buf, accumulate: boolean): void;
  /** RWKV-4 WKV over B sequences of T steps (wkv.ts wkv4Forward): y (B·T, C). */
  wkv4Forward(B: number, T: number, C: number, timeDecay: Buf, timeFirst: Buf, k: Buf, v: Buf, y: Buf): void;
  /** The WKV4 backward (wkv.ts wkv4Backward) from the forward's y: gradients accumulate (+=); null ones are skipped. */
  wkv4Backward(B: number, T: number, C: number, timeDecay: Buf, timeFirst: Buf, k: Buf, v: Buf, y: Buf, gy: Buf,
    gTimeDecay: Buf | null, gTimeFirst: Buf | null, gk: Buf | null, gv: Buf | null): void;
  /**
   * RWKV-5.2 / 6 WKV over B sequences of T steps (wkv.ts wkv5Forward): wraw (C) is a constant
   * decay (v5.2), (B·T, C) a per-token one (v6); y (B·T, H·N). With `save`, returns the state
   * checkpoints wkv5Backward needs (in the kernels' own layout and type).
   */
  wkv5Forward(B: number, T: number, H: number, N: number, r: Buf, k: Buf, v: Buf, wraw: Buf, u: Buf, y: Buf, save: boolean): Buf | null;
  /** The WKV5 backward (wkv.ts wkv5Backward): gradients accumulate (+=); gw has wraw's shape; null ones are skipped. */
  wkv5Backward(B: number, T: number, H: number, N: number, r: Buf, k: Buf, v: Buf, wraw: Buf, u: Buf, ckpt: Buf, gy: Buf,
    gr: Buf | null, gk: Buf | null, gv: Buf | null, gw: Buf | null, gu: Buf | null): void;
  /**
   * RWKV-7 WKV over B sequences of T steps (wkv.ts wkv7Forward): y (B·T, H·N), every sequence
   * starting from s0 (H·N·N, a trained time_state) when given, else from zeros. With `save`,
   * returns the state checkpoints wkv7Backward needs (in the kernels' own layout and type).
   */
  wkv7Forward(B: number, T: number, H: number, N: number, r: Buf, wraw: Buf, k: Buf, v: Buf, a: Buf, b: Buf, y: Buf, save: boolean, s0?: Buf | null): Buf | null;
  /** The WKV7 backward (wkv.ts wkv7Backward), gs0 the initial state's: gradients accumulate (+=); null ones are skipped. */
  wkv7Backward(B: number, T: number, H: number, N: number, r: Buf, wraw: Buf, k: Buf, v: Buf, a: Buf, b: Buf, ckpt: Buf, gy: Buf,
    gr: Buf | null, gw: Buf | null, gk: Buf | null, gv: Buf | null, ga: Buf | null, gb: Buf | null, gs0?: Buf | null): void;
}

/**
 * Output tile of the reference kernel: 4 rows of A against 4 rows of B, 16 running sums, so each
 * loaded element feeds 4 multiply-adds (measured ~40% faster than 1x4 in V8).
 */
const TILE = 4;

/**
 * C (M, N) (+)= A (M, K) · Bᵀ with B (N, K) ("NT": both operands walked along contiguous rows):
 * every product of the reference kernels, the others transposing their operands into this shape.
 */
export function referenceGemmNT(A: Buf, M: number, K: number, B: Buf, N: number, C: Buf, accumulate: boolean): void {
  const mFull = M - (M % TILE), nFull = N - (N % TILE);
  for (let m = 0; m < mFull; m += TILE) {
    const a0 = m * K, a1 = a0 + K, a2 = a1 + K, a3 = a2 + K;
    for (let n = 0; n < nFull; n += TILE) {
      const b0 = n * K, b1 = b0 + K, b2 = b1 + K, b3 = b2 + K;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let k = 0; k < K; k++) {
        const x0 = A[a0 + k], x1 = A[a1 + k], x2 = A[a2 + k], x3 = A[a3 + k];
        const y0 = B[b0 + k], y1 = B[b1 + k], y2 = B[b2 + k], y3 = B[b3 + k];
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
        s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3;
        s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3;
      }
      store4(C, m * N + n, s00, s01, s02, s03, accumulate);
      store4(C, (m + 1) * N + n, s10, s11, s12, s13, accumulate);
      store4(C, (m + 2) * N + n, s20, s21, s22, s23, accumulate);
      store4(C, (m + 3) * N + n, s30, s31, s32, s33, accumulate);
    }
    for (let i = m; i < m + TILE; i++) dotRange(A, i, K, B, nFull, N, C, N, accumulate);
  }
  for (let i = mFull; i < M; i++) dotRange(A, i, K, B, 0, N, C, N, accumulate);
}

export const referenceTrainKernels: TrainKernels = {
  name: "reference",
  build: "reference",
  ops: referenceOps,
  alloc: (dtype, n) => alloc(dtype, n),
  mark: () => 0,
  release: () => {}, // the garbage collector frees the typed arrays
  gemm(transA, transB, M, N, K, A, B, C, accumulate) {
    const a = transA ? transposeBuf(A, K, M) : A; // (M, K)
    const b = transB ? B : transposeBuf(B, K, N); // (N, K)
    referenceGemmNT(a, M, K, b, N, C, accumulate);
  },
  wkv4Forward: wkv4Forward,
  wkv4Backward: wkv4Backward,
  wkv5Forward(B, T, H, N, r, k, v, wraw, u, y, save) {
    const ckpt = save ? new Float64Array(B * H * wkvChunks(T) * N * N) : null; // f64 states, as the recurrence
    wkv5Forward(B, T, H, N, r, k, v, wraw, u, y, ckpt);
    return ckpt;
  },
  wkv5Backward(B, T, H, N, r, k, v, wraw, u, ckpt, gy, gr, gk, gv, gw, gu) {
    if (!(ckpt instanceof Float64Array)) throw new Error("reference wkv5Backward: checkpoints of another kernel");
    wkv5Backward(B, T, H, N, r, k, v, wraw, u, ckpt, gy, gr, gk, gv, gw, gu);
  },
  wkv7Forward(B, T, H, N, r, wraw, k, v, a, b, y, save, s0) {
    const ckpt = save ? new Float64Array(B * H * wkvChunks(T) * N * N) : null; // f64 states, as the recurrence
    wkv7Forward(B, T, H, N, r, wraw, k, v, a, b, y, ckpt, s0);
    return ckpt;
  },
  wkv7Backward(B, T, H, N, r, wraw, k, v, a, b, ckpt, gy, gr, gw, gk, gv, ga, gb, gs0) {
    if (!(ckpt instanceof Float64Array)) throw new Error("reference wkv7Backward: checkpoints of another kernel");
    wkv7Backward(B, T, H, N, r, wraw, k, v, a, b, ckpt, gy, gr, gw, gk, gv, ga, gb, gs0);
  },
};

function store4(C: Buf, o: number, s0: number, s1: number, s2: number, s3: number, accumulate: boolean): void {
  if (accumulate) { C[o] += s0; C[o + 1] += s1; C[o + 2] += s2; C[o + 3] += s3; } else { C[o] = s0; C[o + 1] = s1; C[o + 2] = s2; C[o + 3] = s3; }
}

/** C[m, n0..n1) (+)= A[m] · B[n] for the edges the 4x4 tiles do not cover. */
function dotRange(A: Buf, m: number, K: number, B: Buf, n0: number, n1: number, C: Buf, N: number, accumulate: boolean): void {
  const a0 = m * K;
  for (let n = n0; n < n1; n++) {
    const b0 = n * K;
    let s = 0;
    for (let k = 0; k < K; k++) s += A[a0 + k] * B[b0 + k];
    if (accumulate) C[m * N + n] += s; else C[m * N + n] = s;
  }
}

/** (R, K) row-major -> (K, R) row-major, same storage type. */
export function transposeBuf(m: Buf, R: number, K: number): Buf {
  const out = alloc(dtypeOf(m), R * K); // (K, R)
  for (let i = 0; i < R; i++) {
    const o = i * K;
    for (let j = 0; j < K; j++) out[j * R + i] = m[o + j];
  }
  return out;
}

/*
 * The two matrix layers of RWKV, each with its forward and its backward in the same argument order.
 *   linear:  y = x Wᵀ, W (O, I) as nn.Linear stores it
 *   project: y = x M,  M (I, O) as the LoRA factors (w1, w2, ...) are stored
 * Backward products accumulate (+=) into gx and gW / gM; a null gradient is not computed.
 */

/** y (R, O) = x (R, I) · Wᵀ. */
export function linearForward(k: TrainKernels, x: Buf, R: number, I: number, W: Buf, O: number, y: Buf): void {
  k.gemm(false, true, R, O, I, x, W, y, false);
}

/** gx (R, I) += gy W;  gW (O, I) += gyᵀ x. */
export function linearBackward(k: TrainKernels, x: Buf, R: number, I: number, W: Buf, O: number, gy: Buf, gx: Buf | null, gW: Buf | null): void {
  if (gx) k.gemm(false, false, R, I, O, gy, W, gx, true); // (R, O)·(O, I)
  if (gW) k.gemm(true, false, O, I, R, gy, x, gW, true); // (R, O)ᵀ·(R, I)
}

/** y (R, O) = x (R, I) · M, M (I, O). */
export function projectForward(k: TrainKernels, x: Buf, R: number, I: number, M: Buf, O: number, y: Buf): void {
  k.gemm(false, false, R, O, I, x, M, y, false);
}

/** gx (R, I) += gy Mᵀ;  gM (I, O) += xᵀ gy. */
export function projectBackward(k: TrainKernels, x: Buf, R: number, I: number, M: Buf, O: number, gy: Buf, gx: Buf | null, gM: Buf | null): void {
  if (gx) k.gemm(false, true, R, I, O, gy, M, gx, true); // (R, O)·(I, O)ᵀ
  if (gM) k.gemm(true, false, I, O, R, x, gy, gM, true); // (R, I)ᵀ·(R, O)
}
