import type { Activation, Backend, Matrix, Tensor, TensorKernels, WeightType } from "../src/core/backend/backend.js";
import { quantizeInt8 } from "../src/core/backend/int8.js";
import { referenceBackend, referenceTensors as R } from "../src/core/backend/reference.js";
import { prepareWebGpu, type WebGpuBackend } from "../src/core/backend/webgpu/index.js";
import { decodeWeightRow } from "../src/core/backend/weight-rows.js";
import { MemorySource } from "../src/core/bytes.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
import type { State } from "../src/core/model/state.js";
import { f32ToBf16, f32ToF16 } from "../src/core/tensor.js";

/*
 * Runs in Chromium (bundled by test/webgpu-browser.test.ts) and in Node on Dawn (imported by
 * test/webgpu-node.test.ts, which hands it its backend with use() and model bytes instead of URLs):
 * the WebGPU backend's kernels against the reference kernels on random shapes, and whole models on
 * it. Returns plain data; the caller asserts. Tolerances (checked here, reported with every case):
 *
 *  - element-wise ops: f32 arithmetic with up to 3 roundings where the reference rounds once from
 *    f64: within 4 f32 ulps of the largest input magnitude (ELEMENTWISE_RTOL of max|input|).
 *  - activations: WGSL's exp is not correctly rounded (the spec allows 3 + 2|z| ulp, so e^80 may be
 *    off by 1e-5 relative): relative ACTIVATION_RTOL plus that bound per element, and an absolute
 *    floor for results near 0 (tanh, silu around 0).
 *    Infinite and NaN inputs are not checked: WGSL lets implementations assume they never occur.
 *  - matmul: the float bound of the conformance suite, (I + 2)·2^-24·Σ|w x|, on the weights decoded.
 *  - norms, the RWKV-7 head kernels, attention: f32 statistics and sums instead of f64, 1e-5 of the
 *    output's largest magnitude.
 *  - WKV scans: 2e-5 of the largest magnitude (the conformance suite's WKV bound), two calls so the
 *    state is carried.
 */

const ELEMENTWISE_RTOL = 4 * 2 ** -24;
const ACTIVATION_RTOL = 2e-6, ACTIVATION_ATOL = 1e-7;
const HEAD_RTOL = 1e-5;
const WKV_RTOL = 2e-5;

export interface CaseResult { name: string; ok: boolean; err: number; tol: number }

/** Deterministic uniform [-1, 1) (test/matmul-check.ts's generator: that file imports node:assert). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}

let backend: WebGpuBackend | null = null;

/** The backend on this page's adapter (with a small storage binding when asked, to split matrices). */
export async function prepare(maxBindingBytes?: number): Promise<string> {
  backend = await prepareWebGpu(undefined, { maxBindingBytes });
  if (!backend) throw new Error("no WebGPU backend in this page");
  return backend.adapterName;
}

/** A backend made elsewhere (Node: Dawn's, where there is no navigator.gpu; or one with a small binding on the same device). */
export function use(b: WebGpuBackend): void {
  backend = b;
}

function gpu(): WebGpuBackend {
  if (!backend) throw new Error("prepare() first");
  return backend;
}

/** The same values as a tensor of each backend. */
function pair(K: TensorKernels, data: Float32Array, rows: number): { r: Tensor; g: Tensor } {
  return { r: R.constant(data.slice(), rows), g: K.constant(data, rows) };
}

const BLOCK_BYTES: Partial<Record<WeightType, number>> = { q8_0: 34, q5_0: 22, q5_1: 24, q4_0: 18, q4_1: 20 };

function randomMatrix(type: WeightType, O: number, I: number, r: () => number): Matrix {
  const f = Float32Array.from({ length: O * I }, () => r());
  if (type === "f32") return { rows: O, cols: I, type, data: f };
  if (type === "f16") return { rows: O, cols: I, type, data: Uint16Array.from(f, f32ToF16) };
  if (type === "bf16") return { rows: O, cols: I, type, data: Uint16Array.from(f, f32ToBf16) };
  if (type === "i8") return quantizeInt8(f, O, I);
  const bb = BLOCK_BYTES[type]!;
  const data = Uint8Array.from({ length: (O * I / 32) * bb }, () => Math.floor((r() + 1) * 128) & 0xff);
  const dv = new DataView(data.buffer);
  for (let p = 0; p < data.length; p += bb) {
    dv.setUint16(p, f32ToF16(0.02 * r()), true);
    if (type === "q4_1" || type === "q5_1") dv.setUint16(p + 2, f32ToF16(0.1 * r()), true);
  }
  return { rows: O, cols: I, type, data };
}

/** Runs every kernel of the table on both backends and compares. */
export async function conformance(): Promise<CaseResult[]> {
  const K = gpu().tensors;
  const out: CaseResult[] = [];
  const r = rng(1234);
  const rand = (n: number, scale = 1) => Float32Array.from({ length: n }, () => scale * r());
  const maxAbs = (...as: Float32Array[]) => as.reduce((m, a) => a.reduce((x, v) => Math.max(x, Math.abs(v)), m), 0);
  const check = async (name: string, g: Tensor, want: Float32Array, tol: (i: number) => number) => {
    const got = await K.readAsync(g);
    let ok = got.length === want.length, err = 0, bound = 0, ratio = -1;
    for (let i = 0; i < want.length; i++) {
      const e = Math.abs(got[i] - want[i]), b = tol(i);
      if (!(e <= b)) ok = false;
      const q = Number.isNaN(e) ? Infinity : b > 0 ? e / b : e > 0 ? Infinity : 0;
      if (q > ratio) { ratio = q; err = Number.isNaN(e) ? Infinity : e; bound = b; } // the element closest to (or past) its bound
    }
    out.push({ name, ok, err, tol: bound });
  };
  const within = (scale: number) => () => scale;

  for (const [rows, C] of [[1, 1], [1, 7], [3, 64], [17, 100], [5, 129], [2, 1000]] as const) {
    const n = rows * C;
    const x = rand(n, 2), d = rand(n, 2), b = rand(C), m = rand(C), sx = rand(n), dyn = rand(n);
    const shape = `${rows}x${C}`;
    const X = pair(K, x, rows), D = pair(K, d, rows), B = pair(K, b, 1), M = pair(K, m, 1), SX = pair(K, sx, rows), DYN = pair(K, dyn, rows);
    const tolE = within(ELEMENTWISE_RTOL * Math.max(1, maxAbs(x, d, b, sx, dyn) ** 2));
    const two = () => { const ar = R.arena().take(rows, C), ag = K.arena().take(rows, C); return { ar, ag }; };

    // In place: each on fresh copies of x.
    for (const op of ["add", "mul"] as const) {
      const a = pair(K, x, rows);
      R[op](a.r, D.r); K[op](a.g, D.g);
      await check(`${op} ${shape}`, a.g, R.read(a.r), tolE);
    }
    { const a = pair(K, x, rows); R.addRow(a.r, B.r); K.addRow(a.g, B.g); await check(`addRow ${shape}`, a.g, R.read(a.r), tolE); }
    { const { ar, ag } = two(); R.sub(ar, X.r, D.r); K.sub(ag, X.g, D.g); await check(`sub ${shape}`, ag, R.read(ar), tolE); }
    for (const op of ["lerp", "mix"] as const) {
      const o1 = two(), o2 = two();
      const M2 = pair(K, rand(C), 1);
      R[op]([o1.ar, o2.ar], X.r, SX.r, [M.r, M2.r]); K[op]([o1.ag, o2.ag], X.g, SX.g, [M.g, M2.g]);
      await check(`${op} ${shape} out 0`, o1.ag, R.read(o1.ar), tolE);
      await check(`${op} ${shape} out 1`, o2.ag, R.read(o2.ar), tolE);
    }
    for (const withDyn of [false, true]) {
      const { ar, ag } = two();
      R.lerpBy(ar, X.r, D.r, M.r, withDyn ? DYN.r : null); K.lerpBy(ag, X.g, D.g, M.g, withDyn ? DYN.g : null);
      await check(`lerpBy ${shape}${withDyn ? " dyn" : ""}`, ag, R.read(ar), tolE);
    }
    for (const f of ["sigmoid", "tanh", "silu", "relu2", "exp"] as Activation[]) {
      for (const scale of [1, -0.37]) {
        const v = Float32Array.from(x, (z, i) => (i % 5 === 0 ? z * 1e-4 : i % 7 === 0 ? z * 40 : z)); // tiny, large and ordinary arguments
        const a = pair(K, v, rows);
        R.activate(f, a.r, scale); K.activate(f, a.g, scale);
        const want = R.read(a.r);
        // WGSL's exp is within 3 + 2|z| ulp of e^z: relative (3 + 2|z|)·2^-23 (exp's argument in these formulas is ±z).
        const expUlps = (i: number) => (3 + 2 * Math.abs(scale * v[i])) * 2 ** -23;
        await check(`activate ${f} x${scale} ${shape}`, a.g, want, (i) => (ACTIVATION_RTOL + expUlps(i)) * Math.abs(want[i]) + ACTIVATION_ATOL);
      }
    }
    {
      const { ar, ag } = two();
      R.layerNorm(ar, X.r, M.r, B.r, 1e-5); K.layerNorm(ag, X.g, M.g, B.g, 1e-5);
      const want = R.read(ar);
      await check(`layerNorm ${shape}`, ag, want, within(HEAD_RTOL * Math.max(1, maxAbs(want))));
    }
    for (const H of [1, 2, 4].filter((h) => C % h === 0 && C / h > 0)) {
      const { ar, ag } = two();
      R.groupNorm(ar, X.r, H, M.r, B.r, 64e-5); K.groupNorm(ag, X.g, H, M.g, B.g, 64e-5);
      const want = R.read(ar);
      await check(`groupNorm H=${H} ${shape}`, ag, want, within(HEAD_RTOL * Math.max(1, maxAbs(want))));
    }
    // columns: the middle third of each row.
    {
      const c0 = Math.floor(C / 3), w = Math.max(1, Math.floor(C / 3));
      const ar = R.arena().take(rows, w), ag = K.arena().take(rows, w);
      R.columns(ar, X.r, c0); K.columns(ag, X.g, c0);
      await check(`columns ${shape} [${c0}, ${c0 + w})`, ag, R.read(ar), within(0));
    }
    // copyRows, and write at an offset.
    if (rows > 2) {
      const { ar, ag } = two();
      R.write(ar, 0, x, 0, n); K.write(ag, 0, x, 0, n);
      R.copyRows(ar, 0, X.r, rows - 2, 2); K.copyRows(ag, 0, X.g, rows - 2, 2);
      R.copyRows(ar, 1, ar, 0, 1); K.copyRows(ag, 1, ag, 0, 1); // within one tensor
      R.write(ar, C + 1, d, 3, C - 1); K.write(ag, C + 1, d, 3, C - 1);
      await check(`copyRows/write ${shape}`, ag, R.read(ar), within(0));
    }
    // shift over two sequences of the rows, the carried row updated.
    if (rows >= 2) {
      const T = Math.floor(rows / 2);
      const { ar, ag } = two();
      const P = pair(K, rand(C), 1), P2 = pair(K, rand(C), 1);
      R.shift(ar, X.r, P.r, 0, T); K.shift(ag, X.g, P.g, 0, T);
      R.shift(ar, X.r, P2.r, T, rows - T); K.shift(ag, X.g, P2.g, T, rows - T);
      await check(`shift ${shape}`, ag, R.read(ar), within(0));
      await check(`shift ${shape} carry`, P2.g, R.read(P2.r), within(0));
    }
  }

  // Per-head RWKV-7 kernels and the row mat-vec.
  for (const [rows, H, N] of [[1, 1, 64], [3, 2, 32], [5, 3, 7], [2, 2, 100]] as const) {
    const C = H * N, n = rows * C, shape = `${rows}x${H}x${N}`;
    const k = rand(n), v = rand(n), iclr = rand(n).map((z) => (z + 1) / 2), kK = rand(C), kA = rand(C), vg = rand(n), vf = rand(n);
    for (const gate of [false, true]) {
      const K1 = pair(K, k, rows), V1 = pair(K, v, rows), IC = pair(K, iclr, rows), KK = pair(K, kK, 1), KA = pair(K, kA, 1), VG = pair(K, vg, rows), VF = pair(K, vf, rows);
      const aR = R.arena().take(rows, C), bR = R.arena().take(rows, C), aG = K.arena().take(rows, C), bG = K.arena().take(rows, C);
      R.v7Keys(aR, bR, K1.r, V1.r, IC.r, KK.r, KA.r, gate ? VG.r : null, gate ? VF.r : null, N);
      K.v7Keys(aG, bG, K1.g, V1.g, IC.g, KK.g, KA.g, gate ? VG.g : null, gate ? VF.g : null, N);
      const tol = within(HEAD_RTOL * 2);
      for (const [what, g, want] of [["a", aG, R.read(aR)], ["b", bG, R.read(bR)], ["k", K1.g, R.read(K1.r)], ["v", V1.g, R.read(V1.r)]] as const) {
        await check(`v7Keys ${shape}${gate ? " gate" : ""} ${what}`, g, want, tol);
      }
    }
    {
      const O = pair(K, rand(n), rows), Rr = pair(K, rand(n), rows), K1 = pair(K, k, rows), V1 = pair(K, v, rows), G = pair(K, rand(n), rows), RK = pair(K, rand(C), 1);
      R.v7Bonus(O.r, Rr.r, K1.r, V1.r, G.r, RK.r, N); K.v7Bonus(O.g, Rr.g, K1.g, V1.g, G.g, RK.g, N);
      const want = R.read(O.r);
      await check(`v7Bonus ${shape}`, O.g, want, within(HEAD_RTOL * Math.max(1, maxAbs(want))));
    }
    {
      const I = H + 2, J = N;
      const X = pair(K, rand(rows * I), rows), M = pair(K, rand(rows * I * J), rows);
      const yR = R.arena().take(rows, J), yG = K.arena().take(rows, J);
      R.rowMatVec(yR, X.r, M.r); K.rowMatVec(yG, X.g, M.g);
      const want = R.read(yR);
      await check(`rowMatVec ${rows}x${I}x${J}`, yG, want, within(HEAD_RTOL * Math.max(1, maxAbs(want))));
    }
  }

  // Soft-capped attention: queries at the end of a context, from its start and after a prefix.
  for (const [n, pos0, D, Cv] of [[1, 0, 8, 5], [3, 4, 32, 64], [17, 0, 7, 33], [2, 90, 64, 64]] as const) {
    const Tk = pos0 + n;
    const Q = pair(K, rand(n * D, 2), n), Kt = pair(K, rand(Tk * D, 2), Tk), Vt = pair(K, rand(Tk * Cv), Tk);
    const yR = R.arena().take(n, Cv), yG = K.arena().take(n, Cv);
    R.softcapAttention(yR, Q.r, Kt.r, Vt.r, 30, 1 / Math.sqrt(D), pos0); K.softcapAttention(yG, Q.g, Kt.g, Vt.g, 30, 1 / Math.sqrt(D), pos0);
    await check(`softcapAttention n=${n} pos0=${pos0} D=${D} Cv=${Cv}`, yG, R.read(yR), within(HEAD_RTOL));
  }

  // WKV scans over two sequences of rows, each scanned twice (the state carried between calls).
  for (const [H, N, T] of [[1, 64, 1], [2, 32, 3], [3, 7, 17], [1, 64, 5]] as const) {
    const C = H * N, rows = 2 * T, n = rows * C, shape = `H=${H} N=${N} T=${T}`;
    const r5 = pair(K, rand(n), rows), k5 = pair(K, rand(n), rows), v5 = pair(K, rand(n), rows), u5 = pair(K, rand(C), 1);
    const wkvTol = (want: Float32Array) => within(WKV_RTOL * maxAbs(want) + 1e-30);
    for (const perToken of [false, true]) {
      const dec = perToken ? pair(K, rand(n).map((z) => 0.5 + 0.45 * z), rows) : pair(K, rand(C).map((z) => 0.5 + 0.45 * z), 1);
      const S = pair(K, rand(H * N * N), 1);
      const yR = R.arena().take(rows, C), yG = K.arena().take(rows, C);
      for (let call = 0; call < 2; call++) {
        R.wkv5(yR, r5.r, k5.r, v5.r, dec.r, u5.r, S.r, H, call * T, T); K.wkv5(yG, r5.g, k5.g, v5.g, dec.g, u5.g, S.g, H, call * T, T);
      }
      const want = R.read(yR), wantS = R.read(S.r);
      await check(`wkv5 ${perToken ? "v6" : "v5"} ${shape} y`, yG, want, wkvTol(want));
      await check(`wkv5 ${perToken ? "v6" : "v5"} ${shape} S`, S.g, wantS, wkvTol(wantS));
    }
    {
      const dec = pair(K, rand(n).map((z) => Math.exp(-Math.exp(-0.5 + 0.5 * z))), rows);
      const kk = rand(n); // a = -kk, b = kk·iclr with kk normalized per head, as v7Keys makes them
      for (let o = 0; o < n; o += N) { let s = 0; for (let j = 0; j < N; j++) s += kk[o + j] ** 2; for (let j = 0; j < N; j++) kk[o + j] /= Math.sqrt(s); }
      const A = pair(K, kk.map((z) => -z), rows), Bv = pair(K, kk.map((z) => z * 0.7), rows);
      const S = pair(K, rand(H * N * N), 1);
      const yR = R.arena().take(rows, C), yG = K.arena().take(rows, C);
      for (let call = 0; call < 2; call++) {
        R.wkv7(yR, r5.r, dec.r, k5.r, v5.r, A.r, Bv.r, S.r, H, call * T, T); K.wkv7(yG, r5.g, dec.g, k5.g, v5.g, A.g, Bv.g, S.g, H, call * T, T);
      }
      const want = R.read(yR), wantS = R.read(S.r);
      await check(`wkv7 ${shape} y`, yG, want, wkvTol(want));
      await check(`wkv7 ${shape} S`, S.g, wantS, wkvTol(wantS));
    }
    {
      const w = pair(K, rand(C).map((z) => -Math.exp(z)), 1), u = pair(K, rand(C), 1);
      const kk = pair(K, rand(n, 3), rows);
      const aa = pair(K, rand(C), 1), bb = pair(K, rand(C).map((z) => 1.5 + z), 1), pp = pair(K, rand(C), 1);
      const yR = R.arena().take(rows, C), yG = K.arena().take(rows, C);
      for (let call = 0; call < 2; call++) {
        R.wkv4(yR, w.r, u.r, kk.r, v5.r, aa.r, bb.r, pp.r, call * T, T); K.wkv4(yG, w.g, u.g, kk.g, v5.g, aa.g, bb.g, pp.g, call * T, T);
      }
      for (const [what, g, want] of [["y", yG, R.read(yR)], ["aa", aa.g, R.read(aa.r)], ["bb", bb.g, R.read(bb.r)], ["pp", pp.g, R.read(pp.r)]] as const) {
        await check(`wkv4 ${shape} ${what}`, g, want, wkvTol(want));
      }
    }
  }

  // matmul: every weight type, odd shapes, one and several rows.
  for (const type of ["f32", "f16", "bf16", "i8", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1"] as WeightType[]) {
    const block = BLOCK_BYTES[type] !== undefined;
    const shapes: Array<[number, number]> = block ? [[1, 32], [5, 64], [17, 96], [40, 160]] : [[1, 13], [5, 4], [17, 37], [3, 100], [40, 64], [33, 161]];
    for (const [O, I] of shapes) {
      const W = randomMatrix(type, O, I, r);
      const G = gpu().adopt(W); // W's rows on the GPU, G without CPU data
      out.push({ name: `adopt ${type} O=${O} I=${I} keeps no CPU data`, ok: G.data.length === 0 && W.data.length > 0, err: G.data.byteLength, tol: 0 });
      for (const T of [1, 2, 17, 64]) {
        const x = rand(T * I);
        const X = pair(K, x, T);
        const yR = R.arena().take(T, O), yG = K.arena().take(T, O);
        R.matmul(yR, X.r, W); K.matmul(yG, X.g, G);
        const bound = matmulBound(x, T, W);
        await check(`matmul ${type} O=${O} I=${I} T=${T}`, yG, R.read(yR), (i) => bound[i]);
      }
    }
  }
  return out;
}

/** (I + 2)·2^-24·Σ_i |w_i x_i| per output, with the weights as stored (decoded). */
function matmulBound(x: Float32Array, T: number, W: Matrix): Float32Array {
  const { rows: O, cols: I } = W, row = new Float32Array(I), out = new Float32Array(T * O);
  for (let o = 0; o < O; o++) {
    decodeWeightRow(W, o, row);
    for (let t = 0; t < T; t++) {
      let s = 0;
      for (let i = 0; i < I; i++) s += Math.abs(row[i] * x[t * I + i]);
      out[t * O + o] = (I + 2) * 2 ** -24 * s + 1e-30;
    }
  }
  return out;
}

/** A matrix larger than the (test-lowered) storage binding: split by rows, the same product. */
export async function chunkedMatmul(O: number, I: number, T: number): Promise<{ chunks: number; maxErr: number; bound: number }> {
  const K = gpu().tensors, r = rng(99);
  const W = randomMatrix("f32", O, I, r), x = Float32Array.from({ length: T * I }, () => r());
  const chunks = K.matrix(W).chunks.length;
  const yR = R.arena().take(T, O), yG = K.arena().take(T, O);
  R.matmul(yR, R.constant(x, T), W); K.matmul(yG, K.constant(x, T), W);
  const want = R.read(yR), got = await K.readAsync(yG), b = matmulBound(x, T, W);
  let maxErr = 0, bound = Infinity;
  for (let i = 0; i < want.length; i++) { maxErr = Math.max(maxErr, Math.abs(got[i] - want[i])); bound = Math.min(bound, b[i]); }
  return { chunks, maxErr, bound };
}

/** What adopting a matrix whose single row exceeds the binding says. */
export function oversizedRow(I: number): string {
  try {
    gpu().adopt({ rows: 2, cols: I, type: "f32", data: new Float32Array(2 * I) });
    return "no error";
  } catch (e) {
    return (e as Error).message;
  }
}

/** CPU bytes of the matrices a model load adopted: what adopt() was given and what it returned; `host`: what adoptForHost kept. */
export interface HostBytes { matrices: number; before: number; after: number; host: number }

/** `be` with adopt() and adoptForHost() counted into `bytes` (everything else is the backend's own). */
export function recordHostBytes(be: WebGpuBackend): { backend: Backend; bytes: HostBytes } {
  const bytes: HostBytes = { matrices: 0, before: 0, after: 0, host: 0 };
  const backend = Object.create(be) as WebGpuBackend;
  backend.adopt = (m) => {
    const out = be.adopt(m);
    bytes.matrices++;
    bytes.before += m.data.byteLength;
    bytes.after += out.data.byteLength;
    return out;
  };
  backend.adoptForHost = (m) => {
    bytes.host += m.data.byteLength;
    return be.adoptForHost(m);
  };
  return { backend, bytes };
}

export interface ModelRun {
  version: string;
  hostBytes: HostBytes;
  rnn: number[]; seq: number[]; chunked: number[];
  states: Record<string, Record<string, number[]>[]>;
  batch: number[]; alone: number[];
}

const plain = (s: State): Record<string, number[]>[] => s.layers.map((l) => Object.fromEntries(Object.entries(l).map(([k, v]) => [k, [...v]])));

/** A model file: a URL the page fetches, or (Node, whose fetch reads no files) its name and bytes. */
export type ModelFile = string | { readonly name: string; readonly bytes: Uint8Array };

async function open(file: ModelFile): Promise<{ url: string; bytes: Uint8Array }> {
  if (typeof file !== "string") return { url: file.name, bytes: file.bytes };
  return { url: file, bytes: new Uint8Array(await (await fetch(file)).arrayBuffer()) };
}

/** A model file on the WebGPU backend: step, sequence, chunked, stepBatch. */
export async function runModel(file: ModelFile, tokens: number[], split: number, matrices?: "f32"): Promise<ModelRun> {
  const { url, bytes } = await open(file);
  const ckpt = openCheckpoint(new MemorySource(url, bytes));
  const version = detectVersion(ckpt);
  const { backend, bytes: hostBytes } = recordHostBytes(gpu());
  const model = buildModel(ckpt, architectureFor(version, url), version, backend, { matrices });
  await gpu().ready();
  const states: ModelRun["states"] = {};
  const s = model.initState(), rnn: number[] = [];
  for (const [i, tok] of tokens.entries()) {
    rnn.push(...await model.step(tok, s));
    if (i === 0) states.first = plain(await s.clone().sync());
  }
  states.rnn = plain(await s.sync());
  const s2 = model.initState();
  const seq = [...await model.forward(tokens, s2, { allLogits: true })];
  states.seq = plain(await s2.sync());
  const s3 = model.initState();
  const chunked = [...await model.forward(tokens.slice(0, split), s3, { allLogits: true }), ...await model.forward(tokens.slice(split), s3, { allLogits: true })];
  states.chunked = plain(await s3.sync());
  // Batched decoding: two sequences at different positions (one of them a clone made on the GPU).
  const a = model.initState(), b = model.initState();
  await model.forward(tokens.slice(0, 5), a);
  await model.forward(tokens.slice(0, 2), b);
  const a1 = a.clone(), b1 = b.clone();
  const batch = [...await model.stepBatch([tokens[5], tokens[2]], [a, b])];
  const alone = [...await model.step(tokens[5], a1), ...await model.step(tokens[2], b1)];
  return { version, hostBytes, rnn, seq, chunked, states, batch, alone };
}

/** Loses the device (destroy) between two steps of a model: what the second step rejects with, or "hang". */
export async function loseDevice(file: ModelFile): Promise<string> {
  const { url, bytes } = await open(file);
  const ckpt = openCheckpoint(new MemorySource(url, bytes));
  const version = detectVersion(ckpt);
  const model = buildModel(ckpt, architectureFor(version, url), version, gpu());
  const s = model.initState();
  await model.step(1, s);
  gpu().device.destroy();
  const HANG_MS = 30_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([model.step(2, s), new Promise((resolve) => { timer = setTimeout(resolve, HANG_MS); })]);
    return "hang";
  } catch (e) {
    return (e as Error).message;
  } finally {
    clearTimeout(timer); // in Node a pending timer would keep the test's process alive for HANG_MS
  }
}


/**
 * A model file in its compact types (f16, bf16, ggml blocks) on the GPU and on the reference kernels
 * (the same weights): the largest |difference| of the logits of a sequence and of steps after it.
 */
export async function againstReference(file: ModelFile, tokens: number[]): Promise<{ version: string; types: string[]; maxDiff: number; scale: number; hostBytes: HostBytes }> {
  const { url, bytes } = await open(file);
  const ckpt = openCheckpoint(new MemorySource(url, bytes));
  const version = detectVersion(ckpt);
  const { backend, bytes: hostBytes } = recordHostBytes(gpu());
  const gpuModel = buildModel(ckpt, architectureFor(version, url), version, backend);
  const refModel = buildModel(ckpt, architectureFor(version, url), version, referenceBackend);
  const types = [...new Set([...ckpt.tensors.values()].map((t) => t.dtype))];
  const sg = gpuModel.initState(), sr = refModel.initState();
  const got = [...await gpuModel.forward(tokens, sg, { allLogits: true })], want = [...await refModel.forward(tokens, sr, { allLogits: true })];
  for (const tok of tokens.slice(0, 3)) { got.push(...await gpuModel.step(tok, sg)); want.push(...await refModel.step(tok, sr)); }
  let maxDiff = 0, scale = 0;
  for (let i = 0; i < want.length; i++) { maxDiff = Math.max(maxDiff, Math.abs(got[i] - want[i])); scale = Math.max(scale, Math.abs(want[i])); }
  return { version, types, maxDiff, scale, hostBytes };
}
