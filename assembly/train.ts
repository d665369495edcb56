/*
 * WebAssembly SIMD kernels of training (AssemblyScript; built by assembly/build.mjs into
 * src/core/backend/wasm-train-binary.ts, twice: plain SIMD and relaxed SIMD). Separate from the
 * inference module (assembly/kernels.ts) so the two evolve independently.
 *
 * Memory: one shared WebAssembly memory owned by the JS side (src/core/backend/wasm-train.ts),
 * which keeps every training tensor in it (parameters, gradients, activations) and hands the
 * kernels pointers; this module allocates nothing and keeps no state, so the same instance code
 * runs on the main thread and in every worker.
 *
 * Every kernel is a "job" taking (part, nparts) and computing its own slice of the outputs (tiles
 * of a matrix product, (sequence, head) or (sequence, channels) items of a WKV scan) with per-part
 * scratch. An output is
 * computed by the same instructions whatever the split, so 1 and N threads give bit-identical
 * results. All arithmetic is f32 (the reference kernels sum in f64; the fast path does not).
 */

import { exp4, fma4, hsum, LN2_HI, LN2_LO } from "./simd";
import { arg, C_ARGS, dispatchJob, runWorker, splitHi, splitLo, stopAll } from "./threads";
import { dot3, wkv4Scan, wkv4State, wkv5Out, wkv5Step, wkv7Step } from "./wkv";

// Job ids; keep in sync with JOB in src/core/backend/wasm-train.ts.
const JOB_GEMM: i32 = 1;
const JOB_WKV7_FORWARD: i32 = 2;
const JOB_WKV7_BACKWARD: i32 = 3;
const JOB_WKV4_FORWARD: i32 = 4;
const JOB_WKV4_BACKWARD: i32 = 5;
const JOB_WKV5_FORWARD: i32 = 6;
const JOB_WKV5_BACKWARD: i32 = 7;

/** Steps between stored WKV states (the reference's WKV_CHUNK, the v7 CUDA kernel's CHUNK_LEN). */
const WKV_CHUNK: i32 = 16;

export function heapBase(): usize {
  return __heap_base;
}

/** Zeroes `bytes` at p (bulk memory: several times faster than TypedArray.fill on shared memory). */
export function zero(p: usize, bytes: usize): void {
  memory.fill(p, 0, bytes);
}

/** A worker's whole life (assembly/threads.ts) with this module's jobs. */
export function workerLoop(ctrl: usize, spin: i32): void {
  runWorker(ctrl, spin, runJob);
}

/** Main thread: run `job` (arguments already stored) as `nchunks` chunks with whichever workers are awake. */
export function dispatch(ctrl: usize, job: i32, nchunks: i32, spin: i32): void {
  dispatchJob(ctrl, job, nchunks, spin, runJob);
}

/** Tells the workers to return from workerLoop. */
export function stopWorkers(ctrl: usize): void {
  stopAll(ctrl);
}

/** Runs one part of a job on the calling thread (also used directly for single-part jobs). */
export function runJob(ctrl: usize, job: i32, part: i32, nparts: i32): void {
  const a = ctrl + C_ARGS;
  if (job == JOB_GEMM) {
    gemm(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9),
      <usize>arg(a, 10) + <usize>part * <usize>arg(a, 11), part, nparts);
  } else if (job == JOB_WKV7_FORWARD) {
    wkv7Forward(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10), arg(a, 11),
      arg(a, 12), <usize>arg(a, 13) + <usize>part * <usize>arg(a, 14), part, nparts);
  } else if (job == JOB_WKV7_BACKWARD) {
    wkv7Backward(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10),
      arg(a, 11), arg(a, 12), arg(a, 13), arg(a, 14), arg(a, 15), arg(a, 16), arg(a, 17), arg(a, 18), <usize>arg(a, 19) + <usize>part * <usize>arg(a, 20),
      part, nparts);
  } else if (job == JOB_WKV4_FORWARD) {
    wkv4Forward(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), part, nparts);
  } else if (job == JOB_WKV4_BACKWARD) {
    wkv4Backward(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10),
      arg(a, 11), arg(a, 12), <usize>arg(a, 13) + <usize>part * <usize>arg(a, 14), part, nparts);
  } else if (job == JOB_WKV5_FORWARD) {
    wkv5Forward(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10), arg(a, 11),
      <usize>arg(a, 12) + <usize>part * <usize>arg(a, 13), part, nparts);
  } else if (job == JOB_WKV5_BACKWARD) {
    wkv5Backward(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10),
      arg(a, 11), arg(a, 12), arg(a, 13), arg(a, 14), arg(a, 15), arg(a, 16), <usize>arg(a, 17) + <usize>part * <usize>arg(a, 18), part, nparts);
  }
}


/* @inline */ function at(p: usize, i: i32): usize {
  return p + (<usize>i << 2);
}

// ---------------------------------------------------------------------------------------------
// Matrix product C (M, N) (+)= op(A) · op(B), f32, row-major:
//   op(A) = A stored (M, K) (tA = 0) or Aᵀ with A stored (K, M) (tA = 1);
//   op(B) = B stored (K, N) (tB = 0) or Bᵀ with B stored (N, K) (tB = 1).
// Blocked as GotoBLAS: for each block of KC steps of K, the part's columns of op(B) are packed into
// panels of NR columns ([k][NR], zero-padded), and each tile of MR rows of op(A) into [k][MR]; a
// register-blocked MR x NR microkernel then runs over the packed data, so every layout (and the
// transposes the backward needs) costs one O(MK + KN) repacking instead of a transposed copy.
// Each C element sums its K products in increasing k within a block, then adds the blocks in
// order: the same sequence of f32 operations whichever part computes it.

const MR: i32 = 4;
const NR: i32 = 8;
const KC: i32 = 256;

/** Scratch bytes one part of a gemm needs (see src/core/backend/wasm-train.ts). */
// A tile: KC·MR f32; C tile spill: MR·NR f32; B block: KC · (columns rounded up to NR) f32.

function gemm(tA: i32, tB: i32, M: i32, N: i32, K: i32, A: usize, B: usize, C: usize, acc: i32, axis: i32, ws: usize, part: i32, nparts: i32): void {
  let m0 = 0, m1 = M, n0 = 0, n1 = N;
  if (axis == 0) { m0 = splitLo(M, part, nparts, MR); m1 = splitHi(M, part, nparts, MR); }
  else { n0 = splitLo(N, part, nparts, NR); n1 = splitHi(N, part, nparts, NR); }
  if (m0 >= m1 || n0 >= n1) return;
  const ap = ws, spill = ws + (<usize>(KC * MR) << 2), bp = spill + (<usize>(MR * NR) << 2);
  for (let k0 = 0; k0 < K; k0 += KC) {
    const kc = min(KC, K - k0);
    const add = acc != 0 || k0 > 0;
    const panelBytes = <usize>(kc * NR) << 2;
    let p: usize = bp;
    for (let j = n0; j < n1; j += NR) {
      packB(tB, B, N, K, k0, kc, j, min(NR, n1 - j), p);
      p += panelBytes;
    }
    for (let i = m0; i < m1; i += MR) {
      const mr = min(MR, m1 - i);
      packA(tA, A, M, K, k0, kc, i, mr, ap);
      p = bp;
      for (let j = n0; j < n1; j += NR) {
        const nr = min(NR, n1 - j);
        const c = C + (<usize>(i * N + j) << 2);
        if (mr == MR && nr == NR) micro4x8(ap, p, kc, c, N, add);
        else {
          micro4x8(ap, p, kc, spill, NR, false);
          for (let r = 0; r < mr; r++) {
            for (let q = 0; q < nr; q++) {
              const o = c + (<usize>(r * N + q) << 2), s = load<f32>(spill + (<usize>(r * NR + q) << 2));
              store<f32>(o, add ? load<f32>(o) + s : s);
            }
          }
        }
        p += panelBytes;
      }
    }
  }
}

/** Columns j..j+nr of op(B) over steps k0..k0+kc as [k][NR], columns past nr zero. */
function packB(tB: i32, B: usize, N: i32, K: i32, k0: i32, kc: i32, j: i32, nr: i32, p: usize): void {
  if (tB == 0) { // B (K, N): each k is a contiguous run of nr columns
    if (nr == NR) {
      for (let k = 0; k < kc; k++) {
        const s = B + (<usize>((k0 + k) * N + j) << 2), d = p + (<usize>(k * NR) << 2);
        v128.store(d, v128.load(s));
        v128.store(d, v128.load(s, 16), 16);
      }
    } else {
      for (let k = 0; k < kc; k++) {
        const s = B + (<usize>((k0 + k) * N + j) << 2), d = p + (<usize>(k * NR) << 2);
        for (let q = 0; q < NR; q++) store<f32>(d + (<usize>q << 2), q < nr ? load<f32>(s + (<usize>q << 2)) : 0);
      }
    }
  } else { // B (N, K): column q of the panel is row j+q of B
    for (let q = 0; q < NR; q++) {
      const d = p + (<usize>q << 2);
      if (q < nr) {
        const s = B + (<usize>((j + q) * K + k0) << 2);
        for (let k = 0; k < kc; k++) store<f32>(d + (<usize>(k * NR) << 2), load<f32>(s + (<usize>k << 2)));
      } else {
        for (let k = 0; k < kc; k++) store<f32>(d + (<usize>(k * NR) << 2), 0);
      }
    }
  }
}

/** Rows i..i+mr of op(A) over steps k0..k0+kc as [k][MR], rows past mr zero. */
function packA(tA: i32, A: usize, M: i32, K: i32, k0: i32, kc: i32, i: i32, mr: i32, p: usize): void {
  if (tA == 0) { // A (M, K): row r of the tile is contiguous
    if (mr == MR) {
      const s0 = A + (<usize>(i * K + k0) << 2), rb = <usize>K << 2;
      const s1 = s0 + rb, s2 = s1 + rb, s3 = s2 + rb;
      let k = 0;
      for (; k + 4 <= kc; k += 4) { // 4x4 transposes
        const o = <usize>k << 2;
        const x0 = v128.load(s0 + o), x1 = v128.load(s1 + o), x2 = v128.load(s2 + o), x3 = v128.load(s3 + o);
        const t0 = i32x4.shuffle(x0, x1, 0, 4, 1, 5), t1 = i32x4.shuffle(x2, x3, 0, 4, 1, 5);
        const t2 = i32x4.shuffle(x0, x1, 2, 6, 3, 7), t3 = i32x4.shuffle(x2, x3, 2, 6, 3, 7);
        const d = p + (<usize>(k * MR) << 2);
        v128.store(d, i64x2.shuffle(t0, t1, 0, 2));
        v128.store(d, i64x2.shuffle(t0, t1, 1, 3), 16);
        v128.store(d, i64x2.shuffle(t2, t3, 0, 2), 32);
        v128.store(d, i64x2.shuffle(t2, t3, 1, 3), 48);
      }
      for (; k < kc; k++) {
        const o = <usize>k << 2, d = p + (<usize>(k * MR) << 2);
        store<f32>(d, load<f32>(s0 + o)); store<f32>(d, load<f32>(s1 + o), 4);
        store<f32>(d, load<f32>(s2 + o), 8); store<f32>(d, load<f32>(s3 + o), 12);
      }
    } else {
      for (let r = 0; r < MR; r++) {
        const d = p + (<usize>r << 2);
        if (r < mr) {
          const s = A + (<usize>((i + r) * K + k0) << 2);
          for (let k = 0; k < kc; k++) store<f32>(d + (<usize>(k * MR) << 2), load<f32>(s + (<usize>k << 2)));
        } else {
          for (let k = 0; k < kc; k++) store<f32>(d + (<usize>(k * MR) << 2), 0);
        }
      }
    }
  } else { // A (K, M): each k is a contiguous run of mr rows
    if (mr == MR) {
      for (let k = 0; k < kc; k++) v128.store(p + (<usize>(k * MR) << 2), v128.load(A + (<usize>((k0 + k) * M + i) << 2)));
    } else {
      for (let k = 0; k < kc; k++) {
        const s = A + (<usize>((k0 + k) * M + i) << 2), d = p + (<usize>(k * MR) << 2);
        for (let r = 0; r < MR; r++) store<f32>(d + (<usize>r << 2), r < mr ? load<f32>(s + (<usize>r << 2)) : 0);
      }
    }
  }
}

/** C (4 x 8 at c, row stride ldc) (+)= packed A tile · packed B panel over kc steps. */
function micro4x8(a: usize, b: usize, kc: i32, c: usize, ldc: i32, add: bool): void {
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0), c10 = f32x4.splat(0), c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0), c21 = f32x4.splat(0), c30 = f32x4.splat(0), c31 = f32x4.splat(0);
  for (let k = 0; k < kc; k++) {
    const b0 = v128.load(b), b1 = v128.load(b, 16);
    const a0 = v128.load32_splat(a), a1 = v128.load32_splat(a, 4), a2 = v128.load32_splat(a, 8), a3 = v128.load32_splat(a, 12);
    c00 = fma4(c00, a0, b0); c01 = fma4(c01, a0, b1);
    c10 = fma4(c10, a1, b0); c11 = fma4(c11, a1, b1);
    c20 = fma4(c20, a2, b0); c21 = fma4(c21, a2, b1);
    c30 = fma4(c30, a3, b0); c31 = fma4(c31, a3, b1);
    a += 16; b += 32;
  }
  const rb = <usize>ldc << 2;
  const r0 = c, r1 = r0 + rb, r2 = r1 + rb, r3 = r2 + rb;
  if (add) {
    c00 = f32x4.add(v128.load(r0), c00); c01 = f32x4.add(v128.load(r0, 16), c01);
    c10 = f32x4.add(v128.load(r1), c10); c11 = f32x4.add(v128.load(r1, 16), c11);
    c20 = f32x4.add(v128.load(r2), c20); c21 = f32x4.add(v128.load(r2, 16), c21);
    c30 = f32x4.add(v128.load(r3), c30); c31 = f32x4.add(v128.load(r3, 16), c31);
  }
  v128.store(r0, c00); v128.store(r0, c01, 16);
  v128.store(r1, c10); v128.store(r1, c11, 16);
  v128.store(r2, c20); v128.store(r2, c21, 16);
  v128.store(r3, c30); v128.store(r3, c31, 16);
}

// ---------------------------------------------------------------------------------------------
// RWKV-7 WKV (SPEC §6, §7.3) over B sequences of T steps, per head with
// S[i=value][j=key]:  sa = S a;  S <- S diag(d) + sa bᵀ + v kᵀ;  y = S r,  d = exp(-exp(wraw)).
// Inputs (B·T, C) with C = H·N, N a multiple of 4; parts split the B·H (sequence, head) pairs.
// The forward stores the state entering every WKV_CHUNK steps in ckpt (B·H·chunks·N·N) when
// ckpt != 0; the backward recomputes each chunk's states from it, exactly as the forward did.

/** d[j] = exp(-exp(wraw[j])) and, when ew != 0, ew[j] = exp(wraw[j]) (f32x4 exponentials; N a multiple of 4). */
function decays(w: usize, N: i32, d: usize, ew: usize): void {
  for (let j = 0; j < N; j += 4) {
    const e = exp4(ld(w, j));
    st(d, j, exp4(f32x4.neg(e)));
    if (ew != 0) st(ew, j, e);
  }
}

/** Every sequence starts from s0 (H·N·N, a trained time_state) when s0 != 0, else from zeros. Part scratch: S (N·N), d (N). */
function wkv7Forward(Bn: i32, T: i32, H: i32, N: i32, r: usize, w: usize, k: usize, v: usize, a: usize, b: usize, y: usize, ckpt: usize,
  s0: usize, ws: usize, part: i32, nparts: i32): void {
  const lo = splitLo(Bn * H, part, nparts, 1), hi = splitHi(Bn * H, part, nparts, 1);
  const C = H * N, NN = N * N, chunks = (T + WKV_CHUNK - 1) / WKV_CHUNK;
  const S = ws, d = ws + (<usize>NN << 2);
  for (let pair = lo; pair < hi; pair++) {
    const bb = pair / H, h = pair % H;
    if (s0 != 0) memory.copy(S, s0 + (<usize>(h * NN) << 2), <usize>NN << 2);
    else memory.fill(S, 0, <usize>NN << 2);
    for (let t = 0; t < T; t++) {
      if (ckpt != 0 && t % WKV_CHUNK == 0) memory.copy(ckpt + (<usize>((pair * chunks + t / WKV_CHUNK) * NN) << 2), S, <usize>NN << 2);
      const o = <usize>((bb * T + t) * C + h * N) << 2;
      decays(w + o, N, d, 0);
      wkv7Step(S, S, N, r + o, d, k + o, v + o, a + o, b + o, y + o, 0);
    }
  }
}

/**
 * SPEC §7.3, t = T-1 … 0 with dS = dL/dS_t (the reference's wkv7Backward, vectorized over j):
 *   dS += gy rᵀ;  g_r = S_tᵀ gy;  g_k = dSᵀ v;  g_v = dS k;  g_b = dSᵀ sa;  e = dS b;  g_a = S_{t-1}ᵀ e
 *   g_wraw[j] = -exp(wraw[j]) d[j] Σ_i dS[i,j] S_{t-1}[i,j];  dS <- dS diag(d) + e aᵀ
 * Gradients accumulate (+=); a zero pointer skips that gradient. The gradient of the initial state
 * (state tuning), dS at t = -1, is written per sequence into gs0 (B·H·N·N partials, which the
 * caller sums over sequences in order) when gs0 != 0.
 * Part scratch: states ((WKV_CHUNK+1)·N·N), dS (N·N), sas (WKV_CHUNK·N), then N each: d, ew, y,
 * gv, e, accR, accK, accB, accA, accW.
 */
function wkv7Backward(Bn: i32, T: i32, H: i32, N: i32, r: usize, w: usize, k: usize, v: usize, a: usize, b: usize, ckpt: usize, gy: usize,
  gr: usize, gw: usize, gk: usize, gv: usize, ga: usize, gb: usize, gs0: usize, ws: usize, part: i32, nparts: i32): void {
  const lo = splitLo(Bn * H, part, nparts, 1), hi = splitHi(Bn * H, part, nparts, 1);
  const C = H * N, NN = N * N, chunks = (T + WKV_CHUNK - 1) / WKV_CHUNK;
  const nnBytes = <usize>NN << 2, nBytes = <usize>N << 2;
  const states = ws, dS = states + <usize>(WKV_CHUNK + 1) * nnBytes, sas = dS + nnBytes;
  const d = sas + <usize>WKV_CHUNK * nBytes, ew = d + nBytes, yv = ew + nBytes, gvAcc = yv + nBytes, e = gvAcc + nBytes;
  const accR = e + nBytes, accK = accR + nBytes, accB = accK + nBytes, accA = accB + nBytes, accW = accA + nBytes;
  for (let pair = lo; pair < hi; pair++) {
    const bb = pair / H, h = pair % H;
    memory.fill(dS, 0, nnBytes);
    for (let ch = chunks - 1; ch >= 0; ch--) {
      const t0 = ch * WKV_CHUNK, t1 = min(T, t0 + WKV_CHUNK);
      memory.copy(states, ckpt + <usize>(pair * chunks + ch) * nnBytes, nnBytes);
      for (let t = t0; t < t1; t++) { // recompute the chunk's states exactly as the forward did
        const o = <usize>((bb * T + t) * C + h * N) << 2, s = states + <usize>(t - t0) * nnBytes;
        decays(w + o, N, d, 0);
        wkv7Step(s, s + nnBytes, N, r + o, d, k + o, v + o, a + o, b + o, yv, sas + <usize>(t - t0) * nBytes);
      }
      for (let t = t1 - 1; t >= t0; t--) {
        const o = <usize>((bb * T + t) * C + h * N) << 2;
        const sp = states + <usize>(t - t0) * nnBytes, sn = sp + nnBytes, sa = sas + <usize>(t - t0) * nBytes;
        const rv = r + o, kv = k + o, vv = v + o, av = a + o, bv = b + o, g = gy + o;
        decays(w + o, N, d, ew);
        memory.fill(accR, 0, 5 * nBytes); // accR, accK, accB, accA, accW
        // Pass 1, two rows at a time: dS += gy rᵀ, then the column sums and the row sums of dS.
        for (let i = 0; i < N; i += 2) {
          const q0 = dS + <usize>i * nBytes, q1 = q0 + nBytes;
          const p0 = sp + <usize>i * nBytes, p1 = p0 + nBytes, n0 = sn + <usize>i * nBytes, n1 = n0 + nBytes;
          const g0s = load<f32>(at(g, i)), g1s = load<f32>(at(g, i), 4);
          const g0 = f32x4.splat(g0s), g1 = f32x4.splat(g1s);
          const v0 = f32x4.splat(load<f32>(at(vv, i))), v1 = f32x4.splat(load<f32>(at(vv, i), 4));
          const a0 = f32x4.splat(load<f32>(at(sa, i))), a1 = f32x4.splat(load<f32>(at(sa, i), 4));
          let gv0 = f32x4.splat(0), gv1 = f32x4.splat(0), e0 = f32x4.splat(0), e1 = f32x4.splat(0);
          for (let j = 0; j < N; j += 4) {
            const jo = <usize>j << 2;
            const rj = v128.load(rv + jo);
            const x0 = fma4(v128.load(q0 + jo), g0, rj), x1 = fma4(v128.load(q1 + jo), g1, rj);
            v128.store(q0 + jo, x0); v128.store(q1 + jo, x1);
            v128.store(accR + jo, fma4(fma4(v128.load(accR + jo), v128.load(n0 + jo), g0), v128.load(n1 + jo), g1));
            v128.store(accK + jo, fma4(fma4(v128.load(accK + jo), x0, v0), x1, v1));
            v128.store(accB + jo, fma4(fma4(v128.load(accB + jo), x0, a0), x1, a1));
            v128.store(accW + jo, fma4(fma4(v128.load(accW + jo), x0, v128.load(p0 + jo)), x1, v128.load(p1 + jo)));
            const kj = v128.load(kv + jo), bj = v128.load(bv + jo);
            gv0 = fma4(gv0, x0, kj); gv1 = fma4(gv1, x1, kj);
            e0 = fma4(e0, x0, bj); e1 = fma4(e1, x1, bj);
          }
          store<f32>(at(gvAcc, i), hsum(gv0)); store<f32>(at(gvAcc, i), hsum(gv1), 4);
          store<f32>(at(e, i), hsum(e0)); store<f32>(at(e, i), hsum(e1), 4);
        }
        // Pass 2: g_a = S_{t-1}ᵀ e and dS -> dL/dS_{t-1}.
        for (let i = 0; i < N; i += 2) {
          const q0 = dS + <usize>i * nBytes, q1 = q0 + nBytes, p0 = sp + <usize>i * nBytes, p1 = p0 + nBytes;
          const e0 = f32x4.splat(load<f32>(at(e, i))), e1 = f32x4.splat(load<f32>(at(e, i), 4));
          for (let j = 0; j < N; j += 4) {
            const jo = <usize>j << 2;
            const dj = v128.load(d + jo), aj = v128.load(av + jo);
            v128.store(accA + jo, fma4(fma4(v128.load(accA + jo), v128.load(p0 + jo), e0), v128.load(p1 + jo), e1));
            v128.store(q0 + jo, fma4(f32x4.mul(v128.load(q0 + jo), dj), e0, aj));
            v128.store(q1 + jo, fma4(f32x4.mul(v128.load(q1 + jo), dj), e1, aj));
          }
        }
        for (let j = 0; j < N; j += 4) {
          const jo = <usize>j << 2;
          if (gr != 0) v128.store(gr + o + jo, f32x4.add(v128.load(gr + o + jo), v128.load(accR + jo)));
          if (gk != 0) v128.store(gk + o + jo, f32x4.add(v128.load(gk + o + jo), v128.load(accK + jo)));
          if (gb != 0) v128.store(gb + o + jo, f32x4.add(v128.load(gb + o + jo), v128.load(accB + jo)));
          if (ga != 0) v128.store(ga + o + jo, f32x4.add(v128.load(ga + o + jo), v128.load(accA + jo)));
          if (gv != 0) v128.store(gv + o + jo, f32x4.add(v128.load(gv + o + jo), v128.load(gvAcc + jo)));
          if (gw != 0) {
            const gwj = f32x4.mul(f32x4.neg(f32x4.mul(v128.load(ew + jo), v128.load(d + jo))), v128.load(accW + jo));
            v128.store(gw + o + jo, f32x4.add(v128.load(gw + o + jo), gwj));
          }
        }
      }
    }
    if (gs0 != 0) memory.copy(gs0 + <usize>pair * nnBytes, dS, nnBytes);
  }
}

// ---------------------------------------------------------------------------------------------
// RWKV-4 WKV (SPEC §3, §7.1; the reference's wkv4Forward/wkv4Backward, the CUDA kernel's
// running-max form) over B sequences of T steps, f32x4 over 4 adjacent channels (C a multiple
// of 4) with w = -exp(time_decay), u = time_first (C). Parts split the B·C/4 (sequence, 4 channels)
// items. The gradients of time_decay and time_first are written per sequence into (B, C)
// partials (gtd, gtf; zero pointer: skipped) that the caller sums over sequences in order
// (sumRows), so no two parts ever add to the same element.

/** The v4 kernel's initial running maximum: e^{pp - p} vanishes at the first step. */
const V4_MIN_EXPONENT: f32 = -1e38;

function wkv4Forward(Bn: i32, T: i32, C: i32, td: usize, tf: usize, k: usize, v: usize, y: usize, part: i32, nparts: i32): void {
  const groups = C >> 2, lo = splitLo(Bn * groups, part, nparts, 1), hi = splitHi(Bn * groups, part, nparts, 1);
  for (let item = lo; item < hi; item++) {
    const bb = item / groups, c = (item % groups) << 2, o = <usize>(bb * T * C + c) << 2;
    wkv4State(f32x4.splat(0), f32x4.splat(0), f32x4.splat(V4_MIN_EXPONENT));
    wkv4Scan(T, C, f32x4.neg(exp4(ld(td, c))), ld(tf, c), k + o, v + o, y + o, false);
  }
}

/**
 * A forward sweep stores q_t = gy_t/D_t and r_t = u + k_t - p_t and accumulates g_w, g_u; a
 * reverse sweep keeps Σ_{s>t} q_s e^{(s-t-1)w} and -Σ q_s e^{…} y_s with their own running
 * maximum. y is the forward's output; gk, gv (B·T, C) accumulate (+=).
 * Part scratch: q, r (T·4 each).
 */
function wkv4Backward(Bn: i32, T: i32, C: i32, td: usize, tf: usize, k: usize, v: usize, y: usize, gy: usize,
  gtd: usize, gtf: usize, gk: usize, gv: usize, ws: usize, part: i32, nparts: i32): void {
  const groups = C >> 2, lo = splitLo(Bn * groups, part, nparts, 1), hi = splitHi(Bn * groups, part, nparts, 1);
  const qs = ws, rs = ws + (<usize>T << 4);
  for (let item = lo; item < hi; item++) {
    const bb = item / groups, c = (item % groups) << 2;
    const w = f32x4.neg(exp4(ld(td, c))), u = ld(tf, c);
    let gw = f32x4.splat(0), gu = f32x4.splat(0), aa = f32x4.splat(0), bs = f32x4.splat(0);
    let ga = f32x4.splat(0), gb = f32x4.splat(0), pp = f32x4.splat(V4_MIN_EXPONENT);
    for (let t = 0; t < T; t++) {
      const n = (bb * T + t) * C + c, kk = ld(k, n), vv = ld(v, n), yy = ld(y, n);
      let ww = f32x4.add(u, kk);
      let p = f32x4.max(pp, ww);
      let e1 = exp4(f32x4.sub(pp, p)), e2 = exp4(f32x4.sub(ww, p));
      const qq = f32x4.div(ld(gy, n), fma4(e2, e1, bs));
      gw = fma4(gw, f32x4.mul(f32x4.sub(ga, f32x4.mul(gb, yy)), e1), qq);
      gu = fma4(gu, f32x4.mul(f32x4.sub(vv, yy), e2), qq);
      st(qs, t << 2, qq);
      st(rs, t << 2, f32x4.sub(ww, p));
      ww = f32x4.add(w, pp);
      p = f32x4.max(ww, kk);
      e1 = exp4(f32x4.sub(ww, p));
      e2 = exp4(f32x4.sub(kk, p));
      ga = f32x4.mul(e1, f32x4.add(aa, ga));
      gb = f32x4.mul(e1, f32x4.add(bs, gb));
      aa = fma4(f32x4.mul(e1, aa), e2, vv);
      bs = fma4(e2, e1, bs);
      pp = p;
    }
    // Chain rule through w = -exp(time_decay): dw/d(time_decay) = w.
    if (gtd != 0) st(gtd, bb * C + c, f32x4.mul(gw, w));
    if (gtf != 0) st(gtf, bb * C + c, gu);
    aa = f32x4.splat(0); bs = f32x4.splat(0); pp = f32x4.splat(V4_MIN_EXPONENT);
    for (let t = T - 1; t >= 0; t--) {
      const n = (bb * T + t) * C + c, kk = ld(k, n), vv = ld(v, n), yy = ld(y, n), qq = ld(qs, t << 2), rr = ld(rs, t << 2);
      let e1 = f32x4.mul(qq, exp4(rr));
      let e2 = exp4(f32x4.add(kk, pp));
      if (gk != 0) addTo(gk, n, fma4(f32x4.mul(e1, f32x4.sub(vv, yy)), e2, fma4(bs, aa, vv)));
      if (gv != 0) addTo(gv, n, fma4(e1, e2, aa));
      const ww = f32x4.add(w, pp), www = f32x4.sub(f32x4.sub(rr, u), kk);
      const p = f32x4.max(ww, www);
      e1 = exp4(f32x4.sub(ww, p));
      e2 = f32x4.mul(qq, exp4(f32x4.sub(www, p)));
      aa = fma4(e2, e1, aa);
      bs = f32x4.sub(f32x4.mul(e1, bs), f32x4.mul(yy, e2));
      pp = p;
    }
  }
}

/** dst (C) += Σ_r src (R, C), row by row in order (the per-sequence partials of a parameter gradient). */
export function sumRows(dst: usize, src: usize, R: i32, C: i32): void {
  for (let r = 0; r < R; r++) for (let c = 0; c < C; c += 4) addTo(dst, c, ld(src, r * C + c));
}

// ---------------------------------------------------------------------------------------------
// RWKV-5.2 / 6 WKV (SPEC §4, §5, §7.2; the reference's wkv5Forward/wkv5Backward) per head with
// S[j=key][i=value], f32x4 over the value index i (N a multiple of 4):
//   y[i] = Σ_j r[j] (u[j] k[j] v[i] + S[j,i]);   S[j,i] <- k[j] v[i] + d[j] S[j,i],  d = exp(-exp(wraw))
// wraw is (C) constant (v5.2, perToken = 0) or (B·T, C) per token (v6, perToken = 1); u (C).
// Parts split the B·H (sequence, head) pairs; checkpoints as wkv7's. The gradients of u, and of a
// constant wraw, are written per sequence into (B, C) partials that the caller sums in order.

/** Part scratch: S (N·N), d (N). */
function wkv5Forward(Bn: i32, T: i32, H: i32, N: i32, r: usize, k: usize, v: usize, w: usize, u: usize, perToken: i32, y: usize, ckpt: usize,
  ws: usize, part: i32, nparts: i32): void {
  const lo = splitLo(Bn * H, part, nparts, 1), hi = splitHi(Bn * H, part, nparts, 1);
  const C = H * N, NN = N * N, chunks = (T + WKV_CHUNK - 1) / WKV_CHUNK;
  const S = ws, d = ws + (<usize>NN << 2);
  for (let pair = lo; pair < hi; pair++) {
    const bb = pair / H, h = pair % H, uh = u + (<usize>(h * N) << 2);
    memory.fill(S, 0, <usize>NN << 2);
    for (let t = 0; t < T; t++) {
      if (ckpt != 0 && t % WKV_CHUNK == 0) memory.copy(ckpt + (<usize>((pair * chunks + t / WKV_CHUNK) * NN) << 2), S, <usize>NN << 2);
      const o = <usize>((bb * T + t) * C + h * N) << 2, wo = perToken != 0 ? o : <usize>(h * N) << 2;
      decays(w + wo, N, d, 0);
      const ruk = dot3(r + o, uh, k + o, N);
      wkv5Step(S, S, N, r + o, k + o, v + o, d, y + o);
      wkv5Out(y + o, v + o, ruk, N);
    }
  }
}

/**
 * SPEC §7.2 with Z_t = dL/dS_t run backwards (Z_{t-1} = r_t gy_tᵀ + diag(d_t) Z_t):
 *   g_r[j] = Σ_i gy[i](u[j]k[j]v[i] + S_{t-1}[j,i]);   g_k[j] = Σ_i v[i](u[j]r[j]gy[i] + Z_t[j,i])
 *   g_v[i] = Σ_j k[j](u[j]r[j]gy[i] + Z_t[j,i]);         g_u[j] = Σ_t r[j]k[j] Σ_i v[i]gy[i]
 *   g_wraw[j] = -exp(wraw[j]) d[j] Σ_i S_{t-1}[j,i] Z_t[j,i]
 * gr, gk, gv, and gw when per token, accumulate (+=) in place; gu, and gw when constant, into the
 * (B, C) partials. One pass over each row j of Z_t computes its sums and then Z_{t-1}.
 * Part scratch: states ((WKV_CHUNK+1)·N·N), Z (N·N), then N each: d, ew, gv.
 */
function wkv5Backward(Bn: i32, T: i32, H: i32, N: i32, r: usize, k: usize, v: usize, w: usize, u: usize, perToken: i32, ckpt: usize, gy: usize,
  gr: usize, gk: usize, gv: usize, gw: usize, gu: usize, ws: usize, part: i32, nparts: i32): void {
  const lo = splitLo(Bn * H, part, nparts, 1), hi = splitHi(Bn * H, part, nparts, 1);
  const C = H * N, NN = N * N, chunks = (T + WKV_CHUNK - 1) / WKV_CHUNK;
  const nnBytes = <usize>NN << 2, nBytes = <usize>N << 2;
  const states = ws, Z = states + <usize>(WKV_CHUNK + 1) * nnBytes;
  const d = Z + nnBytes, ew = d + nBytes, gvAcc = ew + nBytes;
  for (let pair = lo; pair < hi; pair++) {
    const bb = pair / H, h = pair % H, uh = u + (<usize>(h * N) << 2);
    const part0 = <usize>(bb * C + h * N) << 2; // this pair's row of the (B, C) partials
    memory.fill(Z, 0, nnBytes);
    for (let ch = chunks - 1; ch >= 0; ch--) {
      const t0 = ch * WKV_CHUNK, t1 = min(T, t0 + WKV_CHUNK);
      memory.copy(states, ckpt + <usize>(pair * chunks + ch) * nnBytes, nnBytes);
      for (let t = t0; t < t1; t++) { // recompute the chunk's states exactly as the forward did
        const o = <usize>((bb * T + t) * C + h * N) << 2, wo = perToken != 0 ? o : <usize>(h * N) << 2;
        decays(w + wo, N, d, 0);
        const s = states + <usize>(t - t0) * nnBytes;
        wkv5Step(s, s + nnBytes, N, r + o, k + o, v + o, d, 0);
      }
      for (let t = t1 - 1; t >= t0; t--) {
        const o = <usize>((bb * T + t) * C + h * N) << 2, wo = perToken != 0 ? o : <usize>(h * N) << 2;
        const sp = states + <usize>(t - t0) * nnBytes;
        const rv = r + o, kv = k + o, vv = v + o, g = gy + o;
        const gwRow: usize = gw == 0 ? <usize>0 : perToken != 0 ? gw + o : gw + part0;
        decays(w + wo, N, d, ew);
        let gyv4 = f32x4.splat(0);
        for (let i = 0; i < N; i += 4) gyv4 = fma4(gyv4, ld(g, i), ld(vv, i));
        const gyv = hsum(gyv4), kur = dot3(kv, uh, rv, N);
        memory.fill(gvAcc, 0, nBytes);
        for (let j = 0; j < N; j++) {
          const zr = Z + <usize>j * nBytes, sr = sp + <usize>j * nBytes;
          const uj = load<f32>(at(uh, j)), rj = load<f32>(at(rv, j)), kj = load<f32>(at(kv, j));
          const rjv = f32x4.splat(rj), kjv = f32x4.splat(kj), djv = f32x4.splat(load<f32>(at(d, j)));
          let sGyS = f32x4.splat(0), sVZ = f32x4.splat(0), sSZ = f32x4.splat(0);
          for (let i = 0; i < N; i += 4) {
            const z = ld(zr, i), s = ld(sr, i), gi = ld(g, i);
            sGyS = fma4(sGyS, gi, s);
            sVZ = fma4(sVZ, ld(vv, i), z);
            sSZ = fma4(sSZ, s, z);
            st(gvAcc, i, fma4(ld(gvAcc, i), kjv, z));
            st(zr, i, fma4(f32x4.mul(rjv, gi), djv, z)); // Z_t -> Z_{t-1}
          }
          if (gr != 0) store<f32>(at(gr + o, j), load<f32>(at(gr + o, j)) + (uj * kj * gyv + hsum(sGyS)));
          if (gk != 0) store<f32>(at(gk + o, j), load<f32>(at(gk + o, j)) + (uj * rj * gyv + hsum(sVZ)));
          if (gu != 0) store<f32>(at(gu + part0, j), load<f32>(at(gu + part0, j)) + rj * kj * gyv);
          if (gwRow != 0) store<f32>(at(gwRow, j), load<f32>(at(gwRow, j)) - load<f32>(at(ew, j)) * load<f32>(at(d, j)) * hsum(sSZ));
        }
        if (gv != 0) {
          const kurv = f32x4.splat(kur);
          for (let i = 0; i < N; i += 4) addTo(gv + o, i, fma4(ld(gvAcc, i), ld(g, i), kurv));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Element-wise ops of the graph (ops.ts is the specification), f32x4 over contiguous elements,
// called directly on the calling thread. Counts are multiples of 4 (the JS side checks and runs
// the reference otherwise). "Row" broadcasts: a (R, C) tensor with a vector m (C) per row.
// Backward functions accumulate (+=); a zero pointer skips that gradient.

/* @inline */ function ld(p: usize, i: i32): v128 {
  return v128.load(p + (<usize>i << 2));
}
/* @inline */ function st(p: usize, i: i32, x: v128): void {
  v128.store(p + (<usize>i << 2), x);
}
/* @inline */ function addTo(p: usize, i: i32, x: v128): void {
  v128.store(p + (<usize>i << 2), f32x4.add(v128.load(p + (<usize>i << 2)), x));
}

/** y = x + (sx - x)·m, m (C). */
export function lerpF(x: usize, sx: usize, m: usize, R: i32, C: i32, y: usize): void {
  for (let o = 0; o < R * C; o += C) {
    for (let c = 0; c < C; c += 4) {
      const xv = ld(x, o + c);
      st(y, o + c, fma4(xv, f32x4.sub(ld(sx, o + c), xv), ld(m, c)));
    }
  }
}

/** gx += gy·(1 - m);  gsx += gy·m;  gm += Σ_rows gy·(sx - x). */
export function lerpB(x: usize, sx: usize, m: usize, R: i32, C: i32, gy: usize, gx: usize, gsx: usize, gm: usize): void {
  const one = f32x4.splat(1);
  for (let o = 0; o < R * C; o += C) {
    for (let c = 0; c < C; c += 4) {
      const g = ld(gy, o + c), mc = ld(m, c);
      if (gx != 0) addTo(gx, o + c, f32x4.mul(g, f32x4.sub(one, mc)));
      if (gsx != 0) addTo(gsx, o + c, f32x4.mul(g, mc));
      if (gm != 0) addTo(gm, c, f32x4.mul(g, f32x4.sub(ld(sx, o + c), ld(x, o + c))));
    }
  }
}

/** v6 data-dependent mix: y = x + d·(m + dm), m (C), x, d, dm (R, C). */
export function lerpDynF(x: usize, d: usize, m: usize, dm: usize, R: i32, C: i32, y: usize): void {
  for (let o = 0; o < R * C; o += C) {
    for (let c = 0; c < C; c += 4) st(y, o + c, fma4(ld(x, o + c), ld(d, o + c), f32x4.add(ld(m, c), ld(dm, o + c))));
  }
}

/** gx += gy;  gd += gy·(m + dm);  gm += Σ_rows gy·d;  gdm += gy·d. */
export function lerpDynB(d: usize, m: usize, dm: usize, R: i32, C: i32, gy: usize, gx: usize, gd: usize, gm: usize, gdm: usize): void {
  for (let o = 0; o < R * C; o += C) {
    for (let c = 0; c < C; c += 4) {
      const g = ld(gy, o + c), gdv = f32x4.mul(g, ld(d, o + c));
      if (gx != 0) addTo(gx, o + c, g);
      if (gd != 0) addTo(gd, o + c, f32x4.mul(g, f32x4.add(ld(m, c), ld(dm, o + c))));
      if (gm != 0) addTo(gm, c, gdv);
      if (gdm != 0) addTo(gdm, o + c, gdv);
    }
  }
}

/** y = a - b, both n. */
export function subF(a: usize, b: usize, n: i32, y: usize): void {
  for (let i = 0; i < n; i += 4) st(y, i, f32x4.sub(ld(a, i), ld(b, i)));
}

/** ga += gy;  gb -= gy. */
export function subB(n: i32, gy: usize, ga: usize, gb: usize): void {
  if (ga != 0) for (let i = 0; i < n; i += 4) addTo(ga, i, ld(gy, i));
  if (gb != 0) for (let i = 0; i < n; i += 4) st(gb, i, f32x4.sub(ld(gb, i), ld(gy, i)));
}

/** y = s·a. */
export function scaleF(a: usize, s: f32, n: i32, y: usize): void {
  const sv = f32x4.splat(s);
  for (let i = 0; i < n; i += 4) st(y, i, f32x4.mul(ld(a, i), sv));
}

/** ga += gy·s. */
export function scaleB(s: f32, n: i32, gy: usize, ga: usize): void {
  const sv = f32x4.splat(s);
  for (let i = 0; i < n; i += 4) addTo(ga, i, f32x4.mul(ld(gy, i), sv));
}

/** GPT-mode token shift over B sequences of T rows of C: y[b,t] = x[b,t-1], y[b,0] = 0. */
export function shiftF(x: usize, Bn: i32, T: i32, C: i32, y: usize): void {
  const rowBytes = <usize>C << 2;
  for (let b = 0; b < Bn; b++) {
    const o = <usize>(b * T * C) << 2;
    memory.fill(y + o, 0, rowBytes);
    if (T > 1) memory.copy(y + o + rowBytes, x + o, <usize>(T - 1) * rowBytes);
  }
}

/** gx[b,t-1] += gy[b,t]. */
export function shiftB(Bn: i32, T: i32, C: i32, gy: usize, gx: usize): void {
  for (let b = 0; b < Bn; b++) {
    const o = b * T * C;
    for (let i = 0; i < (T - 1) * C; i += 4) addTo(gx, o + i, ld(gy, o + C + i));
  }
}

/** y (R, n) = columns c0 … c0+n of x (R, W). */
export function sliceF(x: usize, R: i32, W: i32, c0: i32, n: i32, y: usize): void {
  for (let r = 0; r < R; r++) memory.copy(y + (<usize>(r * n) << 2), x + (<usize>(r * W + c0) << 2), <usize>n << 2);
}

/** gx[:, c0 … c0+n] += gy (n a multiple of 4). */
export function sliceB(R: i32, W: i32, c0: i32, n: i32, gy: usize, gx: usize): void {
  for (let r = 0; r < R; r++) for (let j = 0; j < n; j += 4) addTo(gx, r * W + c0 + j, ld(gy, r * n + j));
}

/** y = a + b (b (n), or with C > 0 a row vector (C) broadcast over the n / C rows). */
export function addF(a: usize, b: usize, n: i32, C: i32, y: usize): void {
  if (C == 0) { for (let i = 0; i < n; i += 4) st(y, i, f32x4.add(ld(a, i), ld(b, i))); return; }
  for (let o = 0; o < n; o += C) for (let c = 0; c < C; c += 4) st(y, o + c, f32x4.add(ld(a, o + c), ld(b, c)));
}

/** ga += gy;  gb += gy (or its sum over rows when C > 0). */
export function addB(n: i32, C: i32, gy: usize, ga: usize, gb: usize): void {
  if (ga != 0) for (let i = 0; i < n; i += 4) addTo(ga, i, ld(gy, i));
  if (gb == 0) return;
  if (C == 0) { for (let i = 0; i < n; i += 4) addTo(gb, i, ld(gy, i)); return; }
  for (let o = 0; o < n; o += C) for (let c = 0; c < C; c += 4) addTo(gb, c, ld(gy, o + c));
}

/** y = a·b (b as in addF). */
export function mulF(a: usize, b: usize, n: i32, C: i32, y: usize): void {
  if (C == 0) { for (let i = 0; i < n; i += 4) st(y, i, f32x4.mul(ld(a, i), ld(b, i))); return; }
  for (let o = 0; o < n; o += C) for (let c = 0; c < C; c += 4) st(y, o + c, f32x4.mul(ld(a, o + c), ld(b, c)));
}

/** ga += gy·b;  gb += gy·a (summed over rows when C > 0). */
export function mulB(a: usize, b: usize, n: i32, C: i32, gy: usize, ga: usize, gb: usize): void {
  if (C == 0) {
    if (ga != 0) for (let i = 0; i < n; i += 4) addTo(ga, i, f32x4.mul(ld(gy, i), ld(b, i)));
    if (gb != 0) for (let i = 0; i < n; i += 4) addTo(gb, i, f32x4.mul(ld(gy, i), ld(a, i)));
    return;
  }
  for (let o = 0; o < n; o += C) {
    for (let c = 0; c < C; c += 4) {
      const g = ld(gy, o + c);
      if (ga != 0) addTo(ga, o + c, f32x4.mul(g, ld(b, c)));
      if (gb != 0) addTo(gb, c, f32x4.mul(g, ld(a, o + c)));
    }
  }
}

// log of four f32 (Cephes logf polynomial, ~2 ulp; exp4 is in simd.ts): the activations'
// transcendental functions, which cost more than everything else in those ops as scalar calls.

/** Natural log of four positive normal f32. */
function log4(x0: v128): v128 {
  const bits = x0;
  let e = f32x4.convert_i32x4_s(i32x4.sub(i32x4.shr_u(bits, 23), i32x4.splat(126)));
  let m = v128.or(v128.and(bits, i32x4.splat(0x7fffff)), i32x4.splat(0x3f000000)); // [0.5, 1)
  const small = f32x4.lt(m, f32x4.splat(0.7071067811865476));
  e = f32x4.sub(e, v128.and(small, f32x4.splat(1)));
  m = f32x4.sub(f32x4.add(m, v128.and(small, m)), f32x4.splat(1));
  const z = f32x4.mul(m, m);
  let p = f32x4.splat(7.0376836292e-2);
  p = fma4(f32x4.splat(-1.1514610310e-1), p, m);
  p = fma4(f32x4.splat(1.1676998740e-1), p, m);
  p = fma4(f32x4.splat(-1.2420140846e-1), p, m);
  p = fma4(f32x4.splat(1.4249322787e-1), p, m);
  p = fma4(f32x4.splat(-1.6668057665e-1), p, m);
  p = fma4(f32x4.splat(2.0000714765e-1), p, m);
  p = fma4(f32x4.splat(-2.4999993993e-1), p, m);
  p = fma4(f32x4.splat(3.3333331174e-1), p, m);
  let y = f32x4.mul(f32x4.mul(p, m), z);
  y = fma4(y, e, f32x4.splat(LN2_LO));
  y = fma4(y, z, f32x4.splat(-0.5));
  return fma4(f32x4.add(m, y), e, f32x4.splat(LN2_HI));
}

/* @inline */ function sigmoid4(x: v128): v128 {
  const one = f32x4.splat(1);
  return f32x4.div(one, f32x4.add(one, exp4(f32x4.neg(x))));
}

// Activation ids; keep in sync with ACT in src/core/backend/wasm-train.ts.
const ACT_SIGMOID: i32 = 0;
const ACT_TANH: i32 = 1;
const ACT_RELU2: i32 = 2;
const ACT_SILU: i32 = 4; // and 3: the v7 decay clamp (the remaining branch below)

/** y = f(x) over n elements (ops.ts activationForward). */
export function actF(f: i32, x: usize, n: i32, y: usize): void {
  const one = f32x4.splat(1), zero = f32x4.splat(0);
  for (let i = 0; i < n; i += 4) {
    const v = ld(x, i);
    let r: v128;
    if (f == ACT_SIGMOID) r = sigmoid4(v);
    else if (f == ACT_TANH) { // sign(x)·(1 - e^{-2|x|})/(1 + e^{-2|x|})
      const t = exp4(f32x4.mul(f32x4.abs(v), f32x4.splat(-2)));
      const a = f32x4.div(f32x4.sub(one, t), f32x4.add(one, t));
      r = v128.or(a, v128.and(v, i32x4.splat(0x80000000)));
    } else if (f == ACT_RELU2) { const p = f32x4.max(v, zero); r = f32x4.mul(p, p); }
    else if (f == ACT_SILU) r = f32x4.mul(v, sigmoid4(v));
    else { // -softplus(-x) - 1/2 with softplus(u) = max(u, 0) + log(1 + e^{-|u|})
      const sp = f32x4.add(f32x4.max(f32x4.neg(v), zero), log4(f32x4.add(one, exp4(f32x4.neg(f32x4.abs(v))))));
      r = f32x4.sub(f32x4.neg(sp), f32x4.splat(0.5));
    }
    st(y, i, r);
  }
}

/** gx += gy·f'(x) (ops.ts activationBackward), from the saved output y where cheaper. */
export function actB(f: i32, x: usize, y: usize, n: i32, gy: usize, gx: usize): void {
  const one = f32x4.splat(1), zero = f32x4.splat(0);
  for (let i = 0; i < n; i += 4) {
    const g = ld(gy, i);
    let d: v128;
    if (f == ACT_SIGMOID) { const s = ld(y, i); d = f32x4.mul(s, f32x4.sub(one, s)); }
    else if (f == ACT_TANH) { const t = ld(y, i); d = f32x4.sub(one, f32x4.mul(t, t)); }
    else if (f == ACT_RELU2) d = f32x4.mul(f32x4.splat(2), f32x4.max(ld(x, i), zero));
    else if (f == ACT_SILU) { const xv = ld(x, i), s = sigmoid4(xv); d = f32x4.mul(s, fma4(one, xv, f32x4.sub(one, s))); }
    else d = sigmoid4(f32x4.neg(ld(x, i)));
    addTo(gx, i, f32x4.mul(g, d));
  }
}

/**
 * Per row and group of N (a multiple of 4): y = (x - mean)/sqrt(var + eps)·w + b with w, b per
 * channel (G·N); saves mean and 1/std per group (f32, R·G each). LayerNorm is G = 1.
 */
export function normF(x: usize, R: i32, G: i32, N: i32, w: usize, b: usize, eps: f32, y: usize, mean: usize, rstd: usize): void {
  const invN: f32 = 1 / <f32>N;
  for (let g = 0; g < R * G; g++) {
    const o = g * N, c0 = (g % G) * N;
    let s4 = f32x4.splat(0);
    for (let j = 0; j < N; j += 4) s4 = f32x4.add(s4, ld(x, o + j));
    const m = hsum(s4) * invN, mv = f32x4.splat(m);
    let v4 = f32x4.splat(0);
    for (let j = 0; j < N; j += 4) { const dv = f32x4.sub(ld(x, o + j), mv); v4 = fma4(v4, dv, dv); }
    const rs: f32 = 1 / Mathf.sqrt(hsum(v4) * invN + eps);
    store<f32>(at(mean, g), m); store<f32>(at(rstd, g), rs);
    const rv = f32x4.splat(rs);
    for (let j = 0; j < N; j += 4) st(y, o + j, fma4(ld(b, c0 + j), f32x4.mul(f32x4.sub(ld(x, o + j), mv), rv), ld(w, c0 + j)));
  }
}

/** gx += rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)) with ĝ = gy·w;  gw += Σ gy x̂;  gb += Σ gy. */
export function normB(x: usize, R: i32, G: i32, N: i32, w: usize, mean: usize, rstd: usize, gy: usize, gx: usize, gw: usize, gb: usize): void {
  const invN: f32 = 1 / <f32>N;
  for (let g = 0; g < R * G; g++) {
    const o = g * N, c0 = (g % G) * N;
    const mv = f32x4.splat(load<f32>(at(mean, g))), rv = f32x4.splat(load<f32>(at(rstd, g)));
    let sg = f32x4.splat(0), sgx = f32x4.splat(0);
    for (let j = 0; j < N; j += 4) {
      const xh = f32x4.mul(f32x4.sub(ld(x, o + j), mv), rv), gyj = ld(gy, o + j);
      if (gw != 0) addTo(gw, c0 + j, f32x4.mul(gyj, xh));
      if (gb != 0) addTo(gb, c0 + j, gyj);
      const gh = f32x4.mul(gyj, ld(w, c0 + j));
      sg = f32x4.add(sg, gh); sgx = fma4(sgx, gh, xh);
    }
    if (gx == 0) continue;
    const sgm = f32x4.splat(hsum(sg) * invN), sgxm = f32x4.splat(hsum(sgx) * invN);
    for (let j = 0; j < N; j += 4) {
      const xh = f32x4.mul(f32x4.sub(ld(x, o + j), mv), rv);
      const t = f32x4.sub(f32x4.sub(f32x4.mul(ld(gy, o + j), ld(w, c0 + j)), sgm), f32x4.mul(xh, sgxm));
      addTo(gx, o + j, f32x4.mul(rv, t));
    }
  }
}

/** v7 value residual: y = v + (vf - v)·gate, all n. */
export function resMixF(v: usize, vf: usize, gate: usize, n: i32, y: usize): void {
  for (let i = 0; i < n; i += 4) { const a = ld(v, i); st(y, i, fma4(a, f32x4.sub(ld(vf, i), a), ld(gate, i))); }
}

export function resMixB(v: usize, vf: usize, gate: usize, n: i32, gy: usize, gv: usize, gvf: usize, ggate: usize): void {
  const one = f32x4.splat(1);
  for (let i = 0; i < n; i += 4) {
    const g = ld(gy, i), s = ld(gate, i);
    if (gv != 0) addTo(gv, i, f32x4.mul(g, f32x4.sub(one, s)));
    if (gvf != 0) addTo(gvf, i, f32x4.mul(g, s));
    if (ggate != 0) addTo(ggate, i, f32x4.mul(g, f32x4.sub(ld(vf, i), ld(v, i))));
  }
}

/** v7 key update: y = k·(1 + (a - 1)·k_a), k and a (R, C), k_a (C). */
export function keyUpdF(k: usize, a: usize, ka: usize, R: i32, C: i32, y: usize): void {
  const one = f32x4.splat(1);
  for (let o = 0; o < R * C; o += C) {
    for (let c = 0; c < C; c += 4) st(y, o + c, f32x4.mul(ld(k, o + c), fma4(one, f32x4.sub(ld(a, o + c), one), ld(ka, c))));
  }
}

export function keyUpdB(k: usize, a: usize, ka: usize, R: i32, C: i32, gy: usize, gk: usize, ga: usize, gka: usize): void {
  const one = f32x4.splat(1);
  for (let o = 0; o < R * C; o += C) {
    for (let c = 0; c < C; c += 4) {
      const g = ld(gy, o + c), kk = ld(k, o + c), am = f32x4.sub(ld(a, o + c), one), kac = ld(ka, c);
      if (gk != 0) addTo(gk, o + c, f32x4.mul(g, fma4(one, am, kac)));
      if (ga != 0) addTo(ga, o + c, f32x4.mul(f32x4.mul(g, kk), kac));
      if (gka != 0) addTo(gka, c, f32x4.mul(f32x4.mul(g, kk), am));
    }
  }
}

/** Each group of N divided by its L2 norm, clamped below at eps; saves the norms (f32). */
export function l2nF(x: usize, groups: i32, N: i32, y: usize, norm: usize, eps: f32): void {
  for (let g = 0; g < groups; g++) {
    const o = g * N;
    let s = f32x4.splat(0);
    for (let j = 0; j < N; j += 4) { const v = ld(x, o + j); s = fma4(s, v, v); }
    const nm = max(Mathf.sqrt(hsum(s)), eps);
    store<f32>(at(norm, g), nm);
    const inv = f32x4.splat(nm);
    for (let j = 0; j < N; j += 4) st(y, o + j, f32x4.div(ld(x, o + j), inv));
  }
}

/** gx += (gy - ŷ(ŷ·gy))/‖x‖ (gy/eps where the clamp is active). */
export function l2nB(x: usize, groups: i32, N: i32, norm: usize, gy: usize, gx: usize, eps: f32): void {
  for (let g = 0; g < groups; g++) {
    const o = g * N, nm = load<f32>(at(norm, g)), nv = f32x4.splat(nm);
    if (nm <= eps) { for (let j = 0; j < N; j += 4) addTo(gx, o + j, f32x4.div(ld(gy, o + j), nv)); continue; }
    let d = f32x4.splat(0);
    for (let j = 0; j < N; j += 4) d = fma4(d, ld(x, o + j), ld(gy, o + j));
    const kv = f32x4.splat(hsum(d) / (nm * nm * nm));
    for (let j = 0; j < N; j += 4) addTo(gx, o + j, f32x4.sub(f32x4.div(ld(gy, o + j), nv), f32x4.mul(ld(x, o + j), kv)));
  }
}

/** v7 per-head bonus: y[h] = (Σ_j r_j k_j rk_j)·v[h], all (R, H·N), rk (H·N). */
export function bonusF(r: usize, k: usize, v: usize, rk: usize, R: i32, H: i32, N: i32, y: usize): void {
  for (let g = 0; g < R * H; g++) {
    const o = g * N, c0 = (g % H) * N;
    let s = f32x4.splat(0);
    for (let j = 0; j < N; j += 4) s = fma4(s, f32x4.mul(ld(r, o + j), ld(k, o + j)), ld(rk, c0 + j));
    const sv = f32x4.splat(hsum(s));
    for (let j = 0; j < N; j += 4) st(y, o + j, f32x4.mul(sv, ld(v, o + j)));
  }
}

export function bonusB(r: usize, k: usize, v: usize, rk: usize, R: i32, H: i32, N: i32, gy: usize, gr: usize, gk: usize, gv: usize, grk: usize): void {
  for (let g = 0; g < R * H; g++) {
    const o = g * N, c0 = (g % H) * N;
    let s = f32x4.splat(0), gs = f32x4.splat(0);
    for (let j = 0; j < N; j += 4) {
      s = fma4(s, f32x4.mul(ld(r, o + j), ld(k, o + j)), ld(rk, c0 + j));
      gs = fma4(gs, ld(gy, o + j), ld(v, o + j));
    }
    const sv = f32x4.splat(hsum(s)), gsv = f32x4.splat(hsum(gs));
    for (let j = 0; j < N; j += 4) {
      if (gv != 0) addTo(gv, o + j, f32x4.mul(ld(gy, o + j), sv));
      if (gr != 0) addTo(gr, o + j, f32x4.mul(f32x4.mul(gsv, ld(k, o + j)), ld(rk, c0 + j)));
      if (gk != 0) addTo(gk, o + j, f32x4.mul(f32x4.mul(gsv, ld(r, o + j)), ld(rk, c0 + j)));
      if (grk != 0) addTo(grk, c0 + j, f32x4.mul(f32x4.mul(gsv, ld(r, o + j)), ld(k, o + j)));
    }
  }
}

/**
 * AdamW (optim.ts AdamW.step) on n values in f32:
 *   m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  p -= rate·((m/bc1)/(sqrt(v/bc2) + eps) + wd·p)
 */
export function adamw(p: usize, g: usize, m: usize, v: usize, n: i32, rate: f32, wd: f32, b1: f32, b2: f32, eps: f32, bc1: f32, bc2: f32): void {
  const vb1 = f32x4.splat(b1), vb1c = f32x4.splat(1 - b1), vb2 = f32x4.splat(b2), vb2c = f32x4.splat(1 - b2);
  const ibc1 = f32x4.splat(1 / bc1), ibc2 = f32x4.splat(1 / bc2), veps = f32x4.splat(eps), vwd = f32x4.splat(wd), vrate = f32x4.splat(rate);
  const n4 = n & ~3;
  for (let i = 0; i < n4; i += 4) {
    const gi = ld(g, i), pi = ld(p, i);
    const mi = f32x4.add(f32x4.mul(vb1, ld(m, i)), f32x4.mul(vb1c, gi));
    const vi = f32x4.add(f32x4.mul(vb2, ld(v, i)), f32x4.mul(f32x4.mul(vb2c, gi), gi));
    st(m, i, mi); st(v, i, vi);
    const upd = f32x4.add(f32x4.div(f32x4.mul(mi, ibc1), f32x4.add(f32x4.sqrt(f32x4.mul(vi, ibc2)), veps)), f32x4.mul(vwd, pi));
    st(p, i, f32x4.sub(pi, f32x4.mul(vrate, upd)));
  }
  for (let i = n4; i < n; i++) {
    const gi = load<f32>(at(g, i)), pi = load<f32>(at(p, i));
    const mi = b1 * load<f32>(at(m, i)) + (1 - b1) * gi, vi = b2 * load<f32>(at(v, i)) + (1 - b2) * gi * gi;
    store<f32>(at(m, i), mi); store<f32>(at(v, i), vi);
    store<f32>(at(p, i), pi - rate * ((mi / bc1) / (Mathf.sqrt(vi / bc2) + eps) + wd * pi));
  }
}
