/**
 * One channel of the RWKV-4 WKV (SPEC §3) in the CUDA kernel's running-maximum form: the one scan
 * that both the reference inference kernel (reference.ts, from a saved state) and the reference
 * training forward (train/wkv.ts, from the empty state) run, so the math is written once.
 *
 * w = -exp(time_decay), u = time_first of this channel. The T steps' k, v and y sit at
 * `at`, `at + stride`, …; `s` holds the running state [aa, bb, pp] in and out. Sums are JS numbers
 * (f64) whatever the arrays' type, rounded only when stored.
 */
export function wkv4Channel(w: number, u: number, k: Float32Array | Float64Array, v: Float32Array | Float64Array,
  y: Float32Array | Float64Array, at: number, stride: number, T: number, s: Float64Array): void {
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
