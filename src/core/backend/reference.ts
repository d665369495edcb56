import { type Activation, type Backend, isTrainingOp, type Matrix, type Tensor, type TensorKernels, type Wkv4State } from "./backend.js";
import { referenceTrainKernels } from "./train-kernels.js";
import { normalizeGroup } from "./train-ops.js";
import { SlotArena } from "./slot-arena.js";
import { decodeWeightRow, requireHostData } from "./weight-rows.js";
import { wkv4Channel, wkv5Step, wkv7Step, WkvStep } from "./wkv-scan.js";

/*
 * Plain TypeScript kernels: the specification every other backend is tested against. Arithmetic
 * is JavaScript's (f64), each result rounded to f32 when stored. The Float32Array methods of
 * Backend wrap their arrays as tensors and run the same tensor kernels, so each formula is
 * written once.
 */

/** The activations' formulas (backend.ts). */
const ACTIVATIONS: Readonly<Record<Activation, (z: number) => number>> = {
  sigmoid: (z) => 1 / (1 + Math.exp(-z)),
  tanh: Math.tanh,
  silu: (z) => z / (1 + Math.exp(-z)),
  relu2: (z) => (z > 0 ? z * z : 0),
  exp: Math.exp,
};

/** The reference's tensor: a Float32Array of at least rows·cols elements (arena slots may be larger). */
export class HostTensor implements Tensor {
  readonly dtype = "f32";
  constructor(public rows: number, public cols: number, public data: Float32Array) {}
}

/** The array behind a tensor of this backend. */
function d(t: Tensor): Float32Array {
  if (!(t instanceof HostTensor)) throw new Error("a tensor of another backend was passed to the reference kernels");
  return t.data;
}

/** Slots of host tensors (SlotArena); the garbage collector frees replaced ones. */
class HostArena extends SlotArena<HostTensor> {
  protected make(rows: number, cols: number): HostTensor { return new HostTensor(rows, cols, new Float32Array(rows * cols)); }
  protected holds(t: HostTensor, n: number): boolean { return t.data.length >= n; }
}

/** A reusable row buffer for dequantizing weight rows. */
let rowBuffer = new Float32Array(0);

/** [aa, bb, pp] of the channel wkv4 is scanning (reused: the decode path allocates nothing). */
const wkv4Carry = new Float64Array(3);

/** The WKV steps' f64 scratch for head size N (kept: the decode path allocates nothing). */
let wkvScratchOf = { N: -1, st: new WkvStep(0), y: new Float64Array(0), sa: new Float64Array(0) };
function wkvScratch(N: number): typeof wkvScratchOf {
  if (wkvScratchOf.N !== N) wkvScratchOf = { N, st: new WkvStep(N), y: new Float64Array(N), sa: new Float64Array(N) };
  return wkvScratchOf;
}

/** State arrays wrapped once: the same tensor object every call. */
const bound = new WeakMap<Float32Array, HostTensor>();

export const referenceTensors: TensorKernels = {
  arena: () => new HostArena(),
  constant: (data, rows = 1) => new HostTensor(rows, data.length / rows, data),
  bindState(a) {
    let t = bound.get(a);
    if (!t) bound.set(a, (t = new HostTensor(1, a.length, a)));
    return t;
  },
  unbindState: () => undefined, // kernels updated the array itself
  write(t, dst, src, from, n) {
    const y = d(t);
    for (let i = 0; i < n; i++) y[dst + i] = src[from + i];
  },
  read(t, rows = t.rows, out, at = 0) {
    const n = rows * t.cols, x = d(t);
    if (!out) return x.slice(0, n);
    for (let i = 0; i < n; i++) out[at + i] = x[i];
    return out;
  },
  readAsync(t, rows, out, at) {
    return Promise.resolve(referenceTensors.read(t, rows, out, at));
  },
  copyRows(dst, d0, src, s0, n) {
    const C = src.cols;
    const y = d(dst), x = d(src);
    for (let i = 0; i < n * C; i++) y[d0 * C + i] = x[s0 * C + i];
  },
  columns(dst, src, c0) {
    const y = d(dst), x = d(src), n = dst.cols, W = src.cols;
    for (let t = 0; t < src.rows; t++) for (let c = 0; c < n; c++) y[t * n + c] = x[t * W + c0 + c];
  },

  matmul(yt, xt, W) {
    requireHostData(W); // the f32 path reads W.data directly
    const { rows: O, cols: I } = W;
    const T = xt.rows, x = d(xt), y = d(yt);
    if (W.type !== "f32" && rowBuffer.length < I) rowBuffer = new Float32Array(I);
    for (let o = 0; o < O; o++) {
      const w = W.type === "f32" ? (W.data as Float32Array) : decodeWeightRow(W, o, rowBuffer);
      const wo = W.type === "f32" ? o * I : 0;
      for (let t = 0; t < T; t++) {
        const xo = t * I;
        let s = 0;
        for (let i = 0; i < I; i++) s += w[wo + i] * x[xo + i];
        y[t * O + o] = s;
      }
    }
  },

  activate(f, xt, scale = 1) {
    const fn = ACTIVATIONS[f], x = d(xt), n = xt.rows * xt.cols;
    for (let i = 0; i < n; i++) x[i] = fn(scale * x[i]);
  },

  layerNorm(yt, xt, w, b, eps) {
    const C = xt.cols, x = d(xt), y = d(yt);
    for (let t = 0; t < xt.rows; t++) normalizeInto(x, y, t * C, C, d(w), d(b), 0, eps);
  },

  groupNorm(yt, xt, H, w, b, eps) {
    const N = xt.cols / H, x = d(xt), y = d(yt);
    for (let t = 0; t < xt.rows; t++) {
      for (let h = 0; h < H; h++) normalizeInto(x, y, (t * H + h) * N, N, d(w), d(b), h * N, eps);
    }
  },

  add(xt, dt) {
    const x = d(xt), y = d(dt), n = xt.rows * xt.cols;
    for (let i = 0; i < n; i++) x[i] += y[i];
  },
  mul(xt, dt) {
    const x = d(xt), y = d(dt), n = xt.rows * xt.cols;
    for (let i = 0; i < n; i++) x[i] *= y[i];
  },
  addRow(xt, bt) {
    const x = d(xt), b = d(bt), C = xt.cols;
    for (let n = 0; n < xt.rows * C; n += C) for (let c = 0; c < C; c++) x[n + c] += b[c];
  },
  sub(yt, at, bt) {
    const y = d(yt), a = d(at), b = d(bt), n = at.rows * at.cols;
    for (let i = 0; i < n; i++) y[i] = a[i] - b[i];
  },

  shift(sxt, xxt, prevt, row0, T) {
    const C = xxt.cols, sx = d(sxt), xx = d(xxt), prev = d(prevt), o = row0 * C;
    for (let c = 0; c < C; c++) sx[o + c] = prev[c];
    for (let i = C; i < T * C; i++) sx[o + i] = xx[o + i - C];
    for (let c = 0; c < C; c++) prev[c] = xx[o + (T - 1) * C + c];
  },
  lerp(outs, xxt, sxt, ms) {
    const xx = d(xxt), sx = d(sxt), C = xxt.cols, n = xxt.rows * C;
    outs.forEach((ot, f) => {
      const out = d(ot), m = d(ms[f]);
      for (let t = 0; t < n; t += C) {
        for (let c = 0, i = t; c < C; c++, i++) {
          const x = xx[i];
          out[i] = x + (sx[i] - x) * m[c];
        }
      }
    });
  },
  mix(outs, xxt, sxt, ms) {
    const xx = d(xxt), sx = d(sxt), C = xxt.cols, n = xxt.rows * C;
    outs.forEach((ot, f) => {
      const out = d(ot), m = d(ms[f]);
      for (let t = 0; t < n; t += C) for (let c = 0, i = t; c < C; c++, i++) out[i] = xx[i] * m[c] + sx[i] * (1 - m[c]);
    });
  },
  lerpBy(yt, xxt, dt, mt, dynt) {
    const y = d(yt), xx = d(xxt), dd = d(dt), m = d(mt), dyn = dynt ? d(dynt) : null, C = xxt.cols, n = xxt.rows * C;
    for (let t = 0; t < n; t += C) {
      for (let c = 0, i = t; c < C; c++, i++) y[i] = xx[i] + dd[i] * (dyn ? m[c] + dyn[i] : m[c]);
    }
  },

  v7Keys(aT, bT, kT, vT, iclrT, kKT, kAT, vGateT, vFirstT, N) {
    const aOut = d(aT), bOut = d(bT), k = d(kT), v = d(vT), iclr = d(iclrT), kK = d(kKT), kA = d(kAT);
    const vGate = vGateT ? d(vGateT) : null, vf = vFirstT ? d(vFirstT) : null;
    const C = kT.cols, n = kT.rows * C;
    for (let o = 0; o < n; o += N) {
      const c0 = o % C;
      let ss = 0;
      for (let j = 0; j < N; j++) { const q = k[o + j] * kK[c0 + j]; ss += q * q; }
      const inv = 1 / Math.max(Math.sqrt(ss), NORMALIZE_EPS); // F.normalize of k ⊙ k_k
      for (let j = 0, i = o, c = c0; j < N; j++, i++, c++) {
        const kk = k[i] * kK[c] * inv;
        k[i] *= 1 + (iclr[i] - 1) * kA[c];
        if (vGate && vf) v[i] += (vf[i] - v[i]) * vGate[i];
        aOut[i] = -kk;
        bOut[i] = kk * iclr[i];
      }
    }
  },
  v7Bonus(outT, rT, kT, vT, gT, rKT, N) {
    const out = d(outT), r = d(rT), k = d(kT), v = d(vT), g = d(gT), rK = d(rKT), C = outT.cols, n = outT.rows * C;
    for (let o = 0; o < n; o += N) {
      const c0 = o % C;
      let dot = 0;
      for (let j = 0; j < N; j++) dot += r[o + j] * k[o + j] * rK[c0 + j];
      for (let j = 0; j < N; j++) out[o + j] = (out[o + j] + dot * v[o + j]) * g[o + j];
    }
  },

  rowMatVec(yt, xt, mt) {
    const y = d(yt), x = d(xt), m = d(mt), I = xt.cols, J = yt.cols;
    for (let r = 0; r < xt.rows; r++) {
      const mo = r * I * J;
      for (let j = 0; j < J; j++) {
        let s = 0;
        for (let i = 0; i < I; i++) s += x[r * I + i] * m[mo + i * J + j];
        y[r * J + j] = s;
      }
    }
  },

  softcapAttention(yt, qt, kt, vt, capIn, scaleIn, pos0) {
    const cap = Math.fround(capIn), scale = Math.fround(scaleIn); // f32 parameters, as the wasm jobs take them
    const y = d(yt), q = d(qt), k = d(kt), v = d(vt), D = qt.cols, Cv = vt.cols;
    const s = new Float64Array(kt.rows); // the scores of one query
    for (let t = 0; t < qt.rows; t++) {
      const n = pos0 + t + 1; // causal: keys 0 … pos0+t
      let max = -Infinity;
      for (let j = 0; j < n; j++) {
        let dot = 0;
        for (let i = 0; i < D; i++) dot += q[t * D + i] * k[j * D + i];
        s[j] = cap * Math.tanh(scale * dot);
        if (s[j] > max) max = s[j];
      }
      let sum = 0;
      for (let j = 0; j < n; j++) sum += (s[j] = Math.exp(s[j] - max));
      for (let c = 0; c < Cv; c++) {
        let acc = 0;
        for (let j = 0; j < n; j++) acc += s[j] * v[j * Cv + c];
        y[t * Cv + c] = acc / sum;
      }
    }
  },

  wkv4(yt, wt, ut, kt, vt, aat, bbt, ppt, row0, T) {
    const C = kt.cols, o = row0 * C;
    const y = d(yt), w = d(wt), u = d(ut), k = d(kt), v = d(vt), sa = d(aat), sb = d(bbt), sp = d(ppt);
    const s = wkv4Carry;
    for (let c = 0; c < C; c++) {
      s[0] = sa[c]; s[1] = sb[c]; s[2] = sp[c];
      wkv4Channel(w[c], u[c], k, v, y, o + c, C, T, s);
      sa[c] = s[0]; sb[c] = s[1]; sp[c] = s[2];
    }
  },

  wkv5(yt, rt, kt, vt, dect, ut, St, H, row0, T) {
    const C = kt.cols, N = C / H;
    const y = d(yt), r = d(rt), k = d(kt), v = d(vt), decay = d(dect), u = d(ut), S = d(St);
    const perToken = dect.rows > 1, w = wkvScratch(N);
    for (let t = row0; t < row0 + T; t++) {
      for (let h = 0; h < H; h++) {
        const o = t * C + h * N;
        w.st.decay(N, decay, perToken ? o : h * N);
        w.st.load5(N, o, r, k, v, u, h * N);
        wkv5Step(S, h * N * N, S, h * N * N, N, w.st, w.y);
        for (let i = 0; i < N; i++) y[o + i] = w.y[i];
      }
    }
  },

  wkv7(yt, rt, dect, kt, vt, at, bt, St, H, row0, T) {
    const C = kt.cols, N = C / H;
    const y = d(yt), r = d(rt), decay = d(dect), k = d(kt), v = d(vt), a = d(at), b = d(bt), S = d(St);
    const w = wkvScratch(N);
    for (let t = row0; t < row0 + T; t++) {
      for (let h = 0; h < H; h++) {
        const o = t * C + h * N;
        w.st.decay(N, decay, o);
        w.st.load7(N, o, r, k, v, a, b);
        wkv7Step(S, h * N * N, S, h * N * N, N, w.st, w.y, w.sa);
        for (let i = 0; i < N; i++) y[o + i] = w.y[i];
      }
    }
  },
};

/** F.normalize's eps (RWKV-7's k_k normalization). */
const NORMALIZE_EPS = 1e-12;

const K = referenceTensors;
/** A JavaScript array seen as a (rows, cols) host tensor (the Float32Array calling convention). */
const host = (a: Float32Array, rows: number, cols: number) => new HostTensor(rows, cols, a);

/** Plain TypeScript kernels: the specification every other backend is tested against. */
export const referenceBackend: Backend = {
  name: "reference",
  tensors: referenceTensors,
  /** The training half: train-kernels.ts (products, WKV) and train-ops.ts (the element-wise ops), in f32 or f64. */
  trainKernels: () => referenceTrainKernels,
  supports: (op, dtype) => (isTrainingOp(op) ? dtype === "f32" || dtype === "f64" : op === "matmul" ? dtype !== "f64" : dtype === "f32"),

  adopt: (m) => m,

  matmul(x: Float32Array, T: number, W: Matrix): Float32Array {
    const y = new Float32Array(T * W.rows); // (T, O)
    K.matmul(host(y, T, W.rows), host(x, T, W.cols), W);
    return y;
  },

  activate(f: Activation, x: Float32Array, scale = 1): Float32Array {
    K.activate(f, host(x, 1, x.length), scale);
    return x;
  },

  layerNorm(x, T, C, weight, bias, eps) {
    const y = new Float32Array(T * C); // (T, C)
    K.layerNorm(host(y, T, C), host(x, T, C), host(weight, 1, C), host(bias, 1, C), eps);
    return y;
  },

  groupNorm(x, T, H, N, weight, bias, eps) {
    const C = H * N;
    const y = new Float32Array(T * C); // (T, H*N)
    K.groupNorm(host(y, T, C), host(x, T, C), H, host(weight, 1, C), host(bias, 1, C), eps);
    return y;
  },

  wkv4(T: number, C: number, w: Float32Array, u: Float32Array, k: Float32Array, v: Float32Array, st: Wkv4State) {
    const y = new Float32Array(T * C); // (T, C)
    const vec = (a: Float32Array) => host(a, 1, C);
    K.wkv4(host(y, T, C), vec(w), vec(u), host(k, T, C), host(v, T, C), vec(st.aa), vec(st.bb), vec(st.pp), 0, T);
    return y;
  },

  wkv5(T, H, N, r, k, v, decay, u, S) {
    const C = H * N;
    const y = new Float32Array(T * C); // (T, C)
    const seq = (a: Float32Array) => host(a, T, C);
    const dec = decay.length === T * C ? seq(decay) : host(decay, 1, C);
    K.wkv5(seq(y), seq(r), seq(k), seq(v), dec, host(u, 1, C), host(S, 1, H * N * N), H, 0, T);
    return y;
  },

  wkv7(T, H, N, r, decay, k, v, a, b, S) {
    const C = H * N;
    const y = new Float32Array(T * C); // (T, C)
    const seq = (x: Float32Array) => host(x, T, C);
    K.wkv7(seq(y), seq(r), seq(decay), seq(k), seq(v), seq(a), seq(b), host(S, 1, H * N * N), H, 0, T);
    return y;
  },
};

/** y[o..o+n) = LN(x[o..o+n)) * weight[wo..] + bias[wo..] (train-ops.ts normalizeGroup; its statistics are not kept). */
function normalizeInto(x: Float32Array, y: Float32Array, o: number, n: number, weight: Float32Array, bias: Float32Array, wo: number, eps: number): void {
  normalizeGroup(x, y, o, n, weight, bias, wo, eps, normStats, normStats, 0);
}
/** Where normalizeInto's group statistics go (unused; kept so the decode path allocates nothing). */
const normStats = new Float64Array(1);
