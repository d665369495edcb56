import type { Activation } from "../backend.js";

/*
 * WGSL of the WebGPU backend's kernels other than matmul (matmul.ts): the formulas of
 * reference.ts in f32. Each shader has one entry point `main`; storage buffers are bindings
 * 0 … n-1 in the order the TypeScript side passes the tensors, the uniform parameters binding n.
 *
 * Letters as in backend.ts: R rows, C channels, H heads, N head size.
 *
 * Element-wise kernels run one invocation per element over a 2-D grid of workgroups (a dimension
 * holds at most 65535 of them); per-row and per-head kernels (norms, v7Keys, v7Bonus, attention)
 * one workgroup of WG invocations per row or head, reducing in workgroup memory; the scans one
 * invocation per state row (v5-v7) or channel (v4), walking the T tokens in order.
 */

/** F.normalize's eps (RWKV-7's k_k normalization), as reference.ts. */
const NORMALIZE_EPS = "1e-12";

/** Invocations per workgroup. */
export const WG = 64;

/** The element index of a 1-D kernel dispatched on a (x, y) grid of workgroups. */
const INDEX = /* wgsl */ `
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
  let i = g.x + g.y * nw.x * ${WG}u;`;

/** The row/head of a per-group kernel: workgroup ids over a (x, y) grid. */
const GROUP = /* wgsl */ `
var<workgroup> red: array<f32, ${WG}>;
/** Sum of every invocation's v (all of the workgroup must call it). */
fn reduce(v: f32, lane: u32) -> f32 {
  red[lane] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lane < s) { red[lane] += red[lane + s]; }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();
  return total;
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) lane: u32) {
  let grp = wg.x + wg.y * nw.x;`;

const storage = (names: readonly string[], writable: ReadonlySet<string>) =>
  names.map((n, b) => `@group(0) @binding(${b}) var<storage, ${writable.has(n) ? "read_write" : "read"}> ${n}: array<f32>;`).join("\n");

/** A shader over named f32 arrays (the `out` ones writable) with a uniform struct of fields. */
function shader(arrays: readonly string[], out: readonly string[], fields: string, body: string, prelude = INDEX): string {
  return `struct P { ${fields} }
${storage(arrays, new Set(out))}
@group(0) @binding(${arrays.length}) var<uniform> p: P;
${prelude}
${body}
}`;
}

/**
 * tanh without the overflow of a naive (e^2z - 1)/(e^2z + 1): a series below 1/8, where 1 - e^-2|z|
 * would lose digits to cancellation, the exponential form above.
 */
const TANH = /* wgsl */ `
fn tanh_(z: f32) -> f32 {
  let a = abs(z);
  if (a < 0.125) { let z2 = z * z; return z * (1.0 + z2 * (-1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0)))); }
  let e = exp(-2.0 * a);
  return sign(z) * (1.0 - e) / (1.0 + e);
}`;

const ACTIVATION_WGSL: Readonly<Record<Activation, string>> = {
  sigmoid: "1.0 / (1.0 + exp(-z))",
  tanh: "tanh_(z)",
  silu: "z / (1.0 + exp(-z))",
  relu2: "select(0.0, z * z, z > 0.0)",
  exp: "exp(z)",
};

export const SHADERS = {
  activate: (f: Activation) => TANH + shader(["x"], ["x"], "n: u32, scale: f32", `
  if (i >= p.n) { return; }
  let z = p.scale * x[i];
  x[i] = ${ACTIVATION_WGSL[f]};`),

  add: shader(["x", "d"], ["x"], "n: u32", "if (i < p.n) { x[i] += d[i]; }"),
  mul: shader(["x", "d"], ["x"], "n: u32", "if (i < p.n) { x[i] *= d[i]; }"),
  sub: shader(["y", "a", "b"], ["y"], "n: u32", "if (i < p.n) { y[i] = a[i] - b[i]; }"),
  addRow: shader(["x", "b"], ["x"], "n: u32, C: u32", "if (i < p.n) { x[i] += b[i % p.C]; }"),
  lerp: shader(["o", "xx", "sx", "m"], ["o"], "n: u32, C: u32", "if (i < p.n) { let x = xx[i]; o[i] = x + (sx[i] - x) * m[i % p.C]; }"),
  mix: shader(["o", "xx", "sx", "m"], ["o"], "n: u32, C: u32", "if (i < p.n) { let m_ = m[i % p.C]; o[i] = xx[i] * m_ + sx[i] * (1.0 - m_); }"),
  lerpBy: shader(["y", "xx", "d", "m"], ["y"], "n: u32, C: u32", "if (i < p.n) { y[i] = xx[i] + d[i] * m[i % p.C]; }"),
  lerpByDyn: shader(["y", "xx", "d", "m", "dyn"], ["y"], "n: u32, C: u32", "if (i < p.n) { y[i] = xx[i] + d[i] * (m[i % p.C] + dyn[i]); }"),
  /** dst (R, n) = columns [c0, c0 + n) of src (R, W). */
  columns: shader(["dst", "src"], ["dst"], "total: u32, n: u32, W: u32, c0: u32", `
  if (i >= p.total) { return; }
  let t = i / p.n;
  dst[i] = src[t * p.W + p.c0 + i % p.n];`),
  /** RWKV-7's value residual: v += (vFirst - v) ⊙ vGate. */
  v7Gate: shader(["v", "vf", "vg"], ["v"], "n: u32", "if (i < p.n) { v[i] += (vf[i] - v[i]) * vg[i]; }"),

  /**
   * Layer norm of each group of N values (layerNorm: N = C; groupNorm: a head), two passes over the
   * group (mean, then the biased variance of the deviations), weight and bias per channel.
   */
  norm: shader(["y", "x", "w", "b"], ["y"], "groups: u32, N: u32, H: u32, eps: f32", `
  if (grp >= p.groups) { return; }
  let o = grp * p.N;
  let c0 = (grp % p.H) * p.N;
  var s = 0.0;
  for (var j = lane; j < p.N; j += ${WG}u) { s += x[o + j]; }
  let mean = reduce(s, lane) / f32(p.N);
  var q = 0.0;
  for (var j = lane; j < p.N; j += ${WG}u) { let e = x[o + j] - mean; q += e * e; }
  let inv = 1.0 / sqrt(reduce(q, lane) / f32(p.N) + p.eps);
  for (var j = lane; j < p.N; j += ${WG}u) { y[o + j] = (x[o + j] - mean) * inv * w[c0 + j] + b[c0 + j]; }`, GROUP),

  /** RWKV-7 keys per head (backend.ts v7Keys, without the value gate: v7Gate). */
  v7Keys: shader(["aOut", "bOut", "k", "iclr", "kK", "kA"], ["aOut", "bOut", "k"], "groups: u32, N: u32, C: u32", `
  if (grp >= p.groups) { return; }
  let o = grp * p.N;
  let c0 = o % p.C;
  var s = 0.0;
  for (var j = lane; j < p.N; j += ${WG}u) { let q = k[o + j] * kK[c0 + j]; s += q * q; }
  let inv = 1.0 / max(sqrt(reduce(s, lane)), ${NORMALIZE_EPS});
  for (var j = lane; j < p.N; j += ${WG}u) {
    let kk = k[o + j] * kK[c0 + j] * inv;
    k[o + j] *= 1.0 + (iclr[o + j] - 1.0) * kA[c0 + j];
    aOut[o + j] = -kk;
    bOut[o + j] = kk * iclr[o + j];
  }`, GROUP),

  /** RWKV-7 bonus per head: out <- (out + (Σ_j r_j k_j rK_j) v) ⊙ g. */
  v7Bonus: shader(["o", "r", "k", "v", "g", "rK"], ["o"], "groups: u32, N: u32, C: u32", `
  if (grp >= p.groups) { return; }
  let off = grp * p.N;
  let c0 = off % p.C;
  var s = 0.0;
  for (var j = lane; j < p.N; j += ${WG}u) { s += r[off + j] * k[off + j] * rK[c0 + j]; }
  let rk = reduce(s, lane);
  for (var j = lane; j < p.N; j += ${WG}u) { o[off + j] = (o[off + j] + rk * v[off + j]) * g[off + j]; }`, GROUP),

  /** y[r][j] = Σ_i x[r][i] m[r][i·J + j]. */
  rowMatVec: shader(["y", "x", "m"], ["y"], "total: u32, I: u32, J: u32", `
  if (i >= p.total) { return; }
  let r = i / p.J;
  let j = i % p.J;
  var s = 0.0;
  for (var q = 0u; q < p.I; q++) { s += x[r * p.I + q] * m[(r * p.I + q) * p.J + j]; }
  y[i] = s;`),

  /**
   * Soft-capped causal attention, one workgroup per query t: the scores of keys 0 … pos0+t into
   * `s` (row t of an (n, Tk) scratch), their max and the softmax sum by reduction, then each
   * invocation a strided set of the Cv output columns.
   */
  softcapAttention: TANH + shader(["y", "q", "k", "v", "s"], ["y", "s"], "n: u32, D: u32, Cv: u32, pos0: u32, Tk: u32, cap: f32, scale: f32", `
  if (grp >= p.n) { return; }
  let t = grp;
  let keys = p.pos0 + t + 1u;
  let so = t * p.Tk;
  var mx = -3.0e38;
  for (var j = lane; j < keys; j += ${WG}u) {
    var qk = 0.0;
    for (var c = 0u; c < p.D; c++) { qk += q[t * p.D + c] * k[j * p.D + c]; }
    let sc = p.cap * tanh_(p.scale * qk);
    s[so + j] = sc;
    mx = max(mx, sc);
  }
  red[lane] = mx;
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h >>= 1u) {
    if (lane < h) { red[lane] = max(red[lane], red[lane + h]); }
    workgroupBarrier();
  }
  let top = red[0];
  workgroupBarrier();
  var sum = 0.0;
  for (var j = lane; j < keys; j += ${WG}u) { let e = exp(s[so + j] - top); s[so + j] = e; sum += e; }
  let total = reduce(sum, lane);
  storageBarrier();
  for (var c = lane; c < p.Cv; c += ${WG}u) {
    var acc = 0.0;
    for (var j = 0u; j < keys; j++) { acc += s[so + j] * v[j * p.Cv + c]; }
    y[t * p.Cv + c] = acc / total;
  }`, GROUP),

  /** RWKV-4 WKV, one invocation per channel, in the running-maximum form of wkv4-scan.ts. */
  wkv4: shader(["y", "w", "u", "k", "v", "aa", "bb", "pp"], ["y", "aa", "bb", "pp"], "C: u32, row0: u32, T: u32", `
  let c = i;
  if (c >= p.C) { return; }
  var a = aa[c];
  var b = bb[c];
  var q = pp[c];
  for (var t = 0u; t < p.T; t++) {
    let n = (p.row0 + t) * p.C + c;
    let kk = k[n];
    let vv = v[n];
    var ww = u[c] + kk;
    var m = max(q, ww);
    var e1 = exp(q - m);
    var e2 = exp(ww - m);
    y[n] = (e1 * a + e2 * vv) / (e1 * b + e2);
    ww = w[c] + q;
    m = max(ww, kk);
    e1 = exp(ww - m);
    e2 = exp(kk - m);
    a = e1 * a + e2 * vv;
    b = e1 * b + e2;
    q = m;
  }
  aa[c] = a;
  bb[c] = b;
  pp[c] = q;`),

  /**
   * RWKV-5/6 WKV, one invocation per (head h, value index i) holding the column S[h][·][i] in
   * registers: out[i] = Σ_j r_j (u_j k_j v_i + S[j,i]);  S[j,i] <- k_j v_i + decay_j S[j,i].
   */
  wkv5: (N: number) => shader(["y", "r", "k", "v", "decay", "u", "S"], ["y", "S"], "H: u32, C: u32, row0: u32, T: u32, perToken: u32", `
  let h = i / ${N}u;
  let vi = i % ${N}u;
  if (h >= p.H) { return; }
  var s: array<f32, ${N}>;
  let so = h * ${N * N}u + vi;
  for (var j = 0u; j < ${N}u; j++) { s[j] = S[so + j * ${N}u]; }
  let c0 = h * ${N}u;
  for (var t = 0u; t < p.T; t++) {
    let tc = (p.row0 + t) * p.C + c0;
    let dc = select(c0, tc, p.perToken != 0u);
    let vv = v[tc + vi];
    var acc = 0.0;
    for (var j = 0u; j < ${N}u; j++) {
      let kv = k[tc + j] * vv;
      acc += r[tc + j] * (u[c0 + j] * kv + s[j]);
      s[j] = kv + decay[dc + j] * s[j];
    }
    y[tc + vi] = acc;
  }
  for (var j = 0u; j < ${N}u; j++) { S[so + j * ${N}u] = s[j]; }`),

  /**
   * RWKV-7 WKV, one invocation per (head h, value index i) holding the row S[h][i][·] in registers:
   * sa = Σ_j S[i,j] a_j;  S[i,j] <- S[i,j] decay_j + sa b_j + v_i k_j;  y_i = Σ_j S[i,j] r_j.
   */
  wkv7: (N: number) => shader(["y", "r", "decay", "k", "v", "a", "b", "S"], ["y", "S"], "H: u32, C: u32, row0: u32, T: u32", `
  let h = i / ${N}u;
  let vi = i % ${N}u;
  if (h >= p.H) { return; }
  var s: array<f32, ${N}>;
  let so = (h * ${N}u + vi) * ${N}u;
  for (var j = 0u; j < ${N}u; j++) { s[j] = S[so + j]; }
  for (var t = 0u; t < p.T; t++) {
    let c0 = (p.row0 + t) * p.C + h * ${N}u;
    var sa = 0.0;
    for (var j = 0u; j < ${N}u; j++) { sa += s[j] * a[c0 + j]; }
    let vv = v[c0 + vi];
    var acc = 0.0;
    for (var j = 0u; j < ${N}u; j++) {
      let x = s[j] * decay[c0 + j] + sa * b[c0 + j] + vv * k[c0 + j];
      s[j] = x;
      acc += x * r[c0 + j];
    }
    y[c0 + vi] = acc;
  }
  for (var j = 0u; j < ${N}u; j++) { S[so + j] = s[j]; }`),
} as const;
