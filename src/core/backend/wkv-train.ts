import { wkv4Channel, wkv5Step, wkv7Step, WkvStep } from "./wkv-scan.js";
import type { Buf } from "./buffers.js";

/*
 * The WKV recurrences of every RWKV version in GPT mode over B sequences of T steps, forward and
 * backward (SPEC §7). Inputs are (B·T, C) row-major with C = H·N (channel c = h·N + n), every
 * sequence starting from a zero state. States and sums are f64 whatever the storage type.
 *
 * v5/v6/v7 backward passes need the state before every step. Rather than keeping all B·H·T states
 * (N² each), the forward stores the state every WKV_CHUNK steps ("state checkpoints", as the v7
 * CUDA kernel) and the backward recomputes one chunk's states at a time from its checkpoint —
 * exactly, by repeating the forward's arithmetic, so T need not be a multiple of the chunk.
 */

/** Steps between stored states (the official v7 kernel's CHUNK_LEN). */
export const WKV_CHUNK = 16;
/** The v4 kernel's initial running maximum: e^{pp - p} underflows to 0 at the first step. */
const V4_MIN_EXPONENT = -1e38;

export function wkvChunks(T: number): number {
  return Math.ceil(T / WKV_CHUNK);
}

/**
 * The backward's walk over one (sequence, head) of a v5/v6/v7 scan: chunks from the last to the
 * first; each chunk's states S_{t0-1} … S_{t1-1} recomputed into `states` ((WKV_CHUNK+1)·NN) from
 * its checkpoint (ckpt at chunk index `first` + ch) by `recompute(t, t0)` for t = t0 … t1-1, exactly
 * as the forward computed them; then `back(t, t0)` for t = t1-1 … t0.
 */
function backwardChunks(T: number, NN: number, ckpt: Float64Array, first: number, states: Float64Array,
  recompute: (t: number, t0: number) => void, back: (t: number, t0: number) => void): void {
  for (let ch = wkvChunks(T) - 1; ch >= 0; ch--) {
    const t0 = ch * WKV_CHUNK, t1 = Math.min(T, t0 + WKV_CHUNK);
    states.set(ckpt.subarray((first + ch) * NN, (first + ch + 1) * NN));
    for (let t = t0; t < t1; t++) recompute(t, t0);
    for (let t = t1 - 1; t >= t0; t--) back(t, t0);
  }
}

// ---------------------------------------------------------------- v4

/**
 * RWKV-4 (SPEC §3, the CUDA kernel's running-max form), per channel with w = -exp(time_decay),
 * u = time_first: wkv_t = (Σ_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (same without v).
 * k, v, y (B·T, C); timeDecay, timeFirst (C).
 */
export function wkv4Forward(B: number, T: number, C: number, timeDecay: Buf, timeFirst: Buf, k: Buf, v: Buf, y: Buf): void {
  const s = new Float64Array(3); // [aa, bb, pp] of one channel
  for (let b = 0; b < B; b++) {
    for (let c = 0; c < C; c++) {
      s[0] = 0; s[1] = 0; s[2] = V4_MIN_EXPONENT;
      wkv4Channel(-Math.exp(timeDecay[c]), timeFirst[c], k, v, y, b * T * C + c, C, T, s);
    }
  }
}

/**
 * SPEC §7.1 in the CUDA kernel's scaled form: a forward sweep stores q_t = gy_t/D_t and
 * r_t = u + k_t - p_t and accumulates g_w, g_u; a reverse sweep keeps Σ_{s>t} q_s e^{(s-t-1)w} and
 * -Σ q_s e^{…} y_s with their own running maximum. `y` is the forward's output.
 * Accumulates gTimeDecay, gTimeFirst (C) summed over the batch, gk, gv (B·T, C).
 */
export function wkv4Backward(B: number, T: number, C: number, timeDecay: Buf, timeFirst: Buf, k: Buf, v: Buf, y: Buf, gy: Buf,
  gTimeDecay: Buf | null, gTimeFirst: Buf | null, gk: Buf | null, gv: Buf | null): void {
  const q = new Float64Array(T), r = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let c = 0; c < C; c++) {
      const w = -Math.exp(timeDecay[c]), u = timeFirst[c];
      let gw = 0, gu = 0, aa = 0, bb = 0, ga = 0, gb = 0, pp = V4_MIN_EXPONENT;
      for (let t = 0; t < T; t++) {
        const n = (b * T + t) * C + c, kk = k[n], vv = v[n], yy = y[n];
        let ww = u + kk;
        let p = Math.max(pp, ww);
        let e1 = Math.exp(pp - p), e2 = Math.exp(ww - p);
        const qq = gy[n] / (e1 * bb + e2);
        gw += (ga - gb * yy) * e1 * qq;
        gu += (vv - yy) * e2 * qq;
        q[t] = qq;
        r[t] = ww - p;
        ww = w + pp;
        p = Math.max(ww, kk);
        e1 = Math.exp(ww - p);
        e2 = Math.exp(kk - p);
        ga = e1 * (aa + ga);
        gb = e1 * (bb + gb);
        aa = e1 * aa + e2 * vv;
        bb = e1 * bb + e2;
        pp = p;
      }
      // Chain rule through w = -exp(time_decay): dw/d(time_decay) = w.
      if (gTimeDecay) gTimeDecay[c] += gw * w;
      if (gTimeFirst) gTimeFirst[c] += gu;
      aa = 0; bb = 0; pp = V4_MIN_EXPONENT;
      for (let t = T - 1; t >= 0; t--) {
        const n = (b * T + t) * C + c, kk = k[n], vv = v[n], yy = y[n], qq = q[t], rr = r[t];
        let e1 = qq * Math.exp(rr);
        let e2 = Math.exp(kk + pp);
        if (gk) gk[n] += e1 * (vv - yy) + e2 * (aa * vv + bb);
        if (gv) gv[n] += e1 + e2 * aa;
        const ww = w + pp, www = rr - u - kk;
        const p = Math.max(ww, www);
        e1 = Math.exp(ww - p);
        e2 = qq * Math.exp(www - p);
        aa = e1 * aa + e2;
        bb = e1 * bb - yy * e2;
        pp = p;
      }
    }
  }
}

// ---------------------------------------------------------------- v5.2 and v6

/**
 * RWKV-5.2 / 6 (SPEC §4, §5), per head with S[j=key][i=value]:
 *   y[i] = Σ_j r[j] (u[j] k[j] v[i] + S[j,i]);   S[j,i] <- k[j] v[i] + d[j] S[j,i],  d = exp(-exp(wraw))
 * r, k, v, y (B·T, C); u (C); wraw (C) constant (v5.2 time_decay) or (B·T, C) per token (v6).
 * `ckpt` (B·H·chunks·N·N) receives the state entering every chunk, for the backward.
 */
export function wkv5Forward(B: number, T: number, H: number, N: number, r: Buf, k: Buf, v: Buf, wraw: Buf, u: Buf,
  y: Buf, ckpt: Float64Array | null): void {
  const C = H * N, perToken = wraw.length !== C, chunks = wkvChunks(T);
  const S = new Float64Array(N * N), st = new WkvStep(N), yv = new Float64Array(N);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      S.fill(0);
      for (let t = 0; t < T; t++) {
        if (ckpt && t % WKV_CHUNK === 0) ckpt.set(S, (((b * H + h) * chunks) + t / WKV_CHUNK) * N * N);
        const o = (b * T + t) * C + h * N;
        st.rawDecay(N, wraw, perToken ? o : h * N);
        st.load5(N, o, r, k, v, u, h * N);
        wkv5Step(S, 0, S, 0, N, st, yv);
        for (let i = 0; i < N; i++) y[o + i] = yv[i];
      }
    }
  }
}

/**
 * SPEC §7.2 with Z_t = dL/dS_t run backwards (Z_{t-1} = r_t gy_tᵀ + diag(d_t) Z_t):
 *   g_r[j] = Σ_i gy[i](u[j]k[j]v[i] + S_{t-1}[j,i]);   g_k[j] = Σ_i v[i](u[j]r[j]gy[i] + Z_t[j,i])
 *   g_v[i] = Σ_j k[j](u[j]r[j]gy[i] + Z_t[j,i]);         g_u[j] = Σ_t r[j]k[j] Σ_i v[i]gy[i]
 *   g_wraw[j] = -exp(wraw[j]) d[j] Σ_i S_{t-1}[j,i] Z_t[j,i]
 * gw has wraw's shape: (C) summed over batch and time (v5.2), or (B·T, C) (v6); gu (C).
 */
export function wkv5Backward(B: number, T: number, H: number, N: number, r: Buf, k: Buf, v: Buf, wraw: Buf, u: Buf,
  ckpt: Float64Array, gy: Buf, gr: Buf | null, gk: Buf | null, gv: Buf | null, gw: Buf | null, gu: Buf | null): void {
  const C = H * N, perToken = wraw.length !== C, chunks = wkvChunks(T), NN = N * N;
  const states = new Float64Array((WKV_CHUNK + 1) * NN); // S_{t0-1}, S_{t0}, …, S_{t1-1}
  const Z = new Float64Array(NN), st = new WkvStep(N), yScratch = new Float64Array(N);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      Z.fill(0);
      backwardChunks(T, NN, ckpt, (b * H + h) * chunks, states, (t, t0) => {
        const o = (b * T + t) * C + h * N;
        st.rawDecay(N, wraw, perToken ? o : h * N);
        st.load5(N, o, r, k, v, u, h * N);
        wkv5Step(states, (t - t0) * NN, states, (t - t0 + 1) * NN, N, st, yScratch);
      }, (t, t0) => {
        const o = (b * T + t) * C + h * N, wo = perToken ? o : h * N, sp = (t - t0) * NN;
        st.rawDecay(N, wraw, wo);
        const { d, ew } = st;
        let gyv = 0, kur = 0;
        for (let i = 0; i < N; i++) gyv += gy[o + i] * v[o + i];
        for (let j = 0; j < N; j++) kur += k[o + j] * u[h * N + j] * r[o + j];
        for (let j = 0; j < N; j++) {
          const row = j * N, uj = u[h * N + j], rj = r[o + j], kj = k[o + j];
          let sGyS = 0, sVZ = 0, sSZ = 0;
          for (let i = 0; i < N; i++) {
            sGyS += gy[o + i] * states[sp + row + i];
            sVZ += v[o + i] * Z[row + i];
            sSZ += states[sp + row + i] * Z[row + i];
          }
          if (gr) gr[o + j] += uj * kj * gyv + sGyS;
          if (gk) gk[o + j] += uj * rj * gyv + sVZ;
          if (gu) gu[h * N + j] += rj * kj * gyv;
          if (gw) gw[wo + j] += -ew[j] * d[j] * sSZ;
        }
        if (gv) {
          for (let i = 0; i < N; i++) {
            let s = 0;
            for (let j = 0; j < N; j++) s += k[o + j] * Z[j * N + i];
            gv[o + i] += gy[o + i] * kur + s;
          }
        }
        for (let j = 0; j < N; j++) { // Z_t -> Z_{t-1}
          const row = j * N, rj = r[o + j], dj = d[j];
          for (let i = 0; i < N; i++) Z[row + i] = rj * gy[o + i] + dj * Z[row + i];
        }
      });
    }
  }
}

// ---------------------------------------------------------------- v7

/**
 * RWKV-7 (SPEC §6, §7.3), per head with S[i=value][j=key]:
 *   sa = S a;  S <- S diag(d) + sa bᵀ + v kᵀ;  y = S r,   d = exp(-exp(wraw))
 * All inputs (B·T, C). `ckpt` (B·H·chunks·N·N) receives the state entering every chunk. Every
 * sequence starts from `s0` (H·N·N, a trained time_state) when given, else from zeros.
 */
export function wkv7Forward(B: number, T: number, H: number, N: number, r: Buf, wraw: Buf, k: Buf, v: Buf, a: Buf, bb: Buf,
  y: Buf, ckpt: Float64Array | null, s0: Buf | null = null): void {
  const C = H * N, chunks = wkvChunks(T);
  const S = new Float64Array(N * N), st = new WkvStep(N), yv = new Float64Array(N), sa = new Float64Array(N);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      if (s0) S.set(s0.subarray(h * N * N, (h + 1) * N * N));
      else S.fill(0);
      for (let t = 0; t < T; t++) {
        if (ckpt && t % WKV_CHUNK === 0) ckpt.set(S, (((b * H + h) * chunks) + t / WKV_CHUNK) * N * N);
        const o = (b * T + t) * C + h * N;
        st.rawDecay(N, wraw, o);
        st.load7(N, o, r, k, v, a, bb);
        wkv7Step(S, 0, S, 0, N, st, yv, sa);
        for (let i = 0; i < N; i++) y[o + i] = yv[i];
      }
    }
  }
}

/**
 * SPEC §7.3, t = T-1 … 0 with dS = dL/dS_t:
 *   dS += gy rᵀ;  g_r = S_tᵀ gy;  g_k = dSᵀ v;  g_v = dS k;  g_b = dSᵀ sa;  e = dS b;  g_a = S_{t-1}ᵀ e
 *   g_wraw[j] = -exp(wraw[j]) d[j] Σ_i dS[i,j] S_{t-1}[i,j];  dS <- dS diag(d) + e aᵀ
 * The chunk's states S_{t0-1} … S_{t1-1} are recomputed from its checkpoint, exactly as the
 * forward computed them.
 */
export function wkv7Backward(B: number, T: number, H: number, N: number, r: Buf, wraw: Buf, k: Buf, v: Buf, a: Buf, bb: Buf,
  ckpt: Float64Array, gy: Buf, gr: Buf | null, gw: Buf | null, gk: Buf | null, gv: Buf | null, ga: Buf | null, gb: Buf | null,
  gs0: Buf | null = null): void {
  const C = H * N, chunks = wkvChunks(T), NN = N * N;
  const states = new Float64Array((WKV_CHUNK + 1) * NN); // S_{t0-1}, S_{t0}, …, S_{t1-1}
  const sas = new Float64Array(WKV_CHUNK * N), yScratch = new Float64Array(N);
  const dS = new Float64Array(NN), e = new Float64Array(N), g = new Float64Array(N), gvAcc = new Float64Array(N);
  const accR = new Float64Array(N), accK = new Float64Array(N), accB = new Float64Array(N), accA = new Float64Array(N), accW = new Float64Array(N);
  const st = new WkvStep(N);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      dS.fill(0);
      backwardChunks(T, NN, ckpt, (b * H + h) * chunks, states, (t, t0) => {
        const o = (b * T + t) * C + h * N;
        st.rawDecay(N, wraw, o);
        st.load7(N, o, r, k, v, a, bb);
        wkv7Step(states, (t - t0) * NN, states, (t - t0 + 1) * NN, N, st, yScratch, sas.subarray((t - t0) * N, (t - t0 + 1) * N));
      }, (t, t0) => {
        const o = (b * T + t) * C + h * N, sp = (t - t0) * NN, sn = sp + NN, sa = (t - t0) * N;
        st.rawDecay(N, wraw, o);
        st.load7(N, o, r, k, v, a, bb);
        const { r: rv, d, ew, k: kv, v: vv, a: av, b: bv } = st;
        for (let i = 0; i < N; i++) g[i] = gy[o + i];
        accR.fill(0); accK.fill(0); accB.fill(0); accA.fill(0); accW.fill(0);
        // Pass 1, two rows at a time: dS += gy rᵀ, then the column sums and the row sums of dS.
        let i = 0;
        for (; i + 1 < N; i += 2) {
          const q0 = i * N, q1 = q0 + N, g0 = g[i], g1 = g[i + 1], v0 = vv[i], v1 = vv[i + 1], a0 = sas[sa + i], a1 = sas[sa + i + 1];
          let gv0 = 0, gv1 = 0, e0 = 0, e1 = 0;
          for (let j = 0; j < N; j++) {
            const rj = rv[j], x0 = dS[q0 + j] + g0 * rj, x1 = dS[q1 + j] + g1 * rj;
            dS[q0 + j] = x0; dS[q1 + j] = x1;
            accR[j] += states[sn + q0 + j] * g0 + states[sn + q1 + j] * g1;
            accK[j] += x0 * v0 + x1 * v1;
            accB[j] += x0 * a0 + x1 * a1;
            accW[j] += x0 * states[sp + q0 + j] + x1 * states[sp + q1 + j];
            const kj = kv[j], bj = bv[j];
            gv0 += x0 * kj; gv1 += x1 * kj;
            e0 += x0 * bj; e1 += x1 * bj;
          }
          gvAcc[i] = gv0; gvAcc[i + 1] = gv1; e[i] = e0; e[i + 1] = e1;
        }
        for (; i < N; i++) {
          const q0 = i * N, g0 = g[i], v0 = vv[i], a0 = sas[sa + i];
          let gv0 = 0, e0 = 0;
          for (let j = 0; j < N; j++) {
            const x0 = dS[q0 + j] + g0 * rv[j];
            dS[q0 + j] = x0;
            accR[j] += states[sn + q0 + j] * g0; accK[j] += x0 * v0; accB[j] += x0 * a0; accW[j] += x0 * states[sp + q0 + j];
            gv0 += x0 * kv[j]; e0 += x0 * bv[j];
          }
          gvAcc[i] = gv0; e[i] = e0;
        }
        // Pass 2: g_a = S_{t-1}ᵀ e and dS -> dL/dS_{t-1}.
        i = 0;
        for (; i + 1 < N; i += 2) {
          const q0 = i * N, q1 = q0 + N, e0 = e[i], e1 = e[i + 1];
          for (let j = 0; j < N; j++) {
            const dj = d[j], aj = av[j];
            accA[j] += states[sp + q0 + j] * e0 + states[sp + q1 + j] * e1;
            dS[q0 + j] = dS[q0 + j] * dj + e0 * aj;
            dS[q1 + j] = dS[q1 + j] * dj + e1 * aj;
          }
        }
        for (; i < N; i++) {
          const q0 = i * N, e0 = e[i];
          for (let j = 0; j < N; j++) { accA[j] += states[sp + q0 + j] * e0; dS[q0 + j] = dS[q0 + j] * d[j] + e0 * av[j]; }
        }
        for (let j = 0; j < N; j++) {
          if (gr) gr[o + j] += accR[j];
          if (gk) gk[o + j] += accK[j];
          if (gb) gb[o + j] += accB[j];
          if (ga) ga[o + j] += accA[j];
          if (gw) gw[o + j] += -ew[j] * d[j] * accW[j];
          if (gv) gv[o + j] += gvAcc[j];
        }
      });
      // dS is now dL/d(initial state) of this sequence and head.
      if (gs0) for (let q = 0; q < NN; q++) gs0[h * NN + q] += dS[q];
    }
  }
}
