/*
 * The element-wise kernels between the models' matmuls (src/core/backend/backend.ts TensorKernels;
 * the reference in src/core/backend/reference.ts is their specification). Jobs of the same thread
 * protocol as kernels.ts, which dispatches ids GLUE_FIRST and up here.
 *
 * Exactness: a single f32 operation (add, sub, mul) is computed in f32, which rounds exactly as
 * the reference's f64 operation rounded to f32. Formulas of several operations are computed in
 * f64 in the reference's order and rounded once, so every result equals the reference bit for bit
 * (no fused multiply-add anywhere). Parts split rows, or heads for the per-head kernels, so any
 * number of threads gives the same bits.
 */

import { arg, splitHi, splitLo } from "./threads";

// Job ids; keep in sync with GLUE in src/core/backend/wasm-tensors.ts.
export const GLUE_FIRST: i32 = 20;
const J_ADD: i32 = 20;
const J_MUL: i32 = 21;
const J_SUB: i32 = 22;
const J_ADD_ROW: i32 = 23;
const J_LERP: i32 = 24;
const J_MIX: i32 = 25;
const J_LERP_BY: i32 = 26;
const J_V7_KEYS: i32 = 27;
const J_V7_BONUS: i32 = 28;
const J_ROW_MAT_VEC: i32 = 29;
const J_SOFTCAP_ATTENTION: i32 = 30;

/** Most (output, mix) pairs of one lerp/mix job (RWKV-7's six token-shift mixes). */
const MAX_PAIRS: i32 = 6;

export function runGlueJob(a: usize, job: i32, part: i32, nparts: i32): void {
  if (job == J_ADD || job == J_MUL) binary(job, arg(a, 0), arg(a, 0), arg(a, 1), arg(a, 2), part, nparts);
  else if (job == J_SUB) binary(job, arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), part, nparts);
  else if (job == J_ADD_ROW) addRow(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), part, nparts);
  else if (job == J_LERP || job == J_MIX) interpolate(job == J_MIX, a, part, nparts);
  else if (job == J_LERP_BY) lerpBy(arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4), arg(a, 5), arg(a, 6), part, nparts);
  else if (job == J_V7_KEYS) v7Keys(a, part, nparts);
  else if (job == J_V7_BONUS) v7Bonus(a, part, nparts);
  else if (job == J_ROW_MAT_VEC) rowMatVec(a, part, nparts);
  else if (job == J_SOFTCAP_ATTENTION) softcapAttention(a, part, nparts);
}

// f32x4 <-> two f64x2
/* @inline */ function lo2(v: v128): v128 { return f64x2.promote_low_f32x4(v); }
/* @inline */ function hi2(v: v128): v128 { return f64x2.promote_low_f32x4(i32x4.shuffle(v, v, 2, 3, 0, 1)); }
/* @inline */ function pack(lo: v128, hi: v128): v128 {
  return i32x4.shuffle(f32x4.demote_f64x2_zero(lo), f32x4.demote_f64x2_zero(hi), 0, 1, 4, 5);
}
/* @inline */ function ld(p: usize, i: i32): f64 { return <f64>load<f32>(p + (<usize>i << 2)); }
/* @inline */ function st(p: usize, i: i32, v: f64): void { store<f32>(p + (<usize>i << 2), <f32>v); }

/** y = a + b or a ⊙ b, or a - b (J_SUB), over n elements. */
function binary(job: i32, y: usize, x: usize, d: usize, n: i32, part: i32, nparts: i32): void {
  const lo = splitLo(n, part, nparts, 4), hi = splitHi(n, part, nparts, 4);
  let i = lo;
  for (; i + 4 <= hi; i += 4) {
    const o = <usize>i << 2;
    const u = v128.load(x + o), v = v128.load(d + o);
    v128.store(y + o, job == J_ADD ? f32x4.add(u, v) : job == J_MUL ? f32x4.mul(u, v) : f32x4.sub(u, v));
  }
  for (; i < hi; i++) {
    const o = <usize>i << 2;
    const u = load<f32>(x + o), v = load<f32>(d + o);
    store<f32>(y + o, job == J_ADD ? u + v : job == J_MUL ? u * v : u - v);
  }
}

/** x[r] += bias for rows of x (R, C). */
function addRow(x: usize, bias: usize, R: i32, C: i32, part: i32, nparts: i32): void {
  const lo = splitLo(R, part, nparts, 1), hi = splitHi(R, part, nparts, 1);
  for (let r = lo; r < hi; r++) binary(J_ADD, x + (<usize>(r * C) << 2), x + (<usize>(r * C) << 2), bias, C, 0, 1);
}

/**
 * Args: xx, sx, R, C, pairs, then `pairs` outputs and `pairs` mixes (1, C).
 * lerp: out = xx + (sx - xx)·m;  mix: out = xx·m + sx·(1 - m)  (f64, rounded once).
 */
function interpolate(isMix: bool, a: usize, part: i32, nparts: i32): void {
  const xx: usize = arg(a, 0), sx: usize = arg(a, 1), R = arg(a, 2), C = arg(a, 3), pairs = min(arg(a, 4), MAX_PAIRS);
  const lo = splitLo(R, part, nparts, 1), hi = splitHi(R, part, nparts, 1);
  const one = f64x2.splat(1);
  for (let f = 0; f < pairs; f++) {
    const out: usize = arg(a, 5 + f), m: usize = arg(a, 5 + pairs + f);
    for (let r = lo; r < hi; r++) {
      const ro = <usize>(r * C) << 2;
      let c = 0;
      for (; c + 4 <= C; c += 4) {
        const o = <usize>c << 2;
        const x = v128.load(xx + ro + o), s = v128.load(sx + ro + o), w = v128.load(m + o);
        const xl = lo2(x), xh = hi2(x), sl = lo2(s), sh = hi2(s), wl = lo2(w), wh = hi2(w);
        let yl: v128, yh: v128;
        if (isMix) {
          yl = f64x2.add(f64x2.mul(xl, wl), f64x2.mul(sl, f64x2.sub(one, wl)));
          yh = f64x2.add(f64x2.mul(xh, wh), f64x2.mul(sh, f64x2.sub(one, wh)));
        } else {
          yl = f64x2.add(xl, f64x2.mul(f64x2.sub(sl, xl), wl));
          yh = f64x2.add(xh, f64x2.mul(f64x2.sub(sh, xh), wh));
        }
        v128.store(out + ro + o, pack(yl, yh));
      }
      for (; c < C; c++) {
        const x = ld(xx + ro, c), s = ld(sx + ro, c), w = ld(m, c);
        st(out + ro, c, isMix ? x * w + s * (1 - w) : x + (s - x) * w);
      }
    }
  }
}

/** y = xx + d·(m + dyn), or xx + d·m when dyn is 0; m (1, C), the rest (R, C). */
function lerpBy(y: usize, xx: usize, d: usize, m: usize, dyn: usize, R: i32, C: i32, part: i32, nparts: i32): void {
  const lo = splitLo(R, part, nparts, 1), hi = splitHi(R, part, nparts, 1);
  for (let r = lo; r < hi; r++) {
    const ro = <usize>(r * C) << 2;
    let c = 0;
    for (; c + 4 <= C; c += 4) {
      const o = <usize>c << 2;
      const x = v128.load(xx + ro + o), e = v128.load(d + ro + o), w = v128.load(m + o);
      let wl = lo2(w), wh = hi2(w);
      if (dyn != 0) {
        const q = v128.load(dyn + ro + o);
        wl = f64x2.add(wl, lo2(q));
        wh = f64x2.add(wh, hi2(q));
      }
      const yl = f64x2.add(lo2(x), f64x2.mul(lo2(e), wl)), yh = f64x2.add(hi2(x), f64x2.mul(hi2(e), wh));
      v128.store(y + ro + o, pack(yl, yh));
    }
    for (; c < C; c++) {
      const w = dyn != 0 ? ld(m, c) + ld(dyn + ro, c) : ld(m, c);
      st(y + ro, c, ld(xx + ro, c) + ld(d + ro, c) * w);
    }
  }
}

/**
 * RWKV-7 keys, per head of N (args aOut, bOut, k, v, iclr, kK, kA, vGate, vFirst, R, C, N):
 * kk = normalize(k ⊙ k_k); a = -kk; b = kk·iclr; k ⊙= 1 + (iclr - 1)·k_a; v += (vFirst - v)·vGate.
 * Scalar f64 in the reference's order.
 */
function v7Keys(a: usize, part: i32, nparts: i32): void {
  const aOut: usize = arg(a, 0), bOut: usize = arg(a, 1), k: usize = arg(a, 2), v: usize = arg(a, 3), iclr: usize = arg(a, 4);
  const kK: usize = arg(a, 5), kA: usize = arg(a, 6), vGate: usize = arg(a, 7), vFirst: usize = arg(a, 8);
  const R = arg(a, 9), C = arg(a, 10), N = arg(a, 11);
  const heads = R * (C / N);
  const lo = splitLo(heads, part, nparts, 1), hi = splitHi(heads, part, nparts, 1);
  for (let g = lo; g < hi; g++) {
    const o = g * N, c0 = o % C;
    let ss: f64 = 0;
    for (let j = 0; j < N; j++) { const q = ld(k, o + j) * ld(kK, c0 + j); ss += q * q; }
    const inv = 1 / Math.max(Math.sqrt(ss), NORMALIZE_EPS);
    for (let j = 0; j < N; j++) {
      const i = o + j, c = c0 + j;
      const ic = ld(iclr, i);
      const kk = ld(k, i) * ld(kK, c) * inv;
      st(k, i, ld(k, i) * (1 + (ic - 1) * ld(kA, c)));
      if (vGate != 0) { const vi = ld(v, i); st(v, i, vi + (ld(vFirst, i) - vi) * ld(vGate, i)); }
      st(aOut, i, -kk);
      st(bOut, i, kk * ic);
    }
  }
}

/** F.normalize's eps (as the reference's). */
const NORMALIZE_EPS: f64 = 1e-12;

/** RWKV-7 bonus per head (args out, r, k, v, g, rK, R, C, N): out = (out + (Σ r k rK)·v)·g, f64. */
function v7Bonus(a: usize, part: i32, nparts: i32): void {
  const out: usize = arg(a, 0), r: usize = arg(a, 1), k: usize = arg(a, 2), v: usize = arg(a, 3), g: usize = arg(a, 4), rK: usize = arg(a, 5);
  const R = arg(a, 6), C = arg(a, 7), N = arg(a, 8);
  const heads = R * (C / N);
  const lo = splitLo(heads, part, nparts, 1), hi = splitHi(heads, part, nparts, 1);
  for (let h = lo; h < hi; h++) {
    const o = h * N, c0 = o % C;
    let dot: f64 = 0;
    for (let j = 0; j < N; j++) dot += ld(r, o + j) * ld(k, o + j) * ld(rK, c0 + j);
    for (let j = 0; j < N; j++) st(out, o + j, (ld(out, o + j) + dot * ld(v, o + j)) * ld(g, o + j));
  }
}

/** DeepEmbed's per-row matrix (args y, x, m, R, I, J): y[r][j] = Σ_i x[r][i]·m[r][i·J + j], f64 in i order. */
function rowMatVec(a: usize, part: i32, nparts: i32): void {
  const y: usize = arg(a, 0), x: usize = arg(a, 1), m: usize = arg(a, 2), R = arg(a, 3), I = arg(a, 4), J = arg(a, 5);
  const lo = splitLo(R, part, nparts, 1), hi = splitHi(R, part, nparts, 1);
  for (let r = lo; r < hi; r++) {
    const mo = r * I * J;
    for (let j = 0; j < J; j++) {
      let acc: f64 = 0;
      for (let i = 0; i < I; i++) acc += ld(x, r * I + i) * ld(m, mo + i * J + j);
      st(y, r * J + j, acc);
    }
  }
}

/**
 * Soft-capped causal attention (args y, q, k, v, n, D, Cv, pos0, cap and scale as f32 bits, work):
 * query t sees keys 0 … pos0+t; s_j = cap·tanh(scale·q·k_j); y[t] = Σ_j e^{s_j - max} v_j / Σ_j e^{s_j - max},
 * all in f64 in the reference's order. Two passes over the keys (the max, then the sums) recompute
 * the dot products instead of storing scores; `work` holds Cv f64 accumulators per query.
 */
function softcapAttention(a: usize, part: i32, nparts: i32): void {
  const y: usize = arg(a, 0), q: usize = arg(a, 1), k: usize = arg(a, 2), v: usize = arg(a, 3);
  const n = arg(a, 4), D = arg(a, 5), Cv = arg(a, 6), pos0 = arg(a, 7);
  const cap = <f64>reinterpret<f32>(arg(a, 8)), scale = <f64>reinterpret<f32>(arg(a, 9)), work: usize = arg(a, 10);
  const lo = splitLo(n, part, nparts, 1), hi = splitHi(n, part, nparts, 1);
  for (let t = lo; t < hi; t++) {
    const keys = pos0 + t + 1, acc = work + (<usize>(t * Cv) << 3);
    let max: f64 = -Infinity;
    for (let j = 0; j < keys; j++) {
      const s = cap * Math.tanh(scale * dot(q, t * D, k, j * D, D));
      if (s > max) max = s;
    }
    for (let c = 0; c < Cv; c++) store<f64>(acc + (<usize>c << 3), 0);
    let sum: f64 = 0;
    for (let j = 0; j < keys; j++) {
      const e = Math.exp(cap * Math.tanh(scale * dot(q, t * D, k, j * D, D)) - max);
      sum += e;
      for (let c = 0; c < Cv; c++) {
        const p = acc + (<usize>c << 3);
        store<f64>(p, load<f64>(p) + e * ld(v, j * Cv + c));
      }
    }
    for (let c = 0; c < Cv; c++) st(y, t * Cv + c, load<f64>(acc + (<usize>c << 3)) / sum);
  }
}

/** Σ_i a[ao + i]·b[bo + i] in f64, in i order. */
function dot(a: usize, ao: i32, b: usize, bo: i32, n: i32): f64 {
  let s: f64 = 0;
  for (let i = 0; i < n; i++) s += ld(a, ao + i) * ld(b, bo + i);
  return s;
}
