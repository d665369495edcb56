import type { Activation, Backend, Matrix, Wkv4State } from "./backend.js";
import { decodeWeightRow } from "./weight-rows.js";

/** The activations' formulas (backend.ts). */
const ACTIVATIONS: Readonly<Record<Activation, (z: number) => number>> = {
  sigmoid: (z) => 1 / (1 + Math.exp(-z)),
  tanh: Math.tanh,
  silu: (z) => z / (1 + Math.exp(-z)),
  relu2: (z) => (z > 0 ? z * z : 0),
  exp: Math.exp,
};

/** Plain TypeScript kernels: the specification every other backend is tested against. */
export const referenceBackend: Backend = {
  name: "reference",

  adopt: (m) => m,

  matmul(x: Float32Array, T: number, W: Matrix): Float32Array {
    const { rows: O, cols: I } = W;
    const y = new Float32Array(T * O); // (T, O)
    const row = new Float32Array(I); // (I) one weight row, dequantized
    for (let o = 0; o < O; o++) {
      const w = W.type === "f32" ? (W.data as Float32Array).subarray(o * I, (o + 1) * I) : decodeWeightRow(W, o, row);
      for (let t = 0; t < T; t++) {
        const xo = t * I;
        let s = 0;
        for (let i = 0; i < I; i++) s += w[i] * x[xo + i];
        y[t * O + o] = s;
      }
    }
    return y;
  },

  activate(f: Activation, x: Float32Array, scale = 1): Float32Array {
    const fn = ACTIVATIONS[f];
    for (let n = 0; n < x.length; n++) x[n] = fn(scale * x[n]);
    return x;
  },

  layerNorm(x, T, C, weight, bias, eps) {
    const y = new Float32Array(T * C); // (T, C)
    for (let t = 0; t < T; t++) normalizeInto(x, y, t * C, C, weight, bias, 0, eps);
    return y;
  },

  groupNorm(x, T, H, N, weight, bias, eps) {
    const y = new Float32Array(T * H * N); // (T, H*N)
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) normalizeInto(x, y, (t * H + h) * N, N, weight, bias, h * N, eps);
    }
    return y;
  },

  wkv4(T: number, C: number, w: Float32Array, u: Float32Array, k: Float32Array, v: Float32Array, st: Wkv4State) {
    const y = new Float32Array(T * C); // (T, C)
    for (let c = 0; c < C; c++) {
      let aa = st.aa[c], bb = st.bb[c], pp = st.pp[c];
      for (let t = 0; t < T; t++) {
        const kt = k[t * C + c], vt = v[t * C + c];
        let ww = u[c] + kt;
        let p = Math.max(pp, ww);
        let e1 = Math.exp(pp - p), e2 = Math.exp(ww - p);
        y[t * C + c] = (e1 * aa + e2 * vt) / (e1 * bb + e2);
        ww = w[c] + pp;
        p = Math.max(ww, kt);
        e1 = Math.exp(ww - p);
        e2 = Math.exp(kt - p);
        aa = e1 * aa + e2 * vt;
        bb = e1 * bb + e2;
        pp = p;
      }
      st.aa[c] = aa; st.bb[c] = bb; st.pp[c] = pp;
    }
    return y;
  },

  wkv5(T, H, N, r, k, v, decay, u, S) {
    const C = H * N;
    const perToken = decay.length === T * C;
    const y = new Float32Array(T * C); // (T, C)
    for (let t = 0; t < T; t++) {
      const tc = t * C, dc = perToken ? tc : 0;
      for (let h = 0; h < H; h++) {
        const s0 = h * N * N, c0 = h * N;
        for (let j = 0; j < N; j++) {
          const rj = r[tc + c0 + j], kj = k[tc + c0 + j], uj = u[c0 + j], dj = decay[dc + c0 + j];
          const row = s0 + j * N;
          for (let i = 0; i < N; i++) {
            const a = kj * v[tc + c0 + i];
            y[tc + c0 + i] += rj * (uj * a + S[row + i]);
            S[row + i] = a + dj * S[row + i];
          }
        }
      }
    }
    return y;
  },

  wkv7(T, H, N, r, decay, k, v, a, b, S) {
    const C = H * N;
    const y = new Float32Array(T * C); // (T, C)
    for (let t = 0; t < T; t++) {
      const tc = t * C;
      for (let h = 0; h < H; h++) {
        const s0 = h * N * N, c0 = tc + h * N;
        for (let i = 0; i < N; i++) {
          const row = s0 + i * N;
          let sa = 0;
          for (let j = 0; j < N; j++) sa += S[row + j] * a[c0 + j];
          const vi = v[c0 + i];
          let yi = 0;
          for (let j = 0; j < N; j++) {
            const s = S[row + j] * decay[c0 + j] + sa * b[c0 + j] + vi * k[c0 + j];
            S[row + j] = s;
            yi += s * r[c0 + j];
          }
          y[c0 + i] = yi;
        }
      }
    }
    return y;
  },
};

/** y[o..o+n) = LN(x[o..o+n)) * weight[wo..] + bias[wo..]; mean and biased variance in f64 like torch's accumulators. */
function normalizeInto(x: Float32Array, y: Float32Array, o: number, n: number, weight: Float32Array, bias: Float32Array, wo: number, eps: number): void {
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[o + i];
  mean /= n;
  let v = 0;
  for (let i = 0; i < n; i++) { const d = x[o + i] - mean; v += d * d; }
  const inv = 1 / Math.sqrt(v / n + eps);
  for (let i = 0; i < n; i++) y[o + i] = (x[o + i] - mean) * inv * weight[wo + i] + bias[wo + i];
}
