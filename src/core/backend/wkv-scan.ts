/**
 * The WKV recurrences of the reference backend, one per version, written once: the inference
 * scans (reference.ts: one sequence from a carried state) and the training forward and backward
 * (wkv-train.ts: B sequences from the empty or a trained state, with state checkpoints) all step
 * through these functions, so the two cannot drift apart. SPEC §3-§6.
 *
 * Letters: N head size, C channels. Sums are JS numbers (f64) whatever the arrays' type, rounded
 * only when stored: a state held in a Float32Array (inference) is rounded once per step, one in a
 * Float64Array (training) is not.
 */

/** Storage a scan reads and writes: f32 (inference, f32 training) or f64 (gradient checks). */
export type Vec = Float32Array | Float64Array;

/**
 * One channel of the RWKV-4 WKV (SPEC §3) in the CUDA kernel's running-maximum form.
 * w = -exp(time_decay), u = time_first of this channel. The T steps' k, v and y sit at
 * `at`, `at + stride`, …; `s` holds the running state [aa, bb, pp] in and out.
 */
export function wkv4Channel(w: number, u: number, k: Vec, v: Vec, y: Vec, at: number, stride: number, T: number, s: Float64Array): void {
  let aa = s[0], bb = s[1], pp = s[2];
  for (let t = 0, n = at; t < T; t++, n += stride) {
    const kk = k[n], vv = v[n];
    let ww = u + kk;
    let p = Math.max(pp, ww);
    let e1 = Math.exp(pp - p), e2 = Math.exp(ww - p);
    y[n] = (e1 * aa + e2 * vv) / (e1 * bb + e2);
    ww = w + pp;
    p = Math.max(ww, kk);
    e1 = Math.exp(ww - p);
    e2 = Math.exp(kk - p);
    aa = e1 * aa + e2 * vv;
    bb = e1 * bb + e2;
    pp = p;
  }
  s[0] = aa; s[1] = bb; s[2] = pp;
}

/**
 * One step's per-head vectors, copied out of the (rows, C) inputs into f64 scratch once per step:
 * the inner loops then read monomorphic Float64Arrays and never index the big inputs. The decay
 * d comes either as the multiplicative decay itself (inference: the model computed it) or from
 * the raw w of training, d = exp(-exp(w)), keeping ew = exp(w) for the gradient.
 */
export class WkvStep {
  readonly r: Float64Array; readonly d: Float64Array; readonly ew: Float64Array; readonly k: Float64Array;
  readonly v: Float64Array; readonly a: Float64Array; readonly b: Float64Array; readonly u: Float64Array;
  constructor(N: number) {
    [this.r, this.d, this.ew, this.k, this.v, this.a, this.b, this.u] = Array.from({ length: 8 }, () => new Float64Array(N));
  }
  /** d from raw w at w[wo…]: d = exp(-exp(w)). */
  rawDecay(N: number, w: Vec, wo: number): void {
    for (let j = 0; j < N; j++) { const e = Math.exp(w[wo + j]); this.ew[j] = e; this.d[j] = Math.exp(-e); }
  }
  /** d given at decay[wo…]. */
  decay(N: number, decay: Vec, wo: number): void {
    for (let j = 0; j < N; j++) this.d[j] = decay[wo + j];
  }
  /** RWKV-5/6 inputs at row offset o (u at uo). */
  load5(N: number, o: number, r: Vec, k: Vec, v: Vec, u: Vec, uo: number): void {
    for (let j = 0; j < N; j++) { this.r[j] = r[o + j]; this.k[j] = k[o + j]; this.v[j] = v[o + j]; this.u[j] = u[uo + j]; }
  }
  /** RWKV-7 inputs at row offset o. */
  load7(N: number, o: number, r: Vec, k: Vec, v: Vec, a: Vec, b: Vec): void {
    for (let j = 0; j < N; j++) { this.r[j] = r[o + j]; this.k[j] = k[o + j]; this.v[j] = v[o + j]; this.a[j] = a[o + j]; this.b[j] = b[o + j]; }
  }
}

/**
 * One RWKV-5.2/6 step of a head (SPEC §4, §5), S[j=key][i=value], from the state at S0[p0…] into
 * S1[p1…] (the same array and offset: in place):
 *   y[i] = Σ_j r[j] (u[j] k[j] v[i] + S[j,i]);   S[j,i] <- k[j] v[i] + d[j] S[j,i]
 */
export function wkv5Step(S0: Vec, p0: number, S1: Vec, p1: number, N: number, st: WkvStep, y: Float64Array): void {
  const { r, k, v, u, d } = st;
  y.fill(0);
  for (let j = 0; j < N; j++) {
    const rj = r[j], kj = k[j], ukj = u[j] * kj, dj = d[j], q0 = p0 + j * N, q1 = p1 + j * N;
    for (let i = 0; i < N; i++) {
      const vi = v[i], s = S0[q0 + i];
      y[i] += rj * (ukj * vi + s);
      S1[q1 + i] = kj * vi + dj * s;
    }
  }
}

/**
 * One RWKV-7 step of a head (SPEC §6), S[i=value][j=key], from the state at S0[p0…] into S1[p1…]
 * (the same array and offset: in place):
 *   sa = S a;  S <- S diag(d) + sa bᵀ + v kᵀ;  y = S r
 * Writes y (N) and sa (N, which the backward reuses). Two rows per pass share the loads of the
 * step's vectors; each row's arithmetic is that of a row alone.
 */
export function wkv7Step(S0: Vec, p0: number, S1: Vec, p1: number, N: number, st: WkvStep, y: Float64Array, sa: Float64Array): void {
  const { r, d, k, v, a, b } = st;
  let i = 0;
  for (; i + 1 < N; i += 2) {
    const r0 = p0 + i * N, r1 = r0 + N, w0 = p1 + i * N, w1 = w0 + N;
    let s0 = 0, s1 = 0;
    for (let j = 0; j < N; j++) { const aj = a[j]; s0 += S0[r0 + j] * aj; s1 += S0[r1 + j] * aj; }
    sa[i] = s0; sa[i + 1] = s1;
    const v0 = v[i], v1 = v[i + 1];
    let y0 = 0, y1 = 0;
    for (let j = 0; j < N; j++) {
      const dj = d[j], bj = b[j], kj = k[j], rj = r[j];
      const x0 = S0[r0 + j] * dj + s0 * bj + v0 * kj, x1 = S0[r1 + j] * dj + s1 * bj + v1 * kj;
      S1[w0 + j] = x0; S1[w1 + j] = x1;
      y0 += x0 * rj; y1 += x1 * rj;
    }
    y[i] = y0; y[i + 1] = y1;
  }
  for (; i < N; i++) {
    const r0 = p0 + i * N, w0 = p1 + i * N;
    let s0 = 0;
    for (let j = 0; j < N; j++) s0 += S0[r0 + j] * a[j];
    sa[i] = s0;
    let y0 = 0;
    for (let j = 0; j < N; j++) { const x0 = S0[r0 + j] * d[j] + s0 * b[j] + v[i] * k[j]; S1[w0 + j] = x0; y0 += x0 * r[j]; }
    y[i] = y0;
  }
}
