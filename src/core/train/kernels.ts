/*
 * Storage and the one matrix kernel training needs.
 *
 * Training runs in f32 storage (Float32Array) with every dot product accumulated in a JS number
 * (f64), as the reference inference kernels do. The same code runs on Float64Array storage: the
 * tests use that to check gradients against the fp64 goldens to ~1e-12 instead of ~1e-6.
 *
 * Every product of training is one shape, C (M, N) (+)= A (M, K) · Bᵀ with B (N, K) ("NT": both
 * operands walked along contiguous rows), so a faster backend (WebAssembly SIMD, threads) only has
 * to provide `gemmNT` to speed up the forward and both backward products of every linear layer.
 */

export type Buf = Float32Array | Float64Array;
export type TrainDType = "f32" | "f64";

export function alloc(dtype: TrainDType, n: number): Buf {
  return dtype === "f32" ? new Float32Array(n) : new Float64Array(n);
}

export function dtypeOf(b: Buf): TrainDType {
  return b instanceof Float32Array ? "f32" : "f64";
}

/** The kernels training is written against; `referenceTrainKernels` is the plain TypeScript one. */
export interface TrainKernels {
  readonly name: string;
  /**
   * C (M, N) = A (M, K) · Bᵀ, B stored (N, K) row-major; with `accumulate` C += instead of C =.
   * Sums run in f64 whatever the storage type.
   */
  gemmNT(A: Buf, M: number, K: number, B: Buf, N: number, C: Buf, accumulate: boolean): void;
}

/**
 * Output tile of the reference kernel: 4 rows of A against 4 rows of B, 16 running sums, so each
 * loaded element feeds 4 multiply-adds (measured ~40% faster than 1x4 in V8).
 */
const TILE = 4;

export const referenceTrainKernels: TrainKernels = {
  name: "reference",
  gemmNT(A, M, K, B, N, C, accumulate) {
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
  k.gemmNT(x, R, I, W, O, y, false);
}

/** gx (R, I) += gy W;  gW (O, I) += gyᵀ x. */
export function linearBackward(k: TrainKernels, x: Buf, R: number, I: number, W: Buf, O: number, gy: Buf, gx: Buf | null, gW: Buf | null): void {
  if (gx) k.gemmNT(gy, R, O, transposeBuf(W, O, I), I, gx, true); // (R, O)·(I, O)ᵀ
  if (gW) k.gemmNT(transposeBuf(gy, R, O), O, R, transposeBuf(x, R, I), I, gW, true); // (O, R)·(I, R)ᵀ
}

/** y (R, O) = x (R, I) · M, M (I, O). */
export function projectForward(k: TrainKernels, x: Buf, R: number, I: number, M: Buf, O: number, y: Buf): void {
  k.gemmNT(x, R, I, transposeBuf(M, I, O), O, y, false); // (R, I)·(O, I)ᵀ
}

/** gx (R, I) += gy Mᵀ;  gM (I, O) += xᵀ gy. */
export function projectBackward(k: TrainKernels, x: Buf, R: number, I: number, M: Buf, O: number, gy: Buf, gx: Buf | null, gM: Buf | null): void {
  if (gx) k.gemmNT(gy, R, O, M, I, gx, true); // (R, O)·(I, O)ᵀ
  if (gM) k.gemmNT(transposeBuf(x, R, I), I, R, transposeBuf(gy, R, O), O, gM, true); // (I, R)·(O, R)ᵀ
}
