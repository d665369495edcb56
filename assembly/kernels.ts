/*
 * WebAssembly SIMD kernels of the "wasm" backend (AssemblyScript; built by assembly/build.mjs into
 * src/core/backend/wasm-binary.ts, twice: plain SIMD and relaxed SIMD).
 *
 * Memory: one shared WebAssembly memory owned by the JS side (src/core/backend/wasm.ts), which
 * allocates weights, scratch and the control block; this module allocates nothing and keeps no
 * state, so the same instance code runs on the main thread and in every worker.
 *
 * Every kernel is a "job" taking (part, nparts): it computes its own slice of the outputs (rows of
 * a matmul, heads of a WKV scan). Each output is computed by the same instructions whatever the
 * split, so 1 and N threads give bit-identical results.
 *
 * Summation order of a float dot product (all matmul paths, so T = 1 and T > 1, f32 and f16/bf16
 * agree exactly): lane l of one f32x4 accumulator sums columns c ≡ l (mod 4) in increasing c over
 * the first I - I%4 columns; then (l0 + l2) + (l1 + l3); then the I%4 tail columns in order.
 */

import { GLUE_FIRST, runGlueJob } from "./glue";
import { fma4, hsum } from "./simd";
import { arg, C_ARGS, dispatchJob, runWorker, splitHi, splitLo, stopAll } from "./threads";
import { dot3, wkv4Aa, wkv4Bb, wkv4Pp, wkv4Scan, wkv4State, wkv5Out, wkv5Step, wkv7Step } from "./wkv";

// Weight type ids; keep in sync with WASM_TYPE_IDS in src/core/backend/wasm.ts.
const T_F32: i32 = 0;
const T_F16: i32 = 1;
const T_BF16: i32 = 2;
const T_Q8_0: i32 = 3;
const T_Q5_0: i32 = 4;
const T_Q5_1: i32 = 5;
const T_Q4_0: i32 = 6;
const T_Q4_1: i32 = 7;
const T_I8: i32 = 8;
const T_F16S: i32 = 9; // f16 bits of w·2^10: no f16 subnormals (see wasm.ts adopt)

// Job ids; keep in sync with JOB in src/core/backend/wasm.ts.
const JOB_MATMUL_FLOAT: i32 = 1;
const JOB_MATMUL_INT: i32 = 2;
const JOB_QUANTIZE: i32 = 3;
const JOB_LAYER_NORM: i32 = 4;
const JOB_WKV4: i32 = 5;
const JOB_WKV5: i32 = 6;
const JOB_WKV7: i32 = 7;
const JOB_ACTIVATE: i32 = 8;
/**
 * A job of another memory's instance (weights spread over several memories, see wasm.ts): args
 * (memory index, job id); that job's own arguments are in that memory's control block. The
 * threads claim its chunks here, over the first memory's control block, and each runs its part
 * through runInMemory, so one dispatch protocol serves every memory.
 */
const JOB_IN_MEMORY: i32 = 9;

/**
 * Runs `part` of `nparts` of `job` in memory `mem`'s instance: an import the host provides
 * (AssemblyScript imports a bare declare from a module named after its file: "kernels"."runInMemory"; see wasm-runtime.ts kernelImports).
 */
declare function runInMemory(mem: i32, job: i32, part: i32, nparts: i32): void;

/** Elements per quantization block (ggml's QK, also the activation blocks of the integer path). */
const QK: i32 = 32;
/** 2^112: scales an f16 bit pattern shifted into f32 position to its value (exact, subnormals included). */
const F16_TO_F32_SCALE: f32 = 5.192296858534828e33;
/** 2^102 = 2^112 · 2^-10: the same for "f16s" bits, which hold w·2^10. */
const F16S_TO_F32_SCALE: f32 = 5.070602400912918e30;
/**
 * Below this max|x| a matvec over f16s weights multiplies x by F16S_TO_F32_SCALE once instead of
 * every weight: |x|·2^102 stays finite (f32 max < 2^128), so w·x is the same real product.
 */
const F16S_PRESCALE_MAX_X: f32 = 33554432.0; // 2^25
/** Keeps an f16s element's sign (bit 31) and its exponent and mantissa (bits 13-27) after shr_s 3. */
const F16S_MASK: i32 = 0x8fffe000;

export function heapBase(): usize {
  return __heap_base;
}

/** Fills the f16 -> f32 table (65536 f32) used for block scales. */
export function fillHalfTable(tab: usize): void {
  for (let h: u32 = 0; h < 65536; h++) store<f32>(tab + (<usize>h << 2), h2f(h));
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
  if (job == JOB_MATMUL_FLOAT) {
    matmulFloat(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), <usize>arg(a, 7) + <usize>part * <usize>arg(a, 8), arg(a, 9), part, nparts);
  } else if (job == JOB_MATMUL_INT) {
    if (arg(a, 13) != 0) matmulIntTiled(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10), arg(a, 13), arg(a, 12), part, nparts);
    else matmulInt(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10), arg(a, 11) != 0, arg(a, 12), arg(a, 14) != 0, part, nparts);
  } else if (job == JOB_QUANTIZE) {
    quantizeRows(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6) != 0, arg(a, 7), arg(a, 8) != 0, part, nparts);
  } else if (job == JOB_LAYER_NORM) {
    layerNorm(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), load<f32>(a, 28), part, nparts);
  } else if (job == JOB_WKV4) {
    wkv4(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), part, nparts);
  } else if (job == JOB_WKV5) {
    wkv5(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10), part, nparts);
  } else if (job == JOB_WKV7) {
    wkv7(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), arg(a, 7), arg(a, 8), arg(a, 9), arg(a, 10), arg(a, 11), part, nparts);
  } else if (job == JOB_ACTIVATE) {
    activate(arg(a, 0), arg(a, 1), arg(a, 2), load<f64>(a, 16), arg(a, 3), arg(a, 6), part, nparts);
  } else if (job == JOB_IN_MEMORY) {
    runInMemory(arg(a, 0), arg(a, 1), part, nparts);
  } else if (job >= GLUE_FIRST) {
    runGlueJob(a, job, part, nparts); // the element-wise kernels (glue.ts)
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar helpers

/**
 * IEEE half bits -> f32, exact (normals, subnormals, ±0, ±Inf, NaN). Branch-free: q4_0/q5_0
 * block scales have random signs, and a sign branch mispredicted half the time halved their speed.
 */
/* @inline */ function h2f(h: u32): f32 {
  let x = (h & 0x7fff) << 13;
  x |= (0 - <u32>((h & 0x7c00) == 0x7c00)) & 0x7f800000; // Inf/NaN keep an all-ones exponent
  return reinterpret<f32>(reinterpret<u32>(reinterpret<f32>(x) * F16_TO_F32_SCALE) | ((h & 0x8000) << 16));
}


// ---------------------------------------------------------------------------------------------
// Float weights (f32, f16, bf16): y (T, O) = x (T, I) Wᵀ, x f32.

/**
 * 4 f16 (low or high half of `h`, 8 halves) as f32x4, exact except Inf/NaN (rejected at adopt).
 * `scale` is F16_TO_F32_SCALE, or F16S_TO_F32_SCALE for f16s bits. f16 subnormals become f32
 * subnormals before the scaling multiply, which x86 runs as a slow microcode assist: 0.1% of
 * subnormal weights made a matvec 1.9x slower, hence the subnormal-free f16s encoding.
 */
/* @inline */ function f16lo(h: v128, scale: f32): v128 {
  return f16bits(i32x4.extend_low_i16x8_s(h), scale);
}
/* @inline */ function f16hi(h: v128, scale: f32): v128 {
  return f16bits(i32x4.extend_high_i16x8_s(h), scale);
}
/**
 * Sign-extended half bits -> f32: shifted 13 up, exponent and mantissa land in f32 position with
 * the sign copied into bits 28-31; the mask keeps bit 31 as the sign and clears 28-30.
 * (Fewer instructions than interleaving with zero by a shuffle: ~3% faster f16 matvec.)
 */
/* @inline */ function f16bits(v: v128, scale: f32): v128 {
  const m = v128.and(i32x4.shl(v, 13), i32x4.splat(0x8fffffff));
  return f32x4.mul(m, f32x4.splat(scale));
}
/**
 * f16s groups of 8 are stored [c0, c4, c1, c5, c2, c6, c3, c7] (weight-rows.ts toF16s), so i32
 * lane l holds column l in its low half and l + 4 in its high half: each half reaches f32 position
 * by one i16 multiply-add (pmaddwd) with 2^13 against it and 0 against the other half (lo13, hi13
 * from the constant table) — the signed half times 2^13 is its bits 13 up with the sign copied into
 * bits 28-31 — and one mask (bit 31 kept, 28-30 cleared), no widening. The result is the f32 bits
 * of w·2^-102, a normal float for every f16s value (the smallest, 2^-14·2^-10 = w for the smallest
 * f16 subnormal, lands on 2^-126): exact, multiplied by 2^102 or met by a prescaled x. The T = 1
 * kernel is bound by the core's few vector-shift pipes; an arithmetic shift per half (and a
 * multiply by 2^16, two uops, to move the low half up first) ran f16 T = 1 at 18-21 GFLOP/s where
 * the multiply-adds run 21-24 (kernel bench, one thread, relaxed build).
 */
/* @inline */ function f16sLo(h: v128, mask: v128, lo13: v128): v128 {
  return v128.and(i32x4.dot_i16x8_s(h, lo13), mask);
}
/* @inline */ function f16sHi(h: v128, mask: v128, hi13: v128): v128 {
  return v128.and(i32x4.dot_i16x8_s(h, hi13), mask);
}
/* @inline */ function halfScale(kind: i32): f32 {
  return kind == T_F16S ? F16S_TO_F32_SCALE : F16_TO_F32_SCALE;
}
/**
 * 4 bf16 (low or high half of `h`) as f32x4: each half interleaved below a zero half (one
 * punpcklwd / punpckhwd), where a widening and a shift took two or three instructions.
 */
/* @inline */ function bf16lo(h: v128): v128 {
  return i8x16.shuffle(i32x4.splat(0), h, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
}
/* @inline */ function bf16hi(h: v128): v128 {
  return i8x16.shuffle(i32x4.splat(0), h, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
}

/** One weight element of row `r` at column `c` as f32 (tails). */
/* @inline */ function wElem(kind: i32, r: usize, c: i32): f32 {
  if (kind == T_F32) return load<f32>(r + (<usize>c << 2));
  const h = <u32>load<u16>(r + (<usize>c << 1));
  if (kind == T_F16) return h2f(h);
  if (kind == T_F16S) return h2f(h) * (<f32>1 / 1024);
  return reinterpret<f32>(h << 16);
}

/**
 * T = 1: four weight rows at a time, converting f16/bf16 on the fly (weights are read once, so no
 * panel is worth building). Each row's accumulator follows the canonical order. The four rows are
 * a quarter of the range apart, so the reads are four long sequential streams: four adjacent rows
 * (four streams restarting every row) read 16-20 GB/s on one thread here, quarters 35 GB/s
 * (measured with a C probe of both orders). f16s: x comes multiplied by 2^102 (`xs`, scaleX, once a
 * call), so the weights need no multiply (see f16sLo); the products are the same reals, so
 * the results are bit for bit those of dotRow, which multiplies the weights (callers check that
 * x·2^102 is finite). The f16s constants come from the table `tab` in memory: V8 rebuilds a
 * v128.const at each use inside the loop (three instructions), which made this kernel slower than
 * the plain f16 one it replaces.
 */
/* @inline */ function matvecRows(kind: i32, w: usize, I: i32, x: usize, xs: usize, y: usize, lo: i32, hi: i32, tab: usize): void {
  const esz: usize = kind == T_F32 ? 4 : 2;
  const rs = <usize>I * esz;
  const I4 = I & ~3;
  const I8 = I & ~7;
  const Q = (hi - lo) >> 2;
  const qs = <usize>Q * rs;
  const mask = kc(tab, K_F16S_MASK), lo13 = kc(tab, K_F16S_LO13), hi13 = kc(tab, K_F16S_HI13);
  for (let o = lo; o < lo + Q; o++) {
    const r0 = w + <usize>o * rs, r1 = r0 + qs, r2 = r1 + qs, r3 = r2 + qs;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let c = 0;
    if (kind == T_F32) {
      for (; c < I4; c += 4) {
        const xo = <usize>c << 2;
        const xv = v128.load(x + xo);
        a0 = fma4(a0, v128.load(r0 + xo), xv);
        a1 = fma4(a1, v128.load(r1 + xo), xv);
        a2 = fma4(a2, v128.load(r2 + xo), xv);
        a3 = fma4(a3, v128.load(r3 + xo), xv);
      }
    } else if (kind == T_F16S) {
      for (; c < I8; c += 8) {
        const xo = <usize>c << 2, wo = <usize>c << 1;
        const x0 = v128.load(xs + xo), x1 = v128.load(xs + xo, 16);
        const h0 = v128.load(r0 + wo), h1 = v128.load(r1 + wo), h2 = v128.load(r2 + wo), h3 = v128.load(r3 + wo);
        a0 = fma4(fma4(a0, f16sLo(h0, mask, lo13), x0), f16sHi(h0, mask, hi13), x1);
        a1 = fma4(fma4(a1, f16sLo(h1, mask, lo13), x0), f16sHi(h1, mask, hi13), x1);
        a2 = fma4(fma4(a2, f16sLo(h2, mask, lo13), x0), f16sHi(h2, mask, hi13), x1);
        a3 = fma4(fma4(a3, f16sLo(h3, mask, lo13), x0), f16sHi(h3, mask, hi13), x1);
      }
    } else {
      for (; c < I8; c += 8) {
        const xo = <usize>c << 2, wo = <usize>c << 1;
        const x0 = v128.load(x + xo), x1 = v128.load(x + xo, 16);
        const h0 = v128.load(r0 + wo), h1 = v128.load(r1 + wo), h2 = v128.load(r2 + wo), h3 = v128.load(r3 + wo);
        if (kind == T_F16) {
          const sc = F16_TO_F32_SCALE;
          a0 = fma4(fma4(a0, f16lo(h0, sc), x0), f16hi(h0, sc), x1);
          a1 = fma4(fma4(a1, f16lo(h1, sc), x0), f16hi(h1, sc), x1);
          a2 = fma4(fma4(a2, f16lo(h2, sc), x0), f16hi(h2, sc), x1);
          a3 = fma4(fma4(a3, f16lo(h3, sc), x0), f16hi(h3, sc), x1);
        } else {
          a0 = fma4(fma4(a0, bf16lo(h0), x0), bf16hi(h0), x1);
          a1 = fma4(fma4(a1, bf16lo(h1), x0), bf16hi(h1), x1);
          a2 = fma4(fma4(a2, bf16lo(h2), x0), bf16hi(h2), x1);
          a3 = fma4(fma4(a3, bf16lo(h3), x0), bf16hi(h3), x1);
        }
      }
    }
    if (kind != T_F32) {
      for (; c < I4; c += 4) { // a last group of 4 when I % 8 >= 4 (stored in plain order)
        const xv = v128.load(x + (<usize>c << 2));
        const wo = <usize>c << 1;
        a0 = fma4(a0, halfs4(kind, r0 + wo), xv);
        a1 = fma4(a1, halfs4(kind, r1 + wo), xv);
        a2 = fma4(a2, halfs4(kind, r2 + wo), xv);
        a3 = fma4(a3, halfs4(kind, r3 + wo), xv);
      }
    }
    let t0: f32 = 0, t1: f32 = 0, t2: f32 = 0, t3: f32 = 0;
    for (let k = I4; k < I; k++) {
      const xk = load<f32>(x + (<usize>k << 2));
      t0 += wElem(kind, r0, k) * xk; t1 += wElem(kind, r1, k) * xk;
      t2 += wElem(kind, r2, k) * xk; t3 += wElem(kind, r3, k) * xk;
    }
    const yo = y + (<usize>o << 2), yq = <usize>Q << 2;
    store<f32>(yo, hsum(a0) + t0);
    store<f32>(yo + yq, hsum(a1) + t1);
    store<f32>(yo + 2 * yq, hsum(a2) + t2);
    store<f32>(yo + 3 * yq, hsum(a3) + t3);
  }
  for (let o = lo + 4 * Q; o < hi; o++) store<f32>(y + (<usize>o << 2), dotRow(kind, w + <usize>o * rs, I, x, tab));
}

/** One weight row (f32, f16, bf16 or f16s) against x, in the canonical order. */
function dotRow(kind: i32, r0: usize, I: i32, x: usize, tab: usize): f32 {
  const I4 = I & ~3;
  let a0 = f32x4.splat(0);
  let c = 0;
  if (kind == T_F16S) {
    const mask = kc(tab, K_F16S_MASK), s102 = kc(tab, K_F16S_SCALE), lo13 = kc(tab, K_F16S_LO13), hi13 = kc(tab, K_F16S_HI13);
    for (; c < (I & ~7); c += 8) {
      const h = v128.load(r0 + (<usize>c << 1));
      const xo = x + (<usize>c << 2);
      a0 = fma4(fma4(a0, f32x4.mul(f16sLo(h, mask, lo13), s102), v128.load(xo)), f32x4.mul(f16sHi(h, mask, hi13), s102), v128.load(xo, 16));
    }
  }
  for (; c < I4; c += 4) {
    const xv = v128.load(x + (<usize>c << 2));
    a0 = fma4(a0, kind == T_F32 ? v128.load(r0 + (<usize>c << 2)) : halfs4(kind, r0 + (<usize>c << 1)), xv);
  }
  let t0: f32 = 0;
  for (let k = I4; k < I; k++) t0 += wElem(kind, r0, k) * load<f32>(x + (<usize>k << 2));
  return hsum(a0) + t0;
}

/** 4 f16/bf16 at p as f32x4. */
/* @inline */ function halfs4(kind: i32, p: usize): v128 {
  const h = v128.load64_zero(p);
  return kind == T_BF16 ? bf16lo(h) : f16lo(h, halfScale(kind));
}

/** Rows [o, o+n) of a f16/bf16 matrix converted to f32 into `panel` (n rows of I floats). */
function dequantPanel(kind: i32, w: usize, I: i32, o: i32, n: i32, panel: usize, tab: usize): void {
  const rs = <usize>I << 1;
  const mask = kc(tab, K_F16S_MASK), s102 = kc(tab, K_F16S_SCALE), lo13 = kc(tab, K_F16S_LO13), hi13 = kc(tab, K_F16S_HI13);
  for (let k = 0; k < n; k++) {
    const r = w + <usize>(o + k) * rs;
    const dst = panel + <usize>k * (<usize>I << 2);
    let c = 0;
    for (; c + 8 <= I; c += 8) {
      const h = v128.load(r + (<usize>c << 1));
      const d = dst + (<usize>c << 2);
      if (kind == T_F16S) {
        v128.store(d, f32x4.mul(f16sLo(h, mask, lo13), s102)); v128.store(d, f32x4.mul(f16sHi(h, mask, hi13), s102), 16);
      } else if (kind == T_F16) { v128.store(d, f16lo(h, F16_TO_F32_SCALE)); v128.store(d, f16hi(h, F16_TO_F32_SCALE), 16); }
      else { v128.store(d, bf16lo(h)); v128.store(d, bf16hi(h), 16); }
    }
    for (; c < I; c++) store<f32>(dst + (<usize>c << 2), wElem(kind, r, c));
  }
}

/** y[t][o..o+2) for 4 rows of x against 2 f32 weight rows: 8 accumulators in registers. */
/* @inline */ function tile4x2(x: usize, I: i32, r0: usize, r1: usize, y: usize, O: i32, t: i32, o: i32): void {
  const xs = <usize>I << 2;
  const x0 = x + <usize>t * xs, x1 = x0 + xs, x2 = x1 + xs, x3 = x2 + xs;
  let a00 = f32x4.splat(0), a01 = f32x4.splat(0), a10 = f32x4.splat(0), a11 = f32x4.splat(0);
  let a20 = f32x4.splat(0), a21 = f32x4.splat(0), a30 = f32x4.splat(0), a31 = f32x4.splat(0);
  const I4 = I & ~3;
  for (let c = 0; c < I4; c += 4) {
    const co = <usize>c << 2;
    const w0 = v128.load(r0 + co), w1 = v128.load(r1 + co);
    let xv = v128.load(x0 + co);
    a00 = fma4(a00, w0, xv); a01 = fma4(a01, w1, xv);
    xv = v128.load(x1 + co);
    a10 = fma4(a10, w0, xv); a11 = fma4(a11, w1, xv);
    xv = v128.load(x2 + co);
    a20 = fma4(a20, w0, xv); a21 = fma4(a21, w1, xv);
    xv = v128.load(x3 + co);
    a30 = fma4(a30, w0, xv); a31 = fma4(a31, w1, xv);
  }
  let t00: f32 = 0, t01: f32 = 0, t10: f32 = 0, t11: f32 = 0, t20: f32 = 0, t21: f32 = 0, t30: f32 = 0, t31: f32 = 0;
  for (let k = I4; k < I; k++) {
    const ko = <usize>k << 2;
    const w0 = load<f32>(r0 + ko), w1 = load<f32>(r1 + ko);
    const v0 = load<f32>(x0 + ko), v1 = load<f32>(x1 + ko), v2 = load<f32>(x2 + ko), v3 = load<f32>(x3 + ko);
    t00 += w0 * v0; t01 += w1 * v0; t10 += w0 * v1; t11 += w1 * v1;
    t20 += w0 * v2; t21 += w1 * v2; t30 += w0 * v3; t31 += w1 * v3;
  }
  const ys = <usize>O << 2;
  const y0 = y + <usize>t * ys + (<usize>o << 2);
  store<f32>(y0, hsum(a00) + t00); store<f32>(y0, hsum(a01) + t01, 4);
  store<f32>(y0 + ys, hsum(a10) + t10); store<f32>(y0 + ys, hsum(a11) + t11, 4);
  store<f32>(y0 + 2 * ys, hsum(a20) + t20); store<f32>(y0 + 2 * ys, hsum(a21) + t21, 4);
  store<f32>(y0 + 3 * ys, hsum(a30) + t30); store<f32>(y0 + 3 * ys, hsum(a31) + t31, 4);
}

/** y[t][o] for one row of x against one f32 weight row (remainders of the tiling). */
/* @inline */ function dot1(xr: usize, I: i32, r0: usize): f32 {
  const I4 = I & ~3;
  let a = f32x4.splat(0);
  for (let c = 0; c < I4; c += 4) {
    const co = <usize>c << 2;
    a = fma4(a, v128.load(r0 + co), v128.load(xr + co));
  }
  let tl: f32 = 0;
  for (let k = I4; k < I; k++) tl += load<f32>(r0 + (<usize>k << 2)) * load<f32>(xr + (<usize>k << 2));
  return hsum(a) + tl;
}

/** T > 1 over f32 rows r0 (and r1 when two): 4x2 register tiles, then the remaining rows of x. */
function matmulPanel(x: usize, T: i32, I: i32, r0: usize, r1: usize, two: bool, y: usize, O: i32, o: i32): void {
  const xs = <usize>I << 2, ys = <usize>O << 2;
  let t = 0;
  if (two) {
    for (; t + 4 <= T; t += 4) tile4x2(x, I, r0, r1, y, O, t, o);
  }
  for (; t < T; t++) {
    const xr = x + <usize>t * xs;
    const yo = y + <usize>t * ys + (<usize>o << 2);
    store<f32>(yo, dot1(xr, I, r0));
    if (two) store<f32>(yo, dot1(xr, I, r1), 4);
  }
}

/** max |x_i| over n floats (NaN if any is NaN). */
function absMax(x: usize, n: i32): f32 {
  let m = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= n; i += 4) m = f32x4.max(m, f32x4.abs(v128.load(x + (<usize>i << 2))));
  let s = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
  for (; i < n; i++) s = max(s, abs(load<f32>(x + (<usize>i << 2))));
  return s;
}

/**
 * x·2^102 (F16S_TO_F32_SCALE) into `xs` (I f32; whole groups of 8, the columns the f16s matvec
 * reads from it), once per call rather than once per four weight rows.
 */
function scaleX(x: usize, I: i32, xs: usize, tab: usize): usize {
  const s102 = kc(tab, K_F16S_SCALE);
  for (let c = 0; c < (I & ~7); c += 4) v128.store(xs + (<usize>c << 2), f32x4.mul(v128.load(x + (<usize>c << 2)), s102));
  return xs;
}

function matmulFloat(w: usize, kind: i32, O: i32, I: i32, T: i32, x: usize, y: usize, panel: usize, tab: usize, part: i32, nparts: i32): void {
  const lo = splitLo(O, part, nparts, 16), hi = splitHi(O, part, nparts, 16);
  if (lo >= hi) return;
  if (T == 1) {
    if (kind == T_F32) matvecRows(T_F32, w, I, x, 0, y, lo, hi, tab);
    else if (kind == T_F16) matvecRows(T_F16, w, I, x, 0, y, lo, hi, tab);
    else if (kind == T_F16S) {
      // (panel: the part's scratch for x·2^102, which the host always gives at T = 1 over f16s)
      if (panel != 0 && absMax(x, I) < F16S_PRESCALE_MAX_X) matvecRows(T_F16S, w, I, x, scaleX(x, I, panel, tab), y, lo, hi, tab);
      else { // x·2^102 could overflow (or x has a NaN): row by row, multiplying the weights
        const rs = <usize>I << 1;
        for (let o = lo; o < hi; o++) store<f32>(y + (<usize>o << 2), dotRow(T_F16S, w + <usize>o * rs, I, x, tab));
      }
    } else matvecRows(T_BF16, w, I, x, 0, y, lo, hi, tab);
    return;
  }
  const rowBytes = <usize>I << 2;
  const tile = tileRows(I << 2, FLOAT_TILE_BYTES); // f16/bf16 rows are converted again for each tile: I per 2·I·tile products
  for (let t0 = 0; t0 < T; t0 += tile) {
    const n = min(T - t0, tile);
    const xt = x + <usize>t0 * rowBytes, yt = y + <usize>t0 * (<usize>O << 2);
    for (let o = lo; o < hi; o += 2) {
      const two = o + 1 < hi;
      let r0: usize, r1: usize;
      if (kind == T_F32) {
        r0 = w + <usize>o * rowBytes;
        r1 = r0 + rowBytes;
      } else {
        dequantPanel(kind, w, I, o, two ? 2 : 1, panel, tab);
        r0 = panel;
        r1 = panel + rowBytes;
      }
      matmulPanel(xt, n, I, r0, r1, two, yt, O, o);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Integer path (ggml block types and i8): activations quantized per block of 32 to int8 with an
// f32 scale (like ggml's q8 activations), integer dot per block, f32 accumulation of the scaled
// block sums. The error this adds is bounded per output by Σ_b (dx_b / 2) Σ_{i in b} |w_i|.

/**
 * Rows [lo, hi) of x (T, I) f32 -> xq (T, Ipad) int8 values stored as i16, dx (T, nb) f32 scales, sx (T, nb) f32 block
 * sums of x (for the _1 types' minimum term). Ipad = nb * 32; the padding is zero.
 * With `i8`, the layout of the i8·i7 kernels instead: at xq (T, nb) records of I7_RECORD bytes, one
 * per block: its 32 values as i8, the negated sums of its i16 lanes of the relaxed dot (i7dot; lane j:
 * elements 2j, 2j+1, 16+2j and 17+2j; for the offset of the _0 types' unsigned weights), its scale
 * and its sum (dx and sx are not written): one running pointer in the decode loop instead of four,
 * whose general registers spilled (in cache q4_0 T = 1 +10-15%; from memory no change measured).
 * With `g4` (not 0, i16 layout only): dx and sx also per group of 4 rows, for intTile: at g4
 * (G, nb, 4) f32 with G = ceil(T/4), element [t/4][b][t%4] the scale of row t's block b; after
 * them the block sums, the same way.
 * With `split` (i16 layout, T = 1 q8_0 and i8 products): each 16 elements stored as their 8 even
 * ones, then their 8 odd ones (splitDot).
 */
function quantizeRows(x: usize, T: i32, I: i32, xq: usize, dx: usize, sx: usize, i8: bool, g4: usize, split: bool, part: i32, nparts: i32): void {
  const nb = (I + QK - 1) / QK;
  const lo = splitLo(T, part, nparts, 1), hi = splitHi(T, part, nparts, 1);
  const sx4 = g4 + <usize>((T + 3) >> 2) * (<usize>nb << 4);
  for (let t = lo; t < hi; t++) {
    const xr = x + <usize>t * (<usize>I << 2);
    const qr = xq + <usize>t * <usize>(nb * QK * 2);
    if (i8) {
      quantizeRowI8(xr, I, nb, xq + <usize>t * <usize>(nb * I7_RECORD));
      continue;
    }
    for (let b = 0; b < nb; b++) {
      const c0 = b * QK;
      const n = min(QK, I - c0);
      const xb = xr + (<usize>c0 << 2);
      let amax: f32 = 0, sum: f32 = 0;
      for (let i = 0; i < n; i++) {
        const v = load<f32>(xb + (<usize>i << 2));
        amax = max(amax, abs(v));
        sum += v;
      }
      const d: f32 = amax / 127;
      const id: f32 = amax > 0 ? <f32>127 / amax : 0;
      const qb = qr + (<usize>c0 << 1);
      if (n == QK) {
        const s = f32x4.splat(id);
        for (let i = 0; i < QK; i += 16) {
          const p = xb + (<usize>i << 2);
          const q0 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), s)));
          const q1 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), s)));
          const q2 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), s)));
          const q3 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), s)));
          const a = i16x8.narrow_i32x4_s(q0, q1), b = i16x8.narrow_i32x4_s(q2, q3); // elements i..i+7, i+8..i+15
          if (split) {
            v128.store(qb + (<usize>i << 1), i8x16.shuffle(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29));
            v128.store(qb + (<usize>i << 1), i8x16.shuffle(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31), 16);
          } else {
            v128.store(qb + (<usize>i << 1), a);
            v128.store(qb + (<usize>i << 1), b, 16);
          }
        }
      } else {
        for (let i = 0; i < QK; i++) {
          const v: f32 = i < n ? nearest(load<f32>(xb + (<usize>i << 2)) * id) : 0;
          const at = split ? (i & 16) | ((i & 1) << 3) | ((i & 15) >> 1) : i; // splitDot's order
          store<i16>(qb + (<usize>at << 1), <i16><i32>v);
        }
      }
      store<f32>(dx + (<usize>(t * nb + b) << 2), d);
      store<f32>(sx + (<usize>(t * nb + b) << 2), sum);
      if (g4 != 0) {
        const g = (<usize>((t >> 2) * nb + b) << 4) + (<usize>(t & 3) << 2);
        store<f32>(g4 + g, d);
        store<f32>(sx4 + g, sum);
      }
    }
  }
}

/** Bytes of one block's record in the i8·i7 layout: 32 i8 activations, 16 bytes of lane sums, the f32 scale and sum, 8 bytes of padding. */
const I7_RECORD: usize = 64;

/** quantizeRows' i8 records for one row (at `rec`): the same values as the i16 layout, narrowed, with the lane sums, scales and sums. */
function quantizeRowI8(xr: usize, I: i32, nb: i32, rec: usize): void {
  for (let b = 0; b < nb; b++) {
    const c0 = b * QK;
    const n = min(QK, I - c0);
    const xb = xr + (<usize>c0 << 2);
    let amax: f32 = 0, sum: f32 = 0;
    for (let i = 0; i < n; i++) {
      const v = load<f32>(xb + (<usize>i << 2));
      amax = max(amax, abs(v));
      sum += v;
    }
    const d: f32 = amax / 127;
    const id: f32 = amax > 0 ? <f32>127 / amax : 0;
    const qb = rec + <usize>b * I7_RECORD;
    if (n == QK) {
      const s = f32x4.splat(id);
      for (let i = 0; i < QK; i += 16) {
        const p = xb + (<usize>i << 2);
        const q0 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), s)));
        const q1 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), s)));
        const q2 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), s)));
        const q3 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), s)));
        v128.store(qb + <usize>i, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(q0, q1), i16x8.narrow_i32x4_s(q2, q3)));
      }
    } else {
      for (let i = 0; i < QK; i++) {
        const v: f32 = i < n ? nearest(load<f32>(xb + (<usize>i << 2)) * id) : 0;
        store<i8>(qb + <usize>i, <i8><i32>v);
      }
    }
    const pairs = i16x8.add(i16x8.extadd_pairwise_i8x16_s(v128.load(qb)), i16x8.extadd_pairwise_i8x16_s(v128.load(qb, 16)));
    v128.store(qb, i16x8.neg(pairs), 32);
    store<f32>(qb, d, 48);
    store<f32>(qb, sum, 52);
  }
}

/**
 * Σ over 32 elements of the weights (four i16x8: elements 0-7, 8-15, 16-23, 24-31) times the i16
 * activations x0..x3, as i32x4 partial sums: pairwise i16 dot products (one pmaddwd each on x86),
 * exact in i32. (Fewer instructions than i8 extmul + pairwise adds: activations are widened once
 * per call, weights once per block.)
 */
/* @inline */ function pdot32(e0: v128, e1: v128, e2: v128, e3: v128, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  return i32x4.add(i32x4.add(i32x4.dot_i16x8_s(e0, x0), i32x4.dot_i16x8_s(e1, x1)), i32x4.add(i32x4.dot_i16x8_s(e2, x2), i32x4.dot_i16x8_s(e3, x3)));
}

/** Bytes per 32-weight block of each type (i8: 32 bytes of the row). */
/* @inline */ function blockBytes(kind: i32): usize {
  if (kind == T_Q8_0) return 34;
  if (kind == T_Q5_0) return 22;
  if (kind == T_Q5_1) return 24;
  if (kind == T_Q4_0) return 18;
  if (kind == T_Q4_1) return 20;
  return 32;
}

/** i16 lane l of a qh word splatted to 32-bit lanes shifts by 4 - (l >> 1): lanes 2k and 2k + 1 take the word's low and high halves. */
const Q5S_MUL = i16x8(16, 16, 8, 8, 4, 4, 2, 2);
/**
 * A q5 block's fifth bits of elements 0-15 (or 16-31 with `hiHalf`) as bytes 0x10 or 0, from its qh
 * word at q in the wasm backend's order (weight-rows.ts q5sBit: the bit of element j of a half sits
 * where one i16 multiply by 2^(4 - (j >> 2 & 3)) moves it to bit 4 of byte j). Per block: one
 * broadcast load, a shift for the high half, a multiply and a mask, all off the shuffle pipes that
 * the checkpoint's order (a table or a byte swizzle per 8 elements) kept busy. `mul`: Q5S_MUL;
 * `fifth`: 0x10 in every byte (the i8·i7 kernels pass both from the constant table).
 */
/* @inline */ function fifthBits(q: usize, hiHalf: bool, mul: v128, fifth: v128): v128 {
  let v = v128.load32_splat(q);
  if (hiHalf) v = i16x8.shr_u(v, 4);
  return v128.and(i16x8.mul(v, mul), fifth);
}

/** f16 bits -> f32 through the 65536-entry table at `tab` (block scales: one load, no branches). */
/* @inline */ function ht(tab: usize, h: u32): f32 {
  return load<f32>(tab + (<usize>h << 2));
}

// One 32-weight block at p decoded to two i8x16 (elements 0-15, 16-31), its scale d and, for the
// _1 types, its minimum m: w = d·q + m.
/* @inline */ function blockLo(kind: i32, p: usize): v128 {
  if (kind == T_Q8_0) return v128.load(p, 2);
  if (kind == T_I8) return v128.load(p);
  if (kind == T_Q4_0) return i8x16.sub(v128.and(v128.load(p, 2), i8x16.splat(0x0f)), i8x16.splat(8));
  if (kind == T_Q4_1) return v128.and(v128.load(p, 4), i8x16.splat(0x0f));
  if (kind == T_Q5_0) return i8x16.sub(v128.or(v128.and(v128.load(p, 6), i8x16.splat(0x0f)), fifthBits(p + 2, false, Q5S_MUL, i8x16.splat(0x10))), i8x16.splat(16));
  return v128.or(v128.and(v128.load(p, 8), i8x16.splat(0x0f)), fifthBits(p + 4, false, Q5S_MUL, i8x16.splat(0x10))); // T_Q5_1
}
/* @inline */ function blockHi(kind: i32, p: usize): v128 {
  if (kind == T_Q8_0) return v128.load(p, 18);
  if (kind == T_I8) return v128.load(p, 16);
  if (kind == T_Q4_0) return i8x16.sub(i8x16.shr_u(v128.load(p, 2), 4), i8x16.splat(8));
  if (kind == T_Q4_1) return i8x16.shr_u(v128.load(p, 4), 4);
  if (kind == T_Q5_0) return i8x16.sub(v128.or(i8x16.shr_u(v128.load(p, 6), 4), fifthBits(p + 2, true, Q5S_MUL, i8x16.splat(0x10))), i8x16.splat(16));
  return v128.or(i8x16.shr_u(v128.load(p, 8), 4), fifthBits(p + 4, true, Q5S_MUL, i8x16.splat(0x10))); // T_Q5_1
}
/* @inline */ function blockD(kind: i32, p: usize, rowScale: f32, tab: usize): f32 {
  return kind == T_I8 ? rowScale : ht(tab, load<u16>(p));
}
/* @inline */ function blockM(kind: i32, p: usize, tab: usize): f32 {
  return kind == T_Q4_1 || kind == T_Q5_1 ? ht(tab, load<u16>(p, 2)) : 0;
}

/** Σ over the 32 weights of the block at p times the i16 activations x0..x3, as i32x4 partial sums (exact). */
/* @inline */ function blockDot(kind: i32, p: usize, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  const w0 = blockLo(kind, p), w1 = blockHi(kind, p);
  return pdot32(i16x8.extend_low_i8x16_s(w0), i16x8.extend_high_i8x16_s(w0), i16x8.extend_low_i8x16_s(w1), i16x8.extend_high_i8x16_s(w1), x0, x1, x2, x3);
}

/**
 * Output rows o and o1 = o + gap (with `two` false only o) against activation row t. The integer
 * dot of a row and block is an i32x4 of partial sums p; its two halves P and Q (halfSums)
 * are exact integers, and each row keeps two f32 sums over the blocks: of P·(activation scale ·
 * weight scale), plus for the _1 types (activation block sum · weight minimum), and of Q·(the same
 * scale); the output is the first plus the second. Two rows share one vector, lanes (o's P, o's Q,
 * o1's P, o1's Q), so one pair of lane shuffles (halfSums), one convert and one multiply-add serve
 * both rows and both halves per block. intTile computes every (output row, activation row) in this
 * order, so a row of a T > 1 product has exactly the bits of the same row computed alone (T = 1):
 * a prompt's logits equal stepping token by token. (Whole block sums instead, one more shuffle and
 * add per block, cost 2-7% of decode speed; four rows per call, more, in spilled registers.)
 * With `i7` (q4/q5 on the relaxed build, T = 1) the activations are quantizeRows' i8 records and the
 * integer dots come from i7dot, whose halves are the same P and Q, so the bits are the same.
 */
/* @inline */ function intPair(kind: i32, i7: bool, split: bool, w: usize, rs: usize, scales: usize, nb: i32, xq: usize, dx: usize, sx: usize, t: i32, y: usize, O: i32, o: i32, gap: i32, two: bool, tab: usize, ktab: usize, readAhead: bool): u32 {
  const bb = blockBytes(kind);
  const qs = <usize>nb * (i7 ? I7_RECORD : 2 * QK); // bytes of one activation row (i8 records or i16)
  const ds = <usize>nb << 2;
  const o1 = two ? o + gap : o;
  const rowScales = kind == T_I8 ? pairLanes(load<f32>(scales + (<usize>o << 2)), load<f32>(scales + (<usize>o1 << 2))) : f32x4.splat(0);
  const lowNibble = i7 ? kc(ktab, K_LOW_NIBBLE) : i8x16.splat(0);
  const hiByte = split ? kc(ktab, K_HI_BYTE) : i8x16.splat(0);
  let acc = f32x4.splat(0); // (o's P sum, o's Q sum, o1's P sum, o1's Q sum)
  // Running pointers: this block of rows o and o1, of the activations, their scales and sums (the i8 records hold all three).
  let p0 = w + <usize>o * rs, p1 = w + <usize>o1 * rs;
  let qb = xq + <usize>t * qs, db = dx + <usize>t * ds, sb = sx + <usize>t * ds;
  const end = p0 + <usize>nb * bb;
  // Reading ahead (READ_AHEAD): a word of each row's stream a cache line further every block; without
  // `readAhead` (near the memory's end, see intPairs) each row's own first word, again and again.
  const ahead0: usize = readAhead ? READ_AHEAD : 0, aheadStep: usize = readAhead ? 64 : 0;
  let a0 = p0 + ahead0, a1 = p1 + ahead0, ahead: u32 = 0;
  // (With i7, db and sb stay put: the records at qb hold the scale and sum.)
  const dstep: usize = i7 ? 0 : 4;
  for (; p0 < end; p0 += bb, p1 += bb, qb += i7 ? I7_RECORD : 2 * QK, db += dstep, sb += dstep, a0 += aheadStep, a1 += aheadStep) {
    ahead ^= load<u32>(a0) ^ load<u32>(a1);
    let h: v128; // (o P, o Q, o1 P, o1 Q)
    if (i7) {
      const xl = v128.load(qb), xh = v128.load(qb, 16);
      const off = i7Shift(kind) != 0 ? i16x8.shl(v128.load(qb, 32), i7Shift(kind)) : i16x8.splat(0);
      h = halfSumsEven(i7dot(kind, p0, xl, xh, off, lowNibble, ktab), i7dot(kind, p1, xl, xh, off, lowNibble, ktab));
    } else if (split) {
      const xe0 = v128.load(qb), xo0 = v128.load(qb, 16), xe1 = v128.load(qb, 32), xo1 = v128.load(qb, 48);
      h = i32x4.shr_s(halfSumsEven(splitDot(kind, p0, xe0, xo0, xe1, xo1, hiByte), splitDot(kind, p1, xe0, xo0, xe1, xo1, hiByte)), 8);
    } else {
      const x0 = v128.load(qb), x1 = v128.load(qb, 16), x2 = v128.load(qb, 32), x3 = v128.load(qb, 48);
      h = halfSums(blockDot(kind, p0, x0, x1, x2, x3), blockDot(kind, p1, x0, x1, x2, x3));
    }
    const dw = kind == T_I8 ? rowScales : pairLanes(ht(tab, load<u16>(p0)), ht(tab, load<u16>(p1)));
    acc = fma4(acc, f32x4.convert_i32x4_s(h), f32x4.mul(f32x4.splat(i7 ? load<f32>(qb, 48) : load<f32>(db)), dw));
    if (kind == T_Q4_1 || kind == T_Q5_1) {
      // Into the P sums only: the Q lanes get ±0, which changes no sum.
      const m = f32x4.replace_lane(f32x4.replace_lane(f32x4.splat(0), 0, blockM(kind, p0, tab)), 2, blockM(kind, p1, tab));
      acc = fma4(acc, m, f32x4.splat(i7 ? load<f32>(qb, 52) : load<f32>(sb)));
    }
  }
  const yt = y + <usize>t * (<usize>O << 2);
  store<f32>(yt + (<usize>o << 2), f32x4.extract_lane(acc, 0) + f32x4.extract_lane(acc, 1));
  if (two) store<f32>(yt + (<usize>o1 << 2), f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3));
  return ahead;
}

/**
 * How far ahead of each weight stream the T = 1 integer kernels read (intPair). On this VM's memory
 * the hardware prefetchers did not keep these streams fed: a long loop body per byte leaves few
 * cache misses in flight, and from memory (not cache) the q8_0/q4_0 kernels ran at 4.5-5 GB/s where
 * the f32 one reached 14. WebAssembly has no prefetch instruction, so the loop loads one word of each
 * stream a cache line further on every block (the pointers run ahead faster than the data, 64 bytes
 * against a block's 18-34), whose misses then overlap the arithmetic. The words go nowhere but into
 * a value the caller stores (intPairs), so no compiler can drop the loads. Whole-model decode, one
 * thread, GGUF Q4_0 0.1B: 40 -> 59 tok/s (2048 bytes; 4096 the same; a word a block at a fixed
 * distance instead of a line a block: 49-50). Bounded once per call (intPairs), not by a min() per
 * block: decode at 2 threads, rwkv.cpp Q5_1 0.1B 57.5 -> 62.5 tok/s, GGUF Q4_0 96 -> 99.
 */
const READ_AHEAD: usize = 2048;

/** (a, a, b, b). */
/* @inline */ function pairLanes(a: f32, b: f32): v128 {
  const v = f32x4.replace_lane(f32x4.splat(a), 1, b);
  return i32x4.shuffle(v, v, 0, 0, 1, 1);
}

/**
 * intPair over output rows [lo, hi) of activation row t: rows a quarter of the range apart, a pair
 * from the first half then one from the second, so four long sequential streams are read at once
 * (what is left over, fewer than 4 rows, in pairs half of it apart). Against two streams (pairs half
 * the range apart), decode alternating, medians: 1 thread +3-5% (rwkv.cpp Q8_0 and Q5_1, GGUF Q4_0
 * 0.1B), 2 threads GGUF Q4_0 97 -> 107 tok/s, Q5_1 +3%; eight streams were slower than four.
 * `ktab`: the constant table, never 0 (every caller has it; sink stores the read-ahead words there).
 */
/* @inline */ function intPairs(kind: i32, i7: bool, split: bool, w: usize, rs: usize, scales: usize, nb: i32, xq: usize, dx: usize, sx: usize, t: i32, y: usize, O: i32, lo: i32, hi: i32, tab: usize, ktab: usize): void {
  // The furthest word read ahead is the last row's start + READ_AHEAD + 64 per block. It may lie
  // past the matrix (in whatever follows it: harmless), but not past the memory's end, where it
  // would trap: a matrix that close to the end reads each row's own first word instead. (A bound
  // checked once here, not a min() per block: that cost q5_1 decode 5-8%.)
  // (In u64: a whole 4 GiB memory's byte count does not fit a wasm32 address.)
  const safe = <u64>(w + <usize>(hi - 1) * rs) + <u64>READ_AHEAD + (<u64>nb << 6) + 4 <= (<u64>memory.size() << 16);
  let ahead: u32 = 0;
  const q = (hi - lo) >> 2;
  for (let o = lo; o < lo + q; o++) {
    ahead ^= intPair(kind, i7, split, w, rs, scales, nb, xq, dx, sx, t, y, O, o, q, true, tab, ktab, safe);
    ahead ^= intPair(kind, i7, split, w, rs, scales, nb, xq, dx, sx, t, y, O, o + 2 * q, q, true, tab, ktab, safe);
  }
  const rest = lo + 4 * q, half = (hi - rest) >> 1;
  for (let o = rest; o < rest + half; o++) ahead ^= intPair(kind, i7, split, w, rs, scales, nb, xq, dx, sx, t, y, O, o, half, true, tab, ktab, safe);
  if (rest + 2 * half < hi) ahead ^= intPair(kind, i7, split, w, rs, scales, nb, xq, dx, sx, t, y, O, hi - 1, 0, false, tab, ktab, safe);
  sink(ktab, ahead);
}

/**
 * Words loaded only to bring their cache lines in, ANDed into the constant table's zero word
 * K_SINK: it stays 0, and since their value is stored, no compiler can drop the loads.
 */
/* @inline */ function sink(ktab: usize, words: u32): void {
  store<u32>(ktab + (<usize>K_SINK << 4), load<u32>(ktab + (<usize>K_SINK << 4)) & words);
}

/** The xor of one word of every 64-byte line of [p, p + n): independent loads, many misses in flight. */
function touchLines(p: usize, n: usize): u32 {
  let x: u32 = 0;
  for (let o: usize = 0; o < n; o += 64) x ^= load<u32>(p + o);
  return x;
}

/**
 * A q8_0 or i8 block's dot at T = 1 with the activations in quantizeRows' split layout (per 16
 * elements, the 8 even ones then the 8 odd ones, as i16), times 256, as i32x4 lanes whose halves P
 * = lanes 0 + 2 and Q = lanes 1 + 3 (halfSumsEven) are 256 times halfSums' P and Q of the i16
 * kernels. Each i16 lane of 16 weight bytes holds an even element in its low byte and the next odd
 * one in its high byte: one shift left by 8 makes the even one times 256, exactly, and a mask (`hiByte`,
 * 0xff00) the odd one times 256, so the bytes need no widening (two shuffle-pipe instructions and a
 * shift per 16 before, one shift and one mask now); the multiply-adds (pmaddwd) then pair elements
 * 4l, 4l + 2 and 4l + 1, 4l + 3 into lane l. |sum| <= 256·16·128·127 < 2^31; intPair shifts the
 * halves back by 8 (exact) before converting, so the bits are the i16 kernels'.
 */
/* @inline */ function splitDot(kind: i32, p: usize, xe0: v128, xo0: v128, xe1: v128, xo1: v128, hiByte: v128): v128 {
  const v0 = blockLo(kind, p), v1 = blockHi(kind, p); // the block's raw bytes (q8_0, i8)
  const s0 = i32x4.add(i32x4.dot_i16x8_s(i16x8.shl(v0, 8), xe0), i32x4.dot_i16x8_s(v128.and(v0, hiByte), xo0));
  return i32x4.add(s0, i32x4.add(i32x4.dot_i16x8_s(i16x8.shl(v1, 8), xe1), i32x4.dot_i16x8_s(v128.and(v1, hiByte), xo1)));
}

/** Σ over 32 elements of a block's i16 weights e0..e3 times the i16 activations at q (i32x4 partial sums). */
/* @inline */ function qdot32(e0: v128, e1: v128, e2: v128, e3: v128, q: usize): v128 {
  let s = i32x4.dot_i16x8_s(e0, v128.load(q));
  s = i32x4.add(s, i32x4.dot_i16x8_s(e1, v128.load(q, 16)));
  s = i32x4.add(s, i32x4.dot_i16x8_s(e2, v128.load(q, 32)));
  return i32x4.add(s, i32x4.dot_i16x8_s(e3, v128.load(q, 48)));
}

/**
 * Two rows' pdot32/qdot32 lanes reduced to their halves P and Q, as (a's P, a's Q, b's P, b's Q),
 * exact in i32. P is lanes 0 and 1 (elements 0-3, 8-11, 16-19, 24-27 of the block), the halves of
 * i7dot's pmaddwd lanes (halfSumsEven). One pair of single-instruction shuffles (vshufps).
 */
/* @inline */ function halfSums(a: v128, b: v128): v128 {
  return i32x4.add(i32x4.shuffle(a, b, 0, 2, 4, 6), i32x4.shuffle(a, b, 1, 3, 5, 7));
}
/** (a0 + a2, a1 + a3, b0 + b2, b1 + b3): halves P = lanes 0 + 2, Q = lanes 1 + 3. */
/* @inline */ function halfSumsEven(a: v128, b: v128): v128 {
  return i32x4.add(i32x4.shuffle(a, b, 0, 1, 4, 5), i32x4.shuffle(a, b, 2, 3, 6, 7));
}

/**
 * The prefill tile: output row o against activation rows t..t+3, and t+4..t+7 when `two` (t a
 * multiple of 4; gs: bytes from one group's scales to the next's). Per block, the weights are
 * decoded once for 8 activation rows, and each two rows' integer dots are reduced (halfSums) to one
 * vector of their partial-sum halves, so one convert and one multiply-add per block serve two rows.
 * Per (output row, activation row) the arithmetic and its order are intPair's.
 */
/* @inline */ function intTile(kind: i32, two: bool, wr: usize, nb: i32, rowScale: f32, xq: usize, dg: usize, sg: usize, gs: usize, t: i32, y: usize, O: i32, o: i32, tab: usize): void {
  const bb = blockBytes(kind);
  const qs = <usize>nb * QK * 2; // bytes of one i16 activation row
  const q0 = xq + <usize>t * qs;
  // Lanes (row P, row Q, row' P, row' Q) of rows t, t+1 (a01), t+2, t+3 (a23); b01, b23: t+4..t+7.
  let a01 = f32x4.splat(0), a23 = f32x4.splat(0), b01 = f32x4.splat(0), b23 = f32x4.splat(0);
  const ys = <usize>O << 2;
  const yo = y + <usize>t * ys + (<usize>o << 2);
  for (let b = 0; b < nb; b++) {
    const p = wr + <usize>b * bb;
    const u0 = blockLo(kind, p), u1 = blockHi(kind, p);
    const e0 = i16x8.extend_low_i8x16_s(u0), e1 = i16x8.extend_high_i8x16_s(u0);
    const e2 = i16x8.extend_low_i8x16_s(u1), e3 = i16x8.extend_high_i8x16_s(u1);
    const dw = f32x4.splat(blockD(kind, p, rowScale, tab));
    const qb = q0 + <usize>b * QK * 2;
    const gb = <usize>b << 4;
    const g = v128.load(dg + gb); // the 4 rows' activation scales
    const m = f32x4.splat(blockM(kind, p, tab)), z = f32x4.splat(0);
    // Each pair of rows complete (its minimum term included) before the next pair's loads.
    a01 = fma4(a01, f32x4.convert_i32x4_s(halfSums(qdot32(e0, e1, e2, e3, qb), qdot32(e0, e1, e2, e3, qb + qs))), f32x4.mul(i32x4.shuffle(g, g, 0, 0, 1, 1), dw));
    if (kind == T_Q4_1 || kind == T_Q5_1) a01 = fma4(a01, i32x4.shuffle(v128.load(sg + gb), z, 0, 4, 1, 4), m);
    orderPoint(yo, a01);
    a23 = fma4(a23, f32x4.convert_i32x4_s(halfSums(qdot32(e0, e1, e2, e3, qb + 2 * qs), qdot32(e0, e1, e2, e3, qb + 3 * qs))), f32x4.mul(i32x4.shuffle(g, g, 2, 2, 3, 3), dw));
    if (kind == T_Q4_1 || kind == T_Q5_1) a23 = fma4(a23, i32x4.shuffle(v128.load(sg + gb), z, 2, 4, 3, 4), m);
    orderPoint(yo + 2 * ys, a23);
    if (two) {
      const qc = qb + 4 * qs;
      const g2 = v128.load(dg + gs + gb);
      b01 = fma4(b01, f32x4.convert_i32x4_s(halfSums(qdot32(e0, e1, e2, e3, qc), qdot32(e0, e1, e2, e3, qc + qs))), f32x4.mul(i32x4.shuffle(g2, g2, 0, 0, 1, 1), dw));
      if (kind == T_Q4_1 || kind == T_Q5_1) b01 = fma4(b01, i32x4.shuffle(v128.load(sg + gs + gb), z, 0, 4, 1, 4), m);
      orderPoint(yo + 4 * ys, b01);
      b23 = fma4(b23, f32x4.convert_i32x4_s(halfSums(qdot32(e0, e1, e2, e3, qc + 2 * qs), qdot32(e0, e1, e2, e3, qc + 3 * qs))), f32x4.mul(i32x4.shuffle(g2, g2, 2, 2, 3, 3), dw));
      if (kind == T_Q4_1 || kind == T_Q5_1) b23 = fma4(b23, i32x4.shuffle(v128.load(sg + gs + gb), z, 2, 4, 3, 4), m);
      orderPoint(yo + 6 * ys, b23);
    }
  }
  storeTilePair(yo, ys, a01); storeTilePair(yo + 2 * ys, ys, a23);
  if (two) { storeTilePair(yo + 4 * ys, ys, b01); storeTilePair(yo + 6 * ys, ys, b23); }
}

/**
 * A store of a lane of `v` to an output that is written again at the end, to keep V8 from
 * hoisting the next rows' activation loads above this row's arithmetic: TurboFan keeps loads in
 * program order but sinks pure arithmetic to its use, so without a store between them all 32
 * activation vectors of 8 rows were loaded first and spilled (about 60 extra memory operations a
 * block). The store needs `v`, so the arithmetic before it is scheduled before it.
 */
/* @inline */ function orderPoint(at: usize, v: v128): void {
  store<f32>(at, f32x4.extract_lane(v, 0));
}

/** Outputs of two activation rows (ys bytes apart) from lanes (P, Q, P', Q'): P + Q and P' + Q'. */
/* @inline */ function storeTilePair(yo: usize, ys: usize, a: v128): void {
  store<f32>(yo, f32x4.extract_lane(a, 0) + f32x4.extract_lane(a, 1));
  store<f32>(yo + ys, f32x4.extract_lane(a, 2) + f32x4.extract_lane(a, 3));
}

/** A T > 1 product: intTile over whole groups of 4 activation rows, the rest by intPair. */
/* @inline */ function intRowsTiled(kind: i32, w: usize, scales: usize, O: i32, I: i32, T: i32, xq: usize, dx: usize, sx: usize, g4: usize, y: usize, lo: i32, hi: i32, tab: usize, ktab: usize): void {
  const nb = (I + QK - 1) / QK;
  const rs: usize = kind == T_I8 ? <usize>I : <usize>(I / QK) * blockBytes(kind);
  const gs = <usize>nb << 4; // bytes of one group of 4 rows' scales (nb, 4)
  const sx4 = g4 + <usize>((T + 3) >> 2) * gs;
  const tile = max(INT_TILE_MIN_ROWS, tileRows(nb * (2 * QK + 16), INT_TILE_BYTES));
  for (let t0 = 0; t0 < T; t0 += tile) {
    const t1 = min(T, t0 + tile);
    const tq = t0 + ((t1 - t0) & ~3);
    for (let r = lo; r < hi; r++) {
      const wr = w + <usize>r * rs;
      const rowScale: f32 = kind == T_I8 ? load<f32>(scales + (<usize>r << 2)) : 1;
      let t = t0;
      for (; t + 8 <= tq; t += 8) intTile(kind, true, wr, nb, rowScale, xq, g4 + <usize>(t >> 2) * gs, sx4 + <usize>(t >> 2) * gs, gs, t, y, O, r, tab);
      if (t < tq) intTile(kind, false, wr, nb, rowScale, xq, g4 + <usize>(t >> 2) * gs, sx4 + <usize>(t >> 2) * gs, gs, t, y, O, r, tab);
    }
    for (let t = tq; t < t1; t++) intPairs(kind, false, false, w, rs, scales, nb, xq, dx, sx, t, y, O, lo, hi, tab, ktab);
  }
}

// ---- The i8·i7 path (relaxed SIMD): i16x8.relaxed_dot_i8x16_i7x16_s multiplies signed bytes by
// bytes whose top bit is clear and adds adjacent pairs to i16 (pmaddubsw on x86); where that bit is
// set, engines differ (signed or unsigned), and the pair sums may saturate on some. The q4/q5
// weights decode to unsigned 0..31 (the _0 types without their offset: w = d·(u - 8) for q4_0,
// d·(u - 16) for q5_0), the 7-bit operand, and the activations stay the signed int8 operand
// (-127..127), so a pair sums to at most 2·127·31 and the two halves' sum to 4·127·31 < 2^15:
// every engine computes the same exact integers. The offset comes back as -8 (or -16) times the
// activations' pair sums, precomputed per block (quantizeRowI8), added to the i16 sums before they
// are widened. q8_0 and i8 weights are signed bytes and keep the i16 path.
// (The i32 form, i32x4.relaxed_dot_i8x16_i7x16_add_s, is unusable twice over: Node 20's V8
// validates it and returns other values, 8·a·b per lane, c ignored; and its lanes, elements
// 4l..4l+3, would put the f32 sums after it in another order than the i16 kernels'.)

/**
 * 1 when this engine's i16x8.relaxed_dot_i8x16_i7x16_s computes the specified sums (signed bytes
 * times 7-bit bytes, adjacent pairs added to i16), else 0 (also in the plain build). The JS side
 * runs the i8·i7 kernels only where this probe passes. The operands are loaded from memory at
 * `scratch` (32 bytes) so that no compiler folds the instruction into a constant.
 */
export function relaxedDotOk(scratch: usize): i32 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    // Signed bytes (-128 included) times bytes 0..127; the pair sums worked out by hand.
    v128.store(scratch, i8x16(-128, 127, -1, 5, 100, -100, 0, 7, -3, 64, -64, 1, 2, -2, 99, -99));
    v128.store(scratch, i8x16(127, 1, 0, 31, 2, 3, 126, 64, 15, 8, 9, 0, 127, 127, 1, 2), 16);
    const r = i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(scratch), v128.load(scratch, 16));
    return i32(i16x8.all_true(i16x8.eq(r, i16x8(-16129, 155, -100, 448, 467, -576, 0, -99))));
  }
  return 0;
}

/** log2 of the offset of the _0 types' unsigned weights (0: none). */
/* @inline */ function i7Shift(kind: i32): i32 {
  return kind == T_Q4_0 ? 3 : kind == T_Q5_0 ? 4 : 0;
}
/** Elements 0-15 and 16-31 of a q4/q5 block as unsigned bytes (0..15 or 0..31). */
/* @inline */ function blockLoU(kind: i32, p: usize, lowNibble: v128, ktab: usize): v128 {
  if (kind == T_Q4_0) return v128.and(v128.load(p, 2), lowNibble);
  if (kind == T_Q4_1) return v128.and(v128.load(p, 4), lowNibble);
  // The multiplier and mask are read from the table where used (held in registers across the loop instead: no faster).
  if (kind == T_Q5_0) return v128.or(v128.and(v128.load(p, 6), lowNibble), fifthBits(p + 2, false, kc(ktab, K_Q5S_MUL), kc(ktab, K_FIFTH_BIT)));
  return v128.or(v128.and(v128.load(p, 8), lowNibble), fifthBits(p + 4, false, kc(ktab, K_Q5S_MUL), kc(ktab, K_FIFTH_BIT)));
}
/* @inline */ function blockHiU(kind: i32, p: usize, lowNibble: v128, ktab: usize): v128 {
  if (kind == T_Q4_0) return highNibbles(v128.load(p, 2), lowNibble);
  if (kind == T_Q4_1) return highNibbles(v128.load(p, 4), lowNibble);
  if (kind == T_Q5_0) return v128.or(highNibbles(v128.load(p, 6), lowNibble), fifthBits(p + 2, true, kc(ktab, K_Q5S_MUL), kc(ktab, K_FIFTH_BIT)));
  return v128.or(highNibbles(v128.load(p, 8), lowNibble), fifthBits(p + 4, true, kc(ktab, K_Q5S_MUL), kc(ktab, K_FIFTH_BIT)));
}
/** The high nibble of each byte: an i16 shift and the mask in a register (V8 lowers i8x16.shr_u to the same shift and a mask it rebuilds from immediates at each use). */
/* @inline */ function highNibbles(v: v128, lowNibble: v128): v128 {
  return v128.and(i16x8.shr_u(v, 4), lowNibble);
}

/**
 * One block's exact integer dot with the i8 activations xl (elements 0-15) and xh (16-31), as i32x4
 * lanes whose halves P = lanes 0 + 2 and Q = lanes 1 + 3 (halfSumsEven) are halfSums' P and Q of the
 * i16 kernels, so that the f32 sums that follow are intPair's on the i16 kernels bit for bit. The
 * relaxed dots' i16 lane j holds elements 2j, 2j+1, 16+2j, 17+2j; one multiply-add by ones
 * (pmaddwd, on the multiply pipes) adds lanes 2l and 2l + 1 into i32 lane l (elements 4l..4l+3
 * and 16+4l..19+4l). Widening both halves and adding cost four instructions, three of them on the
 * two shuffle/shift pipes that appear to bind this loop (kernel bench, q4_0 T = 1: 43-48 -> 52-58
 * GFLOP/s). The q5 types took it once their fifth bits came without the table lookups (fifthBits);
 * before, with the ones vector live as well, V8 kept q5_1's loop accumulator on the stack.
 * `off`: the _0 types' offset, the negated i16 lane sums of the activations times 8 or 16.
 */
/* @inline */ function i7dot(kind: i32, p: usize, xl: v128, xh: v128, off: v128, lowNibble: v128, ktab: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    let s = i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(xl, blockLoU(kind, p, lowNibble, ktab)), i16x8.relaxed_dot_i8x16_i7x16_s(xh, blockHiU(kind, p, lowNibble, ktab)));
    if (i7Shift(kind) != 0) s = i16x8.add(s, off);
    return i32x4.dot_i16x8_s(s, kc(ktab, K_I16_ONES));
  }
  return i32x4.splat(0); // never called without relaxed SIMD
}

/**
 * Activation rows per tile of a T > 1 product: each output row runs over one tile of activation
 * rows before the next row, so the tile (about this many bytes) stays in L2 while the weights
 * stream through once per tile; a whole long prompt's activations (512 x 3072 as i16: 3 MiB)
 * would leave L2 between two output rows and come from L3 or memory for each.
 * The float kernels convert an f16/bf16 weight row again for every tile, so their tiles are larger:
 * with 192 KiB, a 10240-wide row (the G1 2.9B's ffn.value) took 4 activation rows per tile and the
 * product ran at half the speed of the narrower ones (bench/kernels/matmul.ts, C = 2560).
 * The integer tiles keep 192 KiB (a 1 MiB tile was 3-6% slower at 0.1B widths, T = 512) but take at
 * least INT_TILE_MIN_ROWS rows: intTile decodes a weight block once for 8 activation rows, and a
 * 10240-wide row (2.9B's ffn.value) got 4 (2560 x 10240, T = 64: q8_0 44 -> 52 GFLOP/s with 16).
 */
const INT_TILE_BYTES: i32 = 192 << 10;
const INT_TILE_MIN_ROWS: i32 = 16;
const FLOAT_TILE_BYTES: i32 = 1024 << 10;

/** Rows of a tile of about `tileBytes` for activation rows of `rowBytes` (a multiple of 4, at least 4). */
/* @inline */ function tileRows(rowBytes: i32, tileBytes: i32): i32 {
  return max(4, (tileBytes / rowBytes) & ~3);
}

/**
 * The i16 kernels without quantizeRows' per-group scales: one activation row at a time (decode,
 * T = 1). Correct for any T, with the bits of intRowsTiled, but reading the weights once per row.
 */
/* @inline */ function intRows(kind: i32, i7: bool, split: bool, w: usize, scales: usize, O: i32, I: i32, T: i32, xq: usize, dx: usize, sx: usize, y: usize, lo: i32, hi: i32, tab: usize, ktab: usize): void {
  const nb = (I + QK - 1) / QK;
  const rs: usize = kind == T_I8 ? <usize>I : <usize>(I / QK) * blockBytes(kind);
  for (let t = 0; t < T; t++) intPairs(kind, i7, split, w, rs, scales, nb, xq, dx, sx, t, y, O, lo, hi, tab, ktab);
}

/**
 * `i8`: the activations are in quantizeRows' i8 records and the i8·i7 kernels run (relaxed
 * build, q4/q5 types); `split`: in its split i16 layout (q8_0 and i8 at T = 1, splitDot). `tab`: the f16 table; `ktab`: the constant table (fillActivationTable).
 */
function matmulInt(w: usize, kind: i32, O: i32, I: i32, T: i32, xq: usize, dx: usize, sx: usize, y: usize, scales: usize, tab: usize, i8: bool, ktab: usize, split: bool, part: i32, nparts: i32): void {
  const lo = splitLo(O, part, nparts, 16), hi = splitHi(O, part, nparts, 16);
  if (lo >= hi) return;
  if (ASC_FEATURE_RELAXED_SIMD) {
    if (i8) {
      if (kind == T_Q4_0) intRows(T_Q4_0, true, false, w, 0, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
      else if (kind == T_Q4_1) intRows(T_Q4_1, true, false, w, 0, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
      else if (kind == T_Q5_0) intRows(T_Q5_0, true, false, w, 0, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
      else if (kind == T_Q5_1) intRows(T_Q5_1, true, false, w, 0, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
      return;
    }
  }
  if (split) {
    if (kind == T_Q8_0) intRows(T_Q8_0, false, true, w, scales, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
    else intRows(T_I8, false, true, w, scales, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
    return;
  }
  if (kind == T_Q8_0) intRows(T_Q8_0, false, false, w, scales, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
  else if (kind == T_Q4_0) intRows(T_Q4_0, false, false, w, scales, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
  else if (kind == T_Q4_1) intRows(T_Q4_1, false, false, w, scales, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
  else if (kind == T_Q5_0) intRows(T_Q5_0, false, false, w, scales, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
  else if (kind == T_Q5_1) intRows(T_Q5_1, false, false, w, scales, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
  else intRows(T_I8, false, false, w, scales, O, I, T, xq, dx, sx, y, lo, hi, tab, ktab);
}

/**
 * matmulInt for T > 1 on the i16 layout with quantizeRows' per-group scales (g4): the weights
 * stream once per L2 tile of activation rows. runJob picks it when the host passed g4.
 */
function matmulIntTiled(w: usize, kind: i32, O: i32, I: i32, T: i32, xq: usize, dx: usize, sx: usize, y: usize, scales: usize, tab: usize, g4: usize, ktab: usize, part: i32, nparts: i32): void {
  const lo = splitLo(O, part, nparts, 16), hi = splitHi(O, part, nparts, 16);
  if (lo >= hi) return;
  if (kind == T_Q8_0) intRowsTiled(T_Q8_0, w, scales, O, I, T, xq, dx, sx, g4, y, lo, hi, tab, ktab);
  else if (kind == T_Q4_0) intRowsTiled(T_Q4_0, w, scales, O, I, T, xq, dx, sx, g4, y, lo, hi, tab, ktab);
  else if (kind == T_Q4_1) intRowsTiled(T_Q4_1, w, scales, O, I, T, xq, dx, sx, g4, y, lo, hi, tab, ktab);
  else if (kind == T_Q5_0) intRowsTiled(T_Q5_0, w, scales, O, I, T, xq, dx, sx, g4, y, lo, hi, tab, ktab);
  else if (kind == T_Q5_1) intRowsTiled(T_Q5_1, w, scales, O, I, T, xq, dx, sx, g4, y, lo, hi, tab, ktab);
  else intRowsTiled(T_I8, w, scales, O, I, T, xq, dx, sx, g4, y, lo, hi, tab, ktab);
}

// ---------------------------------------------------------------------------------------------
// Norms: f64 accumulation in the reference's exact order, so results equal the reference's.

/**
 * Rows [lo, hi) of x (R, G·N) viewed as R·G groups of N: y = (x - mean) / sqrt(var + eps) · w + b,
 * w/b indexed per channel of the row (G = 1: layer norm; G = H: group norm).
 */
function layerNorm(x: usize, R: i32, G: i32, N: i32, weight: usize, bias: usize, y: usize, eps: f32, part: i32, nparts: i32): void {
  const lo = splitLo(R, part, nparts, 1), hi = splitHi(R, part, nparts, 1);
  const C = G * N;
  for (let r = lo; r < hi; r++) {
    for (let g = 0; g < G; g++) {
      const o = <usize>(r * C + g * N) << 2;
      const xo = x + o, yo = y + o;
      const wo = weight + (<usize>(g * N) << 2), bo = bias + (<usize>(g * N) << 2);
      let mean: f64 = 0;
      for (let i = 0; i < N; i++) mean += <f64>load<f32>(xo + (<usize>i << 2));
      mean /= <f64>N;
      let v: f64 = 0;
      for (let i = 0; i < N; i++) { const d = <f64>load<f32>(xo + (<usize>i << 2)) - mean; v += d * d; }
      const inv = 1 / Math.sqrt(v / <f64>N + <f64>eps);
      for (let i = 0; i < N; i++) {
        const io = <usize>i << 2;
        store<f32>(yo + io, <f32>((<f64>load<f32>(xo + io) - mean) * inv * <f64>load<f32>(wo + io) + <f64>load<f32>(bo + io)));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// WKV scans. States and outputs are f32; parts split channels (v4) or heads (v5, v7).

/** Four f32 at p, or (one) the f32 at p in every lane. */
/* @inline */ function lanes(p: usize, one: bool): v128 {
  return one ? f32x4.splat(load<f32>(p)) : v128.load(p);
}

/**
 * RWKV-4 (wkv.ts wkv4Scan, the training forward's scan), four channels at a time and the C % 4
 * tail channels one by one; aa, bb, pp (C) the carried state. Parts split channels in fours.
 */
function wkv4(T: i32, C: i32, w: usize, u: usize, k: usize, v: usize, aa: usize, bb: usize, pp: usize, y: usize, part: i32, nparts: i32): void {
  const lo = splitLo(C, part, nparts, 4), hi = splitHi(C, part, nparts, 4);
  const C4 = C & ~3;
  for (let c = lo; c < hi;) {
    const one = c >= C4, co = <usize>c << 2;
    wkv4State(lanes(aa + co, one), lanes(bb + co, one), lanes(pp + co, one));
    wkv4Scan(T, C, lanes(w + co, one), lanes(u + co, one), k + co, v + co, y + co, one);
    const sa = wkv4Aa(), sb = wkv4Bb(), sp = wkv4Pp();
    if (one) {
      store<f32>(aa + co, f32x4.extract_lane(sa, 0)); store<f32>(bb + co, f32x4.extract_lane(sb, 0)); store<f32>(pp + co, f32x4.extract_lane(sp, 0));
    } else {
      v128.store(aa + co, sa); v128.store(bb + co, sb); v128.store(pp + co, sp);
    }
    c += one ? 1 : 4;
  }
}

/**
 * RWKV-5/6 per head (wkv.ts wkv5Step): y = Σ_j r[j] S[j,:] + v Σ_j r[j] u[j] k[j], then the state
 * steps. decay is (C) when perToken == 0, else (T, C).
 */
function wkv5(T: i32, H: i32, N: i32, r: usize, k: usize, v: usize, decay: usize, perToken: i32, u: usize, S: usize, y: usize, part: i32, nparts: i32): void {
  const lo = splitLo(H, part, nparts, 1), hi = splitHi(H, part, nparts, 1);
  const C = H * N;
  for (let t = 0; t < T; t++) {
    const tc = <usize>(t * C) << 2;
    const dt = perToken != 0 ? tc : 0;
    for (let h = lo; h < hi; h++) {
      const c0 = <usize>(h * N) << 2;
      const sh = S + (<usize>(h * N * N) << 2);
      const o = tc + c0, yh = y + o;
      const ruk = dot3(r + o, u + c0, k + o, N);
      wkv5Step(sh, sh, N, r + o, k + o, v + o, decay + dt + c0, yh);
      wkv5Out(yh, v + o, ruk, N);
    }
  }
}

/**
 * RWKV-7 per head (wkv.ts wkv7Step), the state updated in place. At T = 1 (decoding) this part's
 * heads' state is first touched, a word per cache line: since the last token the weights streamed
 * through the caches have evicted it (0.1B: 196 KB a layer), and wkv7Step, a reduction over two
 * rows and then their update, keeps few misses in flight (41-45 µs a layer on one thread here);
 * independent loads keep more in flight (33-38 µs in all; the arithmetic is unchanged).
 * `ktab`: the constant table (sink).
 */
function wkv7(T: i32, H: i32, N: i32, r: usize, decay: usize, k: usize, v: usize, a: usize, b: usize, S: usize, y: usize, ktab: usize, part: i32, nparts: i32): void {
  const lo = splitLo(H, part, nparts, 1), hi = splitHi(H, part, nparts, 1);
  const C = H * N;
  const headBytes = <usize>(N * N) << 2;
  if (T == 1 && lo < hi) sink(ktab, touchLines(S + <usize>lo * headBytes, <usize>(hi - lo) * headBytes));
  for (let t = 0; t < T; t++) {
    for (let h = lo; h < hi; h++) {
      const c0 = <usize>(t * C + h * N) << 2;
      const sh = S + <usize>h * headBytes;
      wkv7Step(sh, sh, N, r + c0, decay + c0, k + c0, v + c0, a + c0, b + c0, y + c0, 0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Activations: x <- f(scale·x) element-wise, in f64 like the reference (which computes with JS
// numbers and stores f32), so results equal the reference's after rounding to f32 except when the
// f64 value lies within ~1e-15 of an f32 rounding boundary. Parts split the elements.

// Activation ids; keep in sync with ACTIVATION_IDS in src/core/backend/wasm.ts.
const A_SIGMOID: i32 = 0;
const A_TANH: i32 = 1;
const A_SILU: i32 = 2;
const A_RELU2: i32 = 3;
const A_EXP: i32 = 4;

const LOG2E_64: f64 = 1.4426950408889634;
/** ln 2 split so k·LN2_HI is exact for |k| < 2^11 (Cody-Waite range reduction). */
const LN2_HI_64: f64 = 6.93147180369123816490e-01;
const LN2_LO_64: f64 = 1.90821492927058770002e-10;
/**
 * e^x is computed for x clamped to [EXP_MIN_64, EXP_MAX_64], where every 2^k of the reduction
 * below is a normal f64; outside it the result is set to 0 or +Inf, what e^x is in f32 there.
 */
const EXP_MIN_64: f64 = -708;
const EXP_MAX_64: f64 = 709;
/** 1.5·2^52: adding it rounds an f64 of magnitude < 2^51 to an integer held in the low mantissa bits. */
const ROUND_SHIFTER: f64 = 6755399441055744.0;
/** Below this |z|, tanh z = z - z³/3 to 1e-13 relative; the e^2z form would cancel there. */
const TANH_SMALL: f64 = 1e-3;

// The activations' f64x2 constants (and the f16s and i8·i7 kernels' vectors) live in a table in memory (fillActivationTable): V8 builds
// every v128 constant in the code from a 64-bit immediate with three instructions, at each use;
// a load from the table is one, so the polynomial runs at half the instructions.
const K_LOG2E = 0, K_SHIFTER = 1, K_LN2_HI = 2, K_LN2_LO = 3, K_EXP_MAX = 4, K_EXP_MIN = 5;
const K_ONE = 6, K_TWO = 7, K_THREE = 8, K_TANH_SMALL = 9, K_SIGN = 10, K_ZERO = 11, K_INF = 12;
/** 1/i! for i = 2..11 at K_FACT + i - 2 (the Taylor coefficients of e^r). */
const K_FACT = 13;
/** The f16s kernels' mask (i32x4 F16S_MASK) and scale (f32x4 F16S_TO_F32_SCALE). */
const K_F16S_MASK = 23, K_F16S_SCALE = 24;
/** The i8·i7 kernels' low-nibble byte mask (0x0f). */
const K_LOW_NIBBLE = 25;
/** The f16s kernels' i16x8 (2^13, 0, ...) and (0, 2^13, ...), which move a lane's low or high half into place (f16sLo, f16sHi). */
const K_F16S_LO13 = 26, K_F16S_HI13 = 30;
/** i16x8 ones: i7dot's widening of i16 pair sums to i32 in one multiply-add (pmaddwd). */
const K_I16_ONES = 27;
/** fifthBits' i16 multipliers (Q5S_MUL) and its mask, bit 4 of each byte. */
const K_Q5S_MUL = 28, K_FIFTH_BIT = 29;
/** splitDot's mask of each i16 lane's high byte (0xff00). */
const K_HI_BYTE = 31;
/** A zero word the loads made only to fetch lines are ANDed into (sink: intPairs' read-ahead, wkv7's state); a cache line of its own, away from the constants the loops read. */
const K_SINK = 32;
const K_COUNT = 36;

/** Writes the constant table (K_COUNT vectors of 16 bytes) at `tab`. */
export function fillActivationTable(tab: usize): void {
  putK(tab, K_LOG2E, LOG2E_64); putK(tab, K_SHIFTER, ROUND_SHIFTER);
  putK(tab, K_LN2_HI, LN2_HI_64); putK(tab, K_LN2_LO, LN2_LO_64);
  putK(tab, K_EXP_MAX, EXP_MAX_64); putK(tab, K_EXP_MIN, EXP_MIN_64);
  putK(tab, K_ONE, 1); putK(tab, K_TWO, 2); putK(tab, K_THREE, 3);
  putK(tab, K_TANH_SMALL, TANH_SMALL); putK(tab, K_SIGN, -0.0); putK(tab, K_ZERO, 0); putK(tab, K_INF, Infinity);
  let fact: f64 = 1;
  for (let i = 2; i <= 11; i++) { fact *= <f64>i; putK(tab, K_FACT + i - 2, 1 / fact); }
  v128.store(tab + (<usize>K_F16S_MASK << 4), i32x4.splat(F16S_MASK));
  v128.store(tab + (<usize>K_F16S_SCALE << 4), f32x4.splat(F16S_TO_F32_SCALE));
  v128.store(tab + (<usize>K_LOW_NIBBLE << 4), i8x16.splat(0x0f));
  v128.store(tab + (<usize>K_F16S_LO13 << 4), i32x4.splat(8192));
  v128.store(tab + (<usize>K_F16S_HI13 << 4), i32x4.splat(8192 << 16));
  v128.store(tab + (<usize>K_I16_ONES << 4), i16x8.splat(1));
  v128.store(tab + (<usize>K_Q5S_MUL << 4), Q5S_MUL);
  v128.store(tab + (<usize>K_FIFTH_BIT << 4), i8x16.splat(0x10));
  v128.store(tab + (<usize>K_HI_BYTE << 4), i32x4.splat(0xff00ff00));
  v128.store(tab + (<usize>K_SINK << 4), i32x4.splat(0));
}

function putK(tab: usize, i: i32, v: f64): void {
  v128.store(tab + (<usize>i << 4), f64x2.splat(v));
}

/** Bytes of the constant table. */
export function activationTableBytes(): i32 {
  return K_COUNT << 4;
}

/* @inline */ function kc(tab: usize, i: i32): v128 {
  return v128.load(tab + (<usize>i << 4));
}

/**
 * e^x for two f64: x = k ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r^11 (relative
 * error < 7e-15, evaluated in Estrin's scheme for parallelism), times 2^k by adding k to the
 * exponent field (k comes out of the shifter's low bits).
 */
/* @inline */ function exp2d(x0: v128, tab: usize): v128 {
  const x = f64x2.pmax(f64x2.pmin(x0, kc(tab, K_EXP_MAX)), kc(tab, K_EXP_MIN)); // NaN stays NaN
  const kd = f64x2.add(f64x2.mul(x, kc(tab, K_LOG2E)), kc(tab, K_SHIFTER));
  const k = f64x2.sub(kd, kc(tab, K_SHIFTER));
  const r = f64x2.sub(f64x2.sub(x, f64x2.mul(k, kc(tab, K_LN2_HI))), f64x2.mul(k, kc(tab, K_LN2_LO)));
  const r2 = f64x2.mul(r, r), r4 = f64x2.mul(r2, r2), r8 = f64x2.mul(r4, r4);
  // Σ r^i / i! as pairs (c_i + c_{i+1} r), combined by powers r², r⁴, r⁸.
  const p01 = f64x2.add(kc(tab, K_ONE), r);
  const p23 = f64x2.add(kc(tab, K_FACT + 0), f64x2.mul(r, kc(tab, K_FACT + 1)));
  const p45 = f64x2.add(kc(tab, K_FACT + 2), f64x2.mul(r, kc(tab, K_FACT + 3)));
  const p67 = f64x2.add(kc(tab, K_FACT + 4), f64x2.mul(r, kc(tab, K_FACT + 5)));
  const p89 = f64x2.add(kc(tab, K_FACT + 6), f64x2.mul(r, kc(tab, K_FACT + 7)));
  const pab = f64x2.add(kc(tab, K_FACT + 8), f64x2.mul(r, kc(tab, K_FACT + 9)));
  const p03 = f64x2.add(p01, f64x2.mul(r2, p23));
  const p47 = f64x2.add(p45, f64x2.mul(r2, p67));
  const p8b = f64x2.add(p89, f64x2.mul(r2, pab));
  const p = f64x2.add(f64x2.add(p03, f64x2.mul(r4, p47)), f64x2.mul(r8, p8b));
  const y = i64x2.add(p, i64x2.shl(kd, 52)); // p·2^k: k << 52 added to p's exponent field
  // Past the clamp, what e^x rounds to in f64: +Inf above, 0 below (so e.g. silu(-Inf) = -Inf/Inf
  // is NaN, as in the reference).
  return v128.andnot(v128.bitselect(kc(tab, K_INF), y, f64x2.gt(x0, kc(tab, K_EXP_MAX))), f64x2.lt(x0, kc(tab, K_EXP_MIN)));
}

/** f(z) for two f64, the reference's formulas. */
/* @inline */ function activate2d(f: i32, z: v128, tab: usize): v128 {
  const one = kc(tab, K_ONE);
  if (f == A_SIGMOID) return f64x2.div(one, f64x2.add(one, exp2d(f64x2.neg(z), tab)));
  if (f == A_SILU) return f64x2.div(z, f64x2.add(one, exp2d(f64x2.neg(z), tab)));
  if (f == A_EXP) return exp2d(z, tab);
  if (f == A_RELU2) {
    const p = v128.and(z, f64x2.gt(z, kc(tab, K_ZERO))); // z > 0 ? z : 0 (NaN -> 0)
    return f64x2.mul(p, p);
  }
  // tanh z = sign(z) (1 - 2 / (e^{2|z|} + 1)); near 0, z - z³/3.
  const a = f64x2.abs(z);
  const big = f64x2.sub(one, f64x2.div(kc(tab, K_TWO), f64x2.add(exp2d(f64x2.add(a, a), tab), one)));
  const small = f64x2.sub(a, f64x2.mul(f64x2.mul(a, a), f64x2.div(a, kc(tab, K_THREE))));
  const t = v128.bitselect(small, big, f64x2.lt(a, kc(tab, K_TANH_SMALL)));
  return v128.or(t, v128.and(z, kc(tab, K_SIGN))); // the sign of z (also keeps NaN a NaN)
}

/** Four f32 at p: promoted, f(scale·x) in f64, rounded back. */
/* @inline */ function activate4(f: i32, p: usize, scale: f64, tab: usize): void {
  const x = v128.load(p);
  const sc = f64x2.splat(scale);
  const lo = activate2d(f, f64x2.mul(f64x2.promote_low_f32x4(x), sc), tab);
  const hi = activate2d(f, f64x2.mul(f64x2.promote_low_f32x4(i32x4.shuffle(x, x, 2, 3, 0, 1)), sc), tab);
  const l = f32x4.demote_f64x2_zero(lo), h = f32x4.demote_f64x2_zero(hi);
  v128.store(p, i32x4.shuffle(l, h, 0, 1, 4, 5));
}

function activate(x: usize, n: i32, f: i32, scale: f64, tmp: usize, tab: usize, part: i32, nparts: i32): void {
  const lo = splitLo(n, part, nparts, 4), hi = splitHi(n, part, nparts, 4);
  let i = lo;
  if (f == A_SIGMOID) { for (; i + 4 <= hi; i += 4) activate4(A_SIGMOID, x + (<usize>i << 2), scale, tab); }
  else if (f == A_TANH) { for (; i + 4 <= hi; i += 4) activate4(A_TANH, x + (<usize>i << 2), scale, tab); }
  else if (f == A_SILU) { for (; i + 4 <= hi; i += 4) activate4(A_SILU, x + (<usize>i << 2), scale, tab); }
  else if (f == A_RELU2) { for (; i + 4 <= hi; i += 4) activate4(A_RELU2, x + (<usize>i << 2), scale, tab); }
  else { for (; i + 4 <= hi; i += 4) activate4(A_EXP, x + (<usize>i << 2), scale, tab); }
  if (i < hi) { // the last 1-3 elements through a zero-padded vector: the same instructions
    const t = tmp + (<usize>part << 4);
    v128.store(t, i32x4.splat(0));
    for (let j = i; j < hi; j++) store<f32>(t + (<usize>(j - i) << 2), load<f32>(x + (<usize>j << 2)));
    activate4(f, t, scale, tab);
    for (let j = i; j < hi; j++) store<f32>(x + (<usize>j << 2), load<f32>(t + (<usize>(j - i) << 2)));
  }
}
