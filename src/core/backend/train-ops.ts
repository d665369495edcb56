import type { Buf } from "./buffers.js";

/*
 * The element-wise and normalisation ops of RWKV training, each forward beside its backward with
 * the same leading arguments. Backward functions ACCUMULATE (+=) into the gradient buffers they are
 * given (several consumers of one tensor add up) and skip a gradient passed as null.
 *
 * Letters: R = B·T rows, C channels, H heads, N head size, V vocabulary.
 * "Row vector" parameters (C) broadcast over the R rows; their gradients sum over rows.
 */

// ---------------------------------------------------------------- embedding

/** y (R, C) = E[tokens[r]] with E (V, C). */
export function embeddingForward(E: Buf, C: number, tokens: Int32Array, y: Buf): void {
  for (let r = 0; r < tokens.length; r++) {
    const e0 = tokens[r] * C, y0 = r * C;
    for (let c = 0; c < C; c++) y[y0 + c] = E[e0 + c];
  }
}

/** gE[tokens[r]] += gy[r]. */
export function embeddingBackward(_E: Buf, C: number, tokens: Int32Array, gy: Buf, gE: Buf): void {
  for (let r = 0; r < tokens.length; r++) {
    const e0 = tokens[r] * C, y0 = r * C;
    for (let c = 0; c < C; c++) gE[e0 + c] += gy[y0 + c];
  }
}

// ---------------------------------------------------------------- layer norm / group norm

/**
 * Per row and head: y = (x - mean)/sqrt(var + eps) · w + b over each group of N values (biased
 * variance), w/b per channel (H·N). LayerNorm is H = 1, N = C. Saves mean and 1/std per group
 * (R·H each) for the backward.
 */
export function groupNormForward(x: Buf, R: number, H: number, N: number, w: Buf, b: Buf, eps: number,
  y: Buf, mean: Float64Array, rstd: Float64Array): void {
  for (let g = 0; g < R * H; g++) normalizeGroup(x, y, g * N, N, w, b, (g % H) * N, eps, mean, rstd, g);
}

/**
 * One group of the norm, the formula every norm of the reference backend runs (inference's
 * layer and group norms too): y[o…o+N) = (x - mean)/sqrt(var + eps) · w[c0…] + b[c0…], mean
 * and biased variance in f64; the mean and 1/std go to mean[g], rstd[g].
 */
export function normalizeGroup(x: Buf, y: Buf, o: number, N: number, w: Buf, b: Buf, c0: number, eps: number,
  mean: Float64Array, rstd: Float64Array, g: number): void {
  let m = 0;
  for (let j = 0; j < N; j++) m += x[o + j];
  m /= N;
  let v = 0;
  for (let j = 0; j < N; j++) { const d = x[o + j] - m; v += d * d; }
  const rs = 1 / Math.sqrt(v / N + eps);
  mean[g] = m; rstd[g] = rs;
  for (let j = 0; j < N; j++) y[o + j] = (x[o + j] - m) * rs * w[c0 + j] + b[c0 + j];
}

/** gx += rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)) with ĝ = gy·w;  gw += Σ gy x̂;  gb += Σ gy. */
export function groupNormBackward(x: Buf, R: number, H: number, N: number, w: Buf, _b: Buf, _eps: number,
  mean: Float64Array, rstd: Float64Array, gy: Buf, gx: Buf | null, gw: Buf | null, gb: Buf | null): void {
  for (let g = 0; g < R * H; g++) {
    const o = g * N, c0 = (g % H) * N, m = mean[g], rs = rstd[g];
    if (gw) for (let j = 0; j < N; j++) gw[c0 + j] += gy[o + j] * ((x[o + j] - m) * rs);
    if (gb) for (let j = 0; j < N; j++) gb[c0 + j] += gy[o + j];
    let sg = 0, sgx = 0;
    for (let j = 0; j < N; j++) {
      const xh = (x[o + j] - m) * rs, gh = gy[o + j] * w[c0 + j];
      sg += gh; sgx += gh * xh;
    }
    if (!gx) continue;
    sg /= N; sgx /= N;
    for (let j = 0; j < N; j++) {
      const xh = (x[o + j] - m) * rs;
      gx[o + j] += rs * (gy[o + j] * w[c0 + j] - sg - xh * sgx);
    }
  }
}

// ---------------------------------------------------------------- token shift and mixes

/** GPT-mode token shift (ZeroPad2d((0,0,1,-1))): y[b,t] = x[b,t-1], y[b,0] = 0. x, y (B·T, C). */
export function tokenShiftForward(x: Buf, B: number, T: number, C: number, y: Buf): void {
  for (let b = 0; b < B; b++) {
    const o = b * T * C;
    y.fill(0, o, o + C);
    y.set(x.subarray(o, o + (T - 1) * C), o + C);
  }
}

/** gx[b,t-1] += gy[b,t]. */
export function tokenShiftBackward(_x: Buf, B: number, T: number, C: number, gy: Buf, gx: Buf): void {
  for (let b = 0; b < B; b++) {
    const o = b * T * C;
    for (let n = 0; n < (T - 1) * C; n++) gx[o + n] += gy[o + C + n];
  }
}

/*
 * Broadcast ops loop over rows and channels (no per-element modulo) with one pass per requested
 * gradient, so the inner loops carry no branches: these element-wise loops are most of a step's
 * time outside the matrix and WKV kernels.
 */

/** Lerp: y = x + (sx - x)·m, m (C) (v6/v7; v4/v5's mix x·m + sx·(1-m) is the lerp from sx to x). */
export function lerpForward(x: Buf, sx: Buf, m: Buf, C: number, y: Buf): void {
  for (let o = 0; o < x.length; o += C) {
    for (let c = 0; c < C; c++) y[o + c] = x[o + c] + (sx[o + c] - x[o + c]) * m[c];
  }
}

export function lerpBackward(x: Buf, sx: Buf, m: Buf, C: number, gy: Buf, gx: Buf | null, gsx: Buf | null, gm: Buf | null): void {
  for (let o = 0; o < x.length; o += C) {
    if (gx) for (let c = 0; c < C; c++) gx[o + c] += gy[o + c] * (1 - m[c]);
    if (gsx) for (let c = 0; c < C; c++) gsx[o + c] += gy[o + c] * m[c];
    if (gm) for (let c = 0; c < C; c++) gm[c] += gy[o + c] * (sx[o + c] - x[o + c]);
  }
}

/** v6 data-dependent mix: y = x + d·(m + dm), m (C) static, dm (R, C) from the LoRA. */
export function lerpDynForward(x: Buf, d: Buf, m: Buf, dm: Buf, C: number, y: Buf): void {
  for (let o = 0; o < x.length; o += C) {
    for (let c = 0; c < C; c++) y[o + c] = x[o + c] + d[o + c] * (m[c] + dm[o + c]);
  }
}

export function lerpDynBackward(_x: Buf, d: Buf, m: Buf, dm: Buf, C: number, gy: Buf,
  gx: Buf | null, gd: Buf | null, gm: Buf | null, gdm: Buf | null): void {
  for (let o = 0; o < d.length; o += C) {
    if (gx) for (let c = 0; c < C; c++) gx[o + c] += gy[o + c];
    if (gd) for (let c = 0; c < C; c++) gd[o + c] += gy[o + c] * (m[c] + dm[o + c]);
    if (gm) for (let c = 0; c < C; c++) gm[c] += gy[o + c] * d[o + c];
    if (gdm) for (let c = 0; c < C; c++) gdm[o + c] += gy[o + c] * d[o + c];
  }
}

/** v7 value residual: y = v + (vf - v)·gate, all (R, C). */
export function residualMixForward(v: Buf, vf: Buf, gate: Buf, y: Buf): void {
  for (let n = 0; n < v.length; n++) y[n] = v[n] + (vf[n] - v[n]) * gate[n];
}

export function residualMixBackward(v: Buf, vf: Buf, gate: Buf, gy: Buf, gv: Buf | null, gvf: Buf | null, ggate: Buf | null): void {
  const n = v.length;
  if (gv) for (let i = 0; i < n; i++) gv[i] += gy[i] * (1 - gate[i]);
  if (gvf) for (let i = 0; i < n; i++) gvf[i] += gy[i] * gate[i];
  if (ggate) for (let i = 0; i < n; i++) ggate[i] += gy[i] * (vf[i] - v[i]);
}

// ---------------------------------------------------------------- element-wise arithmetic

/** y = a + b (and a·b below); b is (R, C) like a, or a row vector (C) broadcast over the rows. */
export function addForward(a: Buf, b: Buf, C: number, y: Buf): void {
  const n = a.length;
  if (b.length === n) { for (let i = 0; i < n; i++) y[i] = a[i] + b[i]; return; }
  for (let o = 0; o < n; o += C) for (let c = 0; c < C; c++) y[o + c] = a[o + c] + b[c];
}

export function addBackward(a: Buf, b: Buf, C: number, gy: Buf, ga: Buf | null, gb: Buf | null): void {
  const n = a.length;
  if (ga) for (let i = 0; i < n; i++) ga[i] += gy[i];
  if (!gb) return;
  if (b.length === n) { for (let i = 0; i < n; i++) gb[i] += gy[i]; return; }
  for (let o = 0; o < n; o += C) for (let c = 0; c < C; c++) gb[c] += gy[o + c];
}

export function mulForward(a: Buf, b: Buf, C: number, y: Buf): void {
  const n = a.length;
  if (b.length === n) { for (let i = 0; i < n; i++) y[i] = a[i] * b[i]; return; }
  for (let o = 0; o < n; o += C) for (let c = 0; c < C; c++) y[o + c] = a[o + c] * b[c];
}

export function mulBackward(a: Buf, b: Buf, C: number, gy: Buf, ga: Buf | null, gb: Buf | null): void {
  const n = a.length;
  if (b.length === n) {
    if (ga) for (let i = 0; i < n; i++) ga[i] += gy[i] * b[i];
    if (gb) for (let i = 0; i < n; i++) gb[i] += gy[i] * a[i];
    return;
  }
  for (let o = 0; o < n; o += C) {
    if (ga) for (let c = 0; c < C; c++) ga[o + c] += gy[o + c] * b[c];
    if (gb) for (let c = 0; c < C; c++) gb[c] += gy[o + c] * a[o + c];
  }
}

/** y = a - b, both (R, C). */
export function subForward(a: Buf, b: Buf, y: Buf): void {
  for (let n = 0; n < a.length; n++) y[n] = a[n] - b[n];
}

export function subBackward(_a: Buf, _b: Buf, gy: Buf, ga: Buf | null, gb: Buf | null): void {
  if (ga) for (let n = 0; n < gy.length; n++) ga[n] += gy[n];
  if (gb) for (let n = 0; n < gy.length; n++) gb[n] -= gy[n];
}

/** y = s·a for a constant s. */
export function scaleForward(a: Buf, s: number, y: Buf): void {
  for (let n = 0; n < a.length; n++) y[n] = a[n] * s;
}

export function scaleBackward(_a: Buf, s: number, gy: Buf, ga: Buf): void {
  for (let n = 0; n < gy.length; n++) ga[n] += gy[n] * s;
}

// ---------------------------------------------------------------- activations

/**
 * "v7decay" is the soft clamp the v7 kernels apply to w0 + lora: wraw = -softplus(-z) - 0.5, so
 * that exp(-exp(wraw)) = exp(-e^{-1/2} σ(z)) (the inference form) and d wraw/dz = σ(-z).
 */
export type Activation = "sigmoid" | "tanh" | "relu2" | "silu" | "v7decay";

/** The constant of the v7 decay clamp: wraw < -1/2. */
const V7_DECAY_OFFSET = 0.5;

const sigm = (x: number): number => 1 / (1 + Math.exp(-x));

/** softplus(x) = log(1 + e^x), without overflow for large x. */
function softplus(x: number): number {
  return x > 0 ? x + Math.log1p(Math.exp(-x)) : Math.log1p(Math.exp(x));
}

export function activationForward(f: Activation, x: Buf, y: Buf): void {
  const n = x.length;
  switch (f) {
    case "sigmoid": for (let i = 0; i < n; i++) y[i] = sigm(x[i]); break;
    case "tanh": for (let i = 0; i < n; i++) y[i] = Math.tanh(x[i]); break;
    case "relu2": for (let i = 0; i < n; i++) { const v = x[i] > 0 ? x[i] : 0; y[i] = v * v; } break;
    case "silu": for (let i = 0; i < n; i++) y[i] = x[i] * sigm(x[i]); break;
    case "v7decay": for (let i = 0; i < n; i++) y[i] = -softplus(-x[i]) - V7_DECAY_OFFSET; break;
  }
}

/** gx += gy · f'(x), using the saved output y where that is cheaper. */
export function activationBackward(f: Activation, x: Buf, y: Buf, gy: Buf, gx: Buf): void {
  const n = x.length;
  switch (f) {
    case "sigmoid": for (let i = 0; i < n; i++) gx[i] += gy[i] * y[i] * (1 - y[i]); break;
    case "tanh": for (let i = 0; i < n; i++) gx[i] += gy[i] * (1 - y[i] * y[i]); break;
    case "relu2": for (let i = 0; i < n; i++) if (x[i] > 0) gx[i] += gy[i] * 2 * x[i]; break;
    case "silu": for (let i = 0; i < n; i++) { const s = sigm(x[i]); gx[i] += gy[i] * s * (1 + x[i] * (1 - s)); } break;
    case "v7decay": for (let i = 0; i < n; i++) gx[i] += gy[i] * sigm(-x[i]); break;
  }
}

// ---------------------------------------------------------------- v7 pieces

/** F.normalize's eps: x / max(‖x‖, eps). */
export const NORMALIZE_EPS = 1e-12;

/** Each of the R·H groups of N values divided by its L2 norm (clamped below at eps). Saves the norms. */
export function l2NormalizeForward(x: Buf, groups: number, N: number, y: Buf, norm: Float64Array): void {
  for (let g = 0; g < groups; g++) {
    const o = g * N;
    let ss = 0;
    for (let j = 0; j < N; j++) ss += x[o + j] * x[o + j];
    const nm = Math.max(Math.sqrt(ss), NORMALIZE_EPS);
    norm[g] = nm;
    for (let j = 0; j < N; j++) y[o + j] = x[o + j] / nm;
  }
}

/** gx += (gy - ŷ(ŷ·gy))/‖x‖ (or gy/eps where the clamp is active). */
export function l2NormalizeBackward(x: Buf, groups: number, N: number, norm: Float64Array, gy: Buf, gx: Buf): void {
  for (let g = 0; g < groups; g++) {
    const o = g * N, nm = norm[g];
    if (nm <= NORMALIZE_EPS) {
      for (let j = 0; j < N; j++) gx[o + j] += gy[o + j] / nm;
      continue;
    }
    let dot = 0;
    for (let j = 0; j < N; j++) dot += x[o + j] * gy[o + j];
    const k = dot / (nm * nm * nm);
    for (let j = 0; j < N; j++) gx[o + j] += gy[o + j] / nm - x[o + j] * k;
  }
}

/** v7 key update: y = k·(1 + (a - 1)·k_a), k and a (R, C), k_a (C). */
export function keyUpdateForward(k: Buf, a: Buf, ka: Buf, C: number, y: Buf): void {
  for (let o = 0; o < k.length; o += C) {
    for (let c = 0; c < C; c++) y[o + c] = k[o + c] * (1 + (a[o + c] - 1) * ka[c]);
  }
}

export function keyUpdateBackward(k: Buf, a: Buf, ka: Buf, C: number, gy: Buf, gk: Buf | null, ga: Buf | null, gka: Buf | null): void {
  for (let o = 0; o < k.length; o += C) {
    if (gk) for (let c = 0; c < C; c++) gk[o + c] += gy[o + c] * (1 + (a[o + c] - 1) * ka[c]);
    if (ga) for (let c = 0; c < C; c++) ga[o + c] += gy[o + c] * k[o + c] * ka[c];
    if (gka) for (let c = 0; c < C; c++) gka[c] += gy[o + c] * k[o + c] * (a[o + c] - 1);
  }
}

/** v7 per-head "bonus": y[h] = (Σ_j r_j k_j rk_j) · v[h], all (R, H·N), rk (H·N). */
export function bonusForward(r: Buf, k: Buf, v: Buf, rk: Buf, R: number, H: number, N: number, y: Buf): void {
  for (let g = 0; g < R * H; g++) {
    const o = g * N, c0 = (g % H) * N;
    let s = 0;
    for (let j = 0; j < N; j++) s += r[o + j] * k[o + j] * rk[c0 + j];
    for (let j = 0; j < N; j++) y[o + j] = s * v[o + j];
  }
}

export function bonusBackward(r: Buf, k: Buf, v: Buf, rk: Buf, R: number, H: number, N: number, gy: Buf,
  gr: Buf | null, gk: Buf | null, gv: Buf | null, grk: Buf | null): void {
  for (let g = 0; g < R * H; g++) {
    const o = g * N, c0 = (g % H) * N;
    let s = 0, gs = 0;
    for (let j = 0; j < N; j++) { s += r[o + j] * k[o + j] * rk[c0 + j]; gs += gy[o + j] * v[o + j]; }
    if (gv) for (let j = 0; j < N; j++) gv[o + j] += gy[o + j] * s;
    if (gr) for (let j = 0; j < N; j++) gr[o + j] += gs * k[o + j] * rk[c0 + j];
    if (gk) for (let j = 0; j < N; j++) gk[o + j] += gs * r[o + j] * rk[c0 + j];
    if (grk) for (let j = 0; j < N; j++) grk[c0 + j] += gs * r[o + j] * k[o + j];
  }
}

// ---------------------------------------------------------------- column slices (v6 LoRA blocks)

/** y (R, n) = x[:, c0 : c0+n] of x (R, W). */
export function sliceColsForward(x: Buf, R: number, W: number, c0: number, n: number, y: Buf): void {
  for (let r = 0; r < R; r++) for (let j = 0; j < n; j++) y[r * n + j] = x[r * W + c0 + j];
}

export function sliceColsBackward(_x: Buf, R: number, W: number, c0: number, n: number, gy: Buf, gx: Buf): void {
  for (let r = 0; r < R; r++) for (let j = 0; j < n; j++) gx[r * W + c0 + j] += gy[r * n + j];
}

// ---------------------------------------------------------------- loss

/** Ignored target (no loss at that position), like torch's ignore_index. */
export const IGNORE_TARGET = -1;
/** The official L2Wrap factor: 1e-4 / (B·T) at each position's argmax logit. */
export const L2WRAP_SCALE = 1e-4;

/**
 * Mean next-token cross entropy over the rows whose target is not IGNORE_TARGET. logits (R, V).
 * Saves each row's log-sum-exp. Returns the loss (no L2Wrap: it only changes the backward).
 */
export function crossEntropyForward(logits: Buf, R: number, V: number, targets: Int32Array, lse: Float64Array): number {
  let sum = 0, count = 0;
  for (let r = 0; r < R; r++) {
    const o = r * V;
    let mx = -Infinity;
    for (let v = 0; v < V; v++) if (logits[o + v] > mx) mx = logits[o + v];
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits[o + v] - mx);
    lse[r] = mx + Math.log(s);
    if (targets[r] !== IGNORE_TARGET) { sum += lse[r] - logits[o + targets[r]]; count++; }
  }
  return count > 0 ? sum / count : 0;
}

/**
 * gl += (softmax - onehot)/count · gLoss; with l2wrap, also, at every row's argmax (the first
 * maximum, as torch.max), max_logit · 1e-4/R — independent of gLoss, as the official L2Wrap.
 */
export function crossEntropyBackward(logits: Buf, R: number, V: number, targets: Int32Array, lse: Float64Array,
  gLoss: number, l2wrap: boolean, gl: Buf): void {
  let count = 0;
  for (let r = 0; r < R; r++) if (targets[r] !== IGNORE_TARGET) count++;
  const scale = count > 0 ? gLoss / count : 0;
  for (let r = 0; r < R; r++) {
    const o = r * V;
    if (targets[r] !== IGNORE_TARGET) {
      for (let v = 0; v < V; v++) gl[o + v] += Math.exp(logits[o + v] - lse[r]) * scale;
      gl[o + targets[r]] -= scale;
    }
    if (l2wrap) {
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[o + v] > logits[o + best]) best = v;
      gl[o + best] += logits[o + best] * (L2WRAP_SCALE / R);
    }
  }
}

// ---------------------------------------------------------------- replaceable ops

/**
 * The ops of the training graph other than products and WKV scans: a kernel set replaces them with
 * faster ones of the same signature and meaning (TrainKernels.ops), or keeps these, which are the
 * specification. Graph calls every one of them through its kernels' table.
 */
export interface TrainOps {
  readonly embeddingForward: typeof embeddingForward;
  readonly embeddingBackward: typeof embeddingBackward;
  readonly tokenShiftForward: typeof tokenShiftForward;
  readonly tokenShiftBackward: typeof tokenShiftBackward;
  readonly lerpDynForward: typeof lerpDynForward;
  readonly lerpDynBackward: typeof lerpDynBackward;
  readonly subForward: typeof subForward;
  readonly subBackward: typeof subBackward;
  readonly scaleForward: typeof scaleForward;
  readonly scaleBackward: typeof scaleBackward;
  readonly sliceColsForward: typeof sliceColsForward;
  readonly sliceColsBackward: typeof sliceColsBackward;
  readonly crossEntropyForward: typeof crossEntropyForward;
  readonly crossEntropyBackward: typeof crossEntropyBackward;
  readonly lerpForward: typeof lerpForward;
  readonly lerpBackward: typeof lerpBackward;
  readonly addForward: typeof addForward;
  readonly addBackward: typeof addBackward;
  readonly mulForward: typeof mulForward;
  readonly mulBackward: typeof mulBackward;
  readonly activationForward: typeof activationForward;
  readonly activationBackward: typeof activationBackward;
  readonly groupNormForward: typeof groupNormForward;
  readonly groupNormBackward: typeof groupNormBackward;
  readonly residualMixForward: typeof residualMixForward;
  readonly residualMixBackward: typeof residualMixBackward;
  readonly keyUpdateForward: typeof keyUpdateForward;
  readonly keyUpdateBackward: typeof keyUpdateBackward;
  readonly l2NormalizeForward: typeof l2NormalizeForward;
  readonly l2NormalizeBackward: typeof l2NormalizeBackward;
  readonly bonusForward: typeof bonusForward;
  readonly bonusBackward: typeof bonusBackward;
}

export const referenceOps: TrainOps = {
  embeddingForward, embeddingBackward, tokenShiftForward, tokenShiftBackward,
  lerpDynForward, lerpDynBackward, subForward, subBackward, scaleForward, scaleBackward,
  sliceColsForward, sliceColsBackward, crossEntropyForward, crossEntropyBackward,
  lerpForward, lerpBackward, addForward, addBackward, mulForward, mulBackward,
  activationForward, activationBackward, groupNormForward, groupNormBackward,
  residualMixForward, residualMixBackward, keyUpdateForward, keyUpdateBackward,
  l2NormalizeForward, l2NormalizeBackward, bonusForward, bonusBackward,
};
