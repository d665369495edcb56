/*
 * The WKV steps of RWKV-5.2/6 and RWKV-7 (SPEC §4-§6), written once for the wasm backend: the
 * inference scans (assembly/kernels.ts, a state carried in place) and the training forward and
 * its backward's recomputation (assembly/train.ts, B sequences with state checkpoints) all run
 * these, so the two agree bit for bit on the same inputs.
 *
 * v5/v6, v7: one call is one step of one head: N its size (any; f32x4 over the first N & ~3
 * elements, the rest one by one), S0 the state entering the step and S1 where the next one goes
 * (the same pointer: in place). Vectors are N f32 at the given pointers; d is the multiplicative
 * decay. v4: one call is the whole scan of four adjacent channels (or one, a tail), its state
 * carried in and out through wkv4State/wkv4A/wkv4B/wkv4P.
 */

import { exp4, fma4, hsum } from "./simd";

/* @inline */ function at(p: usize, i: i32): usize {
  return p + (<usize>i << 2);
}

/**
 * RWKV-7, S[i=value][j=key]:  sa = S a;  S <- S diag(d) + sa bᵀ + v kᵀ;  y = S r.
 * Writes y (N) and, when sa != 0, sa (N, for the backward). Two value rows per pass share the
 * loads of a, d, b, k and r; each row's arithmetic (and so its rounding) is that of a row alone.
 */
export function wkv7Step(S0: usize, S1: usize, N: i32, r: usize, d: usize, k: usize, v: usize, a: usize, b: usize, y: usize, sa: usize): void {
  const N4 = N & ~3;
  const rowBytes = <usize>N << 2;
  let i = 0;
  for (; i + 2 <= N; i += 2) {
    const p0 = S0 + <usize>i * rowBytes, p1 = p0 + rowBytes, q0 = S1 + <usize>i * rowBytes, q1 = q0 + rowBytes;
    let sa0 = f32x4.splat(0), sa1 = f32x4.splat(0);
    let j = 0;
    for (; j < N4; j += 4) {
      const av = v128.load(at(a, j));
      sa0 = fma4(sa0, v128.load(at(p0, j)), av);
      sa1 = fma4(sa1, v128.load(at(p1, j)), av);
    }
    let s0 = hsum(sa0), s1 = hsum(sa1);
    for (; j < N; j++) {
      const aj = load<f32>(at(a, j));
      s0 += load<f32>(at(p0, j)) * aj;
      s1 += load<f32>(at(p1, j)) * aj;
    }
    if (sa != 0) { store<f32>(at(sa, i), s0); store<f32>(at(sa, i), s1, 4); }
    const v0 = load<f32>(at(v, i)), v1 = load<f32>(at(v, i), 4);
    const sv0 = f32x4.splat(s0), sv1 = f32x4.splat(s1), vv0 = f32x4.splat(v0), vv1 = f32x4.splat(v1);
    let y0 = f32x4.splat(0), y1 = f32x4.splat(0);
    j = 0;
    for (; j < N4; j += 4) {
      const dv = v128.load(at(d, j)), bv = v128.load(at(b, j)), kv = v128.load(at(k, j)), rv = v128.load(at(r, j));
      const n0 = fma4(fma4(f32x4.mul(v128.load(at(p0, j)), dv), sv0, bv), vv0, kv);
      const n1 = fma4(fma4(f32x4.mul(v128.load(at(p1, j)), dv), sv1, bv), vv1, kv);
      v128.store(at(q0, j), n0);
      v128.store(at(q1, j), n1);
      y0 = fma4(y0, n0, rv);
      y1 = fma4(y1, n1, rv);
    }
    let e0 = hsum(y0), e1 = hsum(y1);
    for (; j < N; j++) {
      const dj = load<f32>(at(d, j)), bj = load<f32>(at(b, j)), kj = load<f32>(at(k, j)), rj = load<f32>(at(r, j));
      const n0 = load<f32>(at(p0, j)) * dj + s0 * bj + v0 * kj;
      const n1 = load<f32>(at(p1, j)) * dj + s1 * bj + v1 * kj;
      store<f32>(at(q0, j), n0);
      store<f32>(at(q1, j), n1);
      e0 += n0 * rj;
      e1 += n1 * rj;
    }
    store<f32>(at(y, i), e0);
    store<f32>(at(y, i), e1, 4);
  }
  if (i < N) wkv7Row(S0 + <usize>i * rowBytes, S1 + <usize>i * rowBytes, N, r, d, k, load<f32>(at(v, i)), a, b, at(y, i), sa == 0 ? 0 : at(sa, i));
}

/** One value row of wkv7Step (the odd last row when N is odd). */
function wkv7Row(p: usize, q: usize, N: i32, r: usize, d: usize, k: usize, vi: f32, a: usize, b: usize, yo: usize, sao: usize): void {
  const N4 = N & ~3;
  let sa4 = f32x4.splat(0);
  let j = 0;
  for (; j < N4; j += 4) sa4 = fma4(sa4, v128.load(at(p, j)), v128.load(at(a, j)));
  let s = hsum(sa4);
  for (; j < N; j++) s += load<f32>(at(p, j)) * load<f32>(at(a, j));
  if (sao != 0) store<f32>(sao, s);
  const sv = f32x4.splat(s), vv = f32x4.splat(vi);
  let y4 = f32x4.splat(0);
  j = 0;
  for (; j < N4; j += 4) {
    const n = fma4(fma4(f32x4.mul(v128.load(at(p, j)), v128.load(at(d, j))), sv, v128.load(at(b, j))), vv, v128.load(at(k, j)));
    v128.store(at(q, j), n);
    y4 = fma4(y4, n, v128.load(at(r, j)));
  }
  let yi = hsum(y4);
  for (; j < N; j++) {
    const n = load<f32>(at(p, j)) * load<f32>(at(d, j)) + s * load<f32>(at(b, j)) + vi * load<f32>(at(k, j));
    store<f32>(at(q, j), n);
    yi += n * load<f32>(at(r, j));
  }
  store<f32>(yo, yi);
}

/** Σ_j a[j] b[j] c[j]. */
export function dot3(a: usize, b: usize, c: usize, N: i32): f32 {
  const N4 = N & ~3;
  let s4 = f32x4.splat(0);
  let j = 0;
  for (; j < N4; j += 4) s4 = fma4(s4, f32x4.mul(v128.load(at(a, j)), v128.load(at(b, j))), v128.load(at(c, j)));
  let s = hsum(s4);
  for (; j < N; j++) s += load<f32>(at(a, j)) * load<f32>(at(b, j)) * load<f32>(at(c, j));
  return s;
}

/** The next state element k[j]·v[i] + d[j]·S[j,i]: one definition, so every caller's states agree. */
/* @inline */ function v5Next(s: v128, kj: v128, vi: v128, dj: v128): v128 {
  return fma4(f32x4.mul(kj, vi), dj, s);
}

/**
 * RWKV-5.2/6, S[j=key][i=value]:  S[j,i] <- k[j] v[i] + d[j] S[j,i];  with acc != 0 also
 * acc (N) = Σ_j r[j] S0[j,:], from which the caller makes y = acc + v·Σ_j r[j] u[j] k[j] (wkv5Out).
 */
export function wkv5Step(S0: usize, S1: usize, N: i32, r: usize, k: usize, v: usize, d: usize, acc: usize): void {
  const N4 = N & ~3;
  const rowBytes = <usize>N << 2;
  if (acc != 0) memory.fill(acc, 0, rowBytes);
  for (let j = 0; j < N; j++) {
    const p = S0 + <usize>j * rowBytes, q = S1 + <usize>j * rowBytes;
    const kjs = load<f32>(at(k, j)), djs = load<f32>(at(d, j));
    const kj = f32x4.splat(kjs), dj = f32x4.splat(djs);
    let i = 0;
    if (acc != 0) {
      const rjs = load<f32>(at(r, j)), rj = f32x4.splat(rjs);
      for (; i < N4; i += 4) {
        const s = v128.load(at(p, i));
        v128.store(at(acc, i), fma4(v128.load(at(acc, i)), rj, s));
        v128.store(at(q, i), v5Next(s, kj, v128.load(at(v, i)), dj));
      }
      for (; i < N; i++) {
        const s = load<f32>(at(p, i));
        store<f32>(at(acc, i), load<f32>(at(acc, i)) + rjs * s);
        store<f32>(at(q, i), kjs * load<f32>(at(v, i)) + djs * s);
      }
    } else {
      for (; i < N4; i += 4) v128.store(at(q, i), v5Next(v128.load(at(p, i)), kj, v128.load(at(v, i)), dj));
      for (; i < N; i++) store<f32>(at(q, i), kjs * load<f32>(at(v, i)) + djs * load<f32>(at(p, i)));
    }
  }
}

/** y (N) = acc + v·ruk in place on y = acc, ruk = Σ_j r[j] u[j] k[j] (dot3): the output of a wkv5Step. */
export function wkv5Out(y: usize, v: usize, ruk: f32, N: i32): void {
  const N4 = N & ~3;
  const rv = f32x4.splat(ruk);
  let i = 0;
  for (; i < N4; i += 4) v128.store(at(y, i), fma4(v128.load(at(y, i)), v128.load(at(v, i)), rv));
  for (; i < N; i++) store<f32>(at(y, i), load<f32>(at(y, i)) + load<f32>(at(v, i)) * ruk);
}

// RWKV-4 (SPEC §3, the CUDA kernel's running-maximum form), f32x4 over four adjacent channels,
// with w = -exp(time_decay), u = time_first. The carried state [aa, bb, pp] of the lanes goes in
// and out through these globals (one set per instance, so per thread).
let wkv4A: v128 = f32x4.splat(0);
let wkv4B: v128 = f32x4.splat(0);
let wkv4P: v128 = f32x4.splat(0);

/** Sets the state the next wkv4Scan starts from. */
export function wkv4State(aa: v128, bb: v128, pp: v128): void {
  wkv4A = aa; wkv4B = bb; wkv4P = pp;
}
/** The state the latest wkv4Scan ended in. */
export function wkv4Aa(): v128 { return wkv4A; }
export function wkv4Bb(): v128 { return wkv4B; }
export function wkv4Pp(): v128 { return wkv4P; }

/**
 * T steps at k, v, y (the lanes' first row) with rows `C` f32 apart:
 *   y_t = (e^{pp-p} aa + e^{u+k-p} v) / (e^{pp-p} bb + e^{u+k-p}),  p = max(pp, u + k);
 *   then aa, bb advance by the decay w and the key, keeping the running maximum pp.
 * `one`: only lane 0 is a channel (a tail channel): its values are loaded and stored alone,
 * computed by the same instructions as a lane of four.
 */
export function wkv4Scan(T: i32, C: i32, w: v128, u: v128, k: usize, v: usize, y: usize, one: bool): void {
  let aa = wkv4A, bb = wkv4B, pp = wkv4P;
  const row = <usize>C << 2;
  for (let t = 0; t < T; t++) {
    const o = <usize>t * row;
    const kk = one ? f32x4.splat(load<f32>(k + o)) : v128.load(k + o);
    const vv = one ? f32x4.splat(load<f32>(v + o)) : v128.load(v + o);
    let ww = f32x4.add(u, kk);
    let p = f32x4.max(pp, ww);
    let e1 = exp4(f32x4.sub(pp, p)), e2 = exp4(f32x4.sub(ww, p));
    const yy = f32x4.div(fma4(f32x4.mul(e1, aa), e2, vv), fma4(e2, e1, bb));
    if (one) store<f32>(y + o, f32x4.extract_lane(yy, 0)); else v128.store(y + o, yy);
    ww = f32x4.add(w, pp);
    p = f32x4.max(ww, kk);
    e1 = exp4(f32x4.sub(ww, p));
    e2 = exp4(f32x4.sub(kk, p));
    aa = fma4(f32x4.mul(e1, aa), e2, vv);
    bb = fma4(e2, e1, bb);
    pp = p;
  }
  wkv4A = aa; wkv4B = bb; wkv4P = pp;
}
