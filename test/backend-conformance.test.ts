import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { type Activation, backwardOf, type Backend, INFERENCE_OPS, type Matrix, type Tensor, type TensorKernels, TRAINING_OPS, type WeightType } from "../src/core/backend/backend.js";
import { referenceBackend as ref } from "../src/core/backend/reference.js";
import { availableBackends, selectBackend, supports, trainingKernels } from "../src/core/backend/registry.js";
import { referenceTrainKernels } from "../src/core/backend/train-kernels.js";
import { WasmTrainKernels, wasmTraining } from "../src/core/backend/wasm-train.js";
import { TRAIN_OP_CHECKS, type TrainOpCheck } from "./train-op-checks.js";
import { relaxedSimdAvailable, WasmBackend, type WasmSimd, wasmAvailable } from "../src/core/backend/wasm.js";
import { decodeMatrix, decodeWeightRow, f16sPosition, q5sBit, toQ5s } from "../src/core/backend/weight-rows.js";
import { assertWithin, BLOCK_BYTES, INT_TYPES, matmulBounds, randomMatrix, rng, U } from "./matmul-check.js";
import { matmulQuantizedActivations } from "../src/core/backend/int-activations.js";
import { f32ToF16 } from "../src/core/tensor.js";
import { wasmBackend } from "../src/node/threads/pool.js";

/*
 * One conformance suite for every backend: each kernel against the reference kernels (the
 * specification) on random shapes with odd sizes and tails, every weight type, WKV scans with
 * state carried across calls. Tolerances are error bounds, not fudge factors:
 *
 *  - float matmul (f32/f16/bf16): the reference sums in f64, a backend in f32 in any order, so
 *    |y - ref| <= (I + 2)·2^-24·Σ|w_i x_i| (the classic bound for recursive summation, with the
 *    final rounding).
 *  - integer matmul (ggml block types, i8): a backend may quantize activations per block of 32 to
 *    int8 (as rwkv.cpp does): x_i is replaced by q_i·d_b with |q_i·d_b - x_i| <= d_b/2,
 *    d_b = max_b|x|/127, so add Σ_b (d_b/2)·Σ_{i in b}|w_i| (0.501 for the rounding of x·127/max).
 *  - norms: f64 statistics in both; 1e-6 relative covers any f32 re-association.
 *  - activations: both compute in f64 and round to f32, so they differ by at most 1 f32 ulp (only
 *    where the f64 values straddle a rounding boundary), and almost every element is identical.
 *  - WKV scans: states and outputs within 2e-5 of the largest magnitude of that array, after two
 *    calls (state carry) of up to 17 tokens: f32 reordering of N-term sums over a few steps.
 *
 * Thread counts must not change results at all: 2 threads are compared with 1 bit for bit.
 * The training half of each backend's table (every TrainingOp, forward and backward) is checked
 * the same way by the checks of test/train-op-checks.ts.
 * The relaxed-SIMD build runs where validated; Node 20 needs --experimental-wasm-relaxed-simd, so
 * a child process with that flag runs this suite on it (RWKV_CONFORMANCE=relaxed-simd).
 */

const ONLY = process.env.RWKV_CONFORMANCE as WasmSimd | undefined;

interface Candidate { readonly label: string; readonly backend: Backend; readonly single?: Backend }

function candidates(): Candidate[] {
  const out: Candidate[] = [];
  if (!wasmAvailable()) return out;
  const builds: WasmSimd[] = ONLY ? [ONLY] : ["simd", ...(relaxedSimdAvailable() ? ["relaxed-simd" as const] : [])];
  for (const simd of builds) {
    const one = new WasmBackend({ simd, training: wasmTraining });
    out.push({ label: `wasm ${simd} 1 thread`, backend: one });
    out.push({ label: `wasm ${simd} 2 threads`, backend: wasmBackend(2, simd)!, single: one });
  }
  if (!ONLY) {
    for (const name of availableBackends()) {
      if (name === "reference" || name === "wasm") continue; // wasm is covered build by build above
      out.push({ label: name, backend: selectBackend(name) });
    }
  }
  return out;
}

/** The WKV tolerance: 2e-5 of the array's largest magnitude. */
function scaled(want: Float32Array): () => number {
  let m = 0;
  for (const v of want) m = Math.max(m, Math.abs(v));
  const tol = WKV_RTOL * m + 1e-30;
  return () => tol;
}
const WKV_RTOL = 2e-5;

/** Distance of two f32 values in units in the last place (NaN vs NaN: 0; NaN vs a number: Infinity). */
function ulps(a: number, b: number): number {
  if (Number.isNaN(a) || Number.isNaN(b)) return Number.isNaN(a) && Number.isNaN(b) ? 0 : Infinity;
  const bits = new Int32Array(new Float32Array([a, b]).buffer);
  const ordered = (i: number): number => (i < 0 ? -(i & 0x7fffffff) : i); // monotonic in the value, ±0 equal
  return Math.abs(ordered(bits[0]) - ordered(bits[1]));
}

const ACTIVATIONS: Activation[] = ["sigmoid", "tanh", "silu", "relu2", "exp"];
/** Edge inputs: zeros, tiny, around tanh's small-argument switch (1e-3), f32/f64 exp overflow and underflow, Inf, NaN. */
const ACTIVATION_EDGES = [0, -0, 1e-40, -1e-40, 1e-8, -1e-8, 9.99e-4, 1.001e-3, -1e-3, 0.5, -0.5, 20, -20, 88.7, 88.8, -87.3,
  -103.9, -104, 104, 709.7, 710, -745, -746, 800, -800, Infinity, -Infinity, NaN];

const TYPES: WeightType[] = ["f32", "f16", "bf16", "i8", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1"];
const TS = [1, 2, 3, 17, 64];

for (const c of candidates()) {
  test(`conformance ${c.label}: matmul, every weight type, odd shapes and tails`, () => {
    const r = rng(7);
    for (const type of TYPES) {
      const block = BLOCK_BYTES[type] !== undefined;
      // cols: tails of 4/8/16 lanes and of the 32-element activation blocks (non-block types only).
      const shapes: Array<[number, number]> = block ? [[1, 32], [5, 64], [17, 96], [40, 160]] : [[1, 13], [5, 4], [17, 37], [3, 100], [40, 64], [33, 161]];
      for (const [O, I] of shapes) {
        const W = randomMatrix(type, O, I, r);
        const A = c.backend.adopt(W);
        const A1 = c.single?.adopt(W);
        for (const T of TS) {
          const x = Float32Array.from({ length: T * I }, () => r() * (r() > 0.9 ? 8 : 1)); // some outliers
          const want = ref.matmul(x, T, W);
          const got = c.backend.matmul(x, T, A);
          const bound = matmulBounds(x, T, W);
          assertWithin(got, want, (i) => bound[i], `${type} O=${O} I=${I} T=${T}`);
          if (A1) assert.deepEqual(got, c.single!.matmul(x, T, A1), `${type} O=${O} I=${I} T=${T}: 2 threads differ from 1`);
        }
        // The adopted matrix still reads back as the same weights (fingerprints, tools).
        const a = new Float32Array(I), b = new Float32Array(I);
        for (const o of [0, O - 1]) assert.deepEqual(decodeWeightRow(A, o, a), decodeWeightRow(W, o, b), `${type} row ${o} after adopt`);
      }
    }
  });

  test(`conformance ${c.label}: matmul rows are independent of T (step = one row of a sequence)`, () => {
    const r = rng(11);
    // 3072 columns x 41 rows: more activation rows than the kernels' L2 tile (16 float rows, 28 of
    // i16, 36 of i8 here), so rows in the second tile, and its 4-row groups and remainders, are checked.
    for (const type of TYPES) {
      for (const [I, O, T, rows] of [[96, 24, 17, [0, 5, 16]], [3072, 5, 41, [0, 15, 16, 27, 28, 35, 36, 40]]] as const) {
        const A = c.backend.adopt(randomMatrix(type, O, I, r));
        const x = Float32Array.from({ length: T * I }, () => r());
        const all = c.backend.matmul(x, T, A);
        for (const t of rows) {
          assert.deepEqual(c.backend.matmul(x.subarray(t * I, (t + 1) * I), 1, A), all.subarray(t * O, (t + 1) * O), `${type} I=${I} row ${t}`);
        }
      }
    }
  });

  test(`conformance ${c.label}: f16 weights with subnormals, zeros, ±max and weights too large to rescale`, () => {
    const r = rng(17);
    const O = 9, I = 40;
    for (const big of [false, true]) {
      // A third subnormal (|w| < 2^-14), some signed zeros, the f16 extremes; `big` adds |w| >= 64.
      const bits = Uint16Array.from({ length: O * I }, (_, n) => {
        const u = Math.abs(r());
        if (n % 3 === 0) return (u < 0.5 ? 0x8000 : 0) | Math.floor(u * 1023 + 1); // subnormal
        if (n % 17 === 0) return n % 2 ? 0x8000 : 0;
        if (n % 29 === 0) return big ? f32ToF16(100 * r()) : 0x53ff; // 100·r(), or 63.97: the largest f16s holds
        return f32ToF16(r());
      });
      const W: Matrix = { rows: O, cols: I, type: "f16", data: bits };
      const A = c.backend.adopt(W);
      if (c.label.startsWith("wasm")) assert.equal(A.type, big ? "f16" : "f16s", "wasm keeps f16 subnormal-free when it can");
      for (const T of [1, 5]) {
        const x = Float32Array.from({ length: T * I }, () => r() * 1e-3);
        const bound = matmulBounds(x, T, W);
        assertWithin(c.backend.matmul(x, T, A), ref.matmul(x, T, W), (i) => bound[i], `f16 big=${big} T=${T}`);
      }
      const a = new Float32Array(I), b = new Float32Array(I);
      for (let o = 0; o < O; o++) assert.deepEqual(decodeWeightRow(A, o, a), decodeWeightRow(W, o, b), `f16 big=${big} row ${o}`);
    }
  });

  test(`conformance ${c.label}: f16 weights give the products of their exact f32 values, bit for bit (reordered f16s, prescaled x)`, () => {
    if (!c.label.startsWith("wasm")) return;
    // The f16s conversion is exact and keeps the canonical summation order, so an f16 matrix must
    // give exactly what the same backend gives for its decoded f32 values: for every tail of the
    // 8-column groups, T = 1 (the matvec, x prescaled or, past 2^25, not) and T > 1 (panels).
    const r = rng(23);
    for (const [O, I] of [[1, 8], [7, 13], [9, 16], [16, 44], [21, 161], [64, 768]] as const) {
      const bits = Uint16Array.from({ length: O * I }, (_, n) => (n % 7 === 0 ? (n & 0x8000) | (n % 1023) + 1 : f32ToF16(r() * 4)));
      const W: Matrix = { rows: O, cols: I, type: "f16", data: bits };
      const A = c.backend.adopt(W);
      assert.equal(A.type, "f16s");
      const F = c.backend.adopt({ rows: O, cols: I, type: "f32", data: decodeMatrix(W) });
      for (const T of [1, 3]) {
        for (const big of [1, 1e9]) {
          const x = Float32Array.from({ length: T * I }, (_, i) => r() * (i === 5 ? big : 1));
          assert.deepEqual(c.backend.matmul(x, T, A), c.backend.matmul(x, T, F), `O=${O} I=${I} T=${T} max|x|≈${big}`);
        }
      }
    }
  });

  test(`conformance ${c.label}: activations within 1 ulp of the reference, edges included`, (t) => {
    const r = rng(19);
    let same = 0, total = 0;
    for (const f of ACTIVATIONS) {
      for (const scale of [1, -Math.exp(-0.5), -1]) {
        for (const n of [1, 3, 4, 5, 17, 768, 70001]) { // tails; 70001: the parallel path with 2 threads
          const x = Float32Array.from({ length: n }, (_, i) => (i < ACTIVATION_EDGES.length && n > 100 ? ACTIVATION_EDGES[i] : 12 * r()));
          const want = ref.activate(f, x.slice(), scale);
          const got = c.backend.activate(f, x.slice(), scale);
          for (let i = 0; i < n; i++) {
            const d = ulps(got[i], want[i]);
            if (!(d <= 1)) assert.fail(`${f} scale ${scale} n=${n} x[${i}]=${x[i]}: got ${got[i]}, reference ${want[i]} (${d} ulps)`);
            if (f === "relu2" && d !== 0) assert.fail(`relu2 x=${x[i]}: an f32 square must be exact, got ${got[i]} vs ${want[i]}`);
            same += Object.is(got[i], want[i]) || (Number.isNaN(got[i]) && Number.isNaN(want[i])) ? 1 : 0;
            total++;
          }
          if (c.single) assert.deepEqual(got, c.single.activate(f, x.slice(), scale), `${f} n=${n}: 2 threads differ from 1`);
        }
      }
    }
    assert.ok(same / total > 0.9999, `only ${same} of ${total} activations equal the reference exactly`);
    t.diagnostic(`${total - same} of ${total} activations differ from the reference (by 1 ulp)`);
  });

  test(`conformance ${c.label}: layerNorm and groupNorm`, () => {
    const r = rng(3);
    for (const [T, H, N] of [[1, 1, 7], [3, 1, 768], [17, 4, 13], [2, 12, 64], [64, 3, 5]]) {
      const C = H * N;
      const x = Float32Array.from({ length: T * C }, () => 3 * r() + 0.5);
      const w = Float32Array.from({ length: C }, () => r()), b = Float32Array.from({ length: C }, () => r());
      const tol = (want: Float32Array) => (i: number) => 1e-6 * (1 + Math.abs(want[i]));
      let want = ref.layerNorm(x, T, C, w, b, 1e-5);
      assertWithin(c.backend.layerNorm(x, T, C, w, b, 1e-5), want, tol(want), `layerNorm T=${T} C=${C}`);
      want = ref.groupNorm(x, T, H, N, w, b, 64e-5);
      assertWithin(c.backend.groupNorm(x, T, H, N, w, b, 64e-5), want, tol(want), `groupNorm T=${T} H=${H} N=${N}`);
      if (c.single) assert.deepEqual(c.backend.groupNorm(x, T, H, N, w, b, 64e-5), c.single.groupNorm(x, T, H, N, w, b, 64e-5));
    }
  });

  test(`conformance ${c.label}: wkv4 with state carry`, () => {
    const r = rng(5);
    for (const [T, C] of [[1, 5], [3, 13], [17, 64], [2, 768]]) {
      const w = Float32Array.from({ length: C }, () => -Math.exp(r())), u = Float32Array.from({ length: C }, () => r());
      const st = () => ({ aa: new Float32Array(C), bb: new Float32Array(C), pp: new Float32Array(C).fill(-1e30) });
      const s1 = st(), s2 = st(), s3 = st();
      for (let call = 0; call < 2; call++) {
        const k = Float32Array.from({ length: T * C }, () => 3 * r()), v = Float32Array.from({ length: T * C }, () => r());
        const want = ref.wkv4(T, C, w, u, k, v, s1);
        const got = c.backend.wkv4(T, C, w, u, k, v, s2);
        assertWithin(got, want, scaled(want), `wkv4 T=${T} C=${C} call ${call}`);
        for (const f of ["aa", "bb", "pp"] as const) assertWithin(s2[f], s1[f], scaled(s1[f]), `wkv4 state ${f}`);
        if (c.single) assert.deepEqual(c.single.wkv4(T, C, w, u, k, v, s3), got, "wkv4: 2 threads differ from 1");
      }
    }
  });

  test(`conformance ${c.label}: wkv5 (constant and per-token decay) with state carry`, () => {
    const r = rng(9);
    for (const [T, H, N] of [[1, 1, 4], [3, 2, 7], [17, 3, 16], [2, 12, 64]]) {
      for (const perToken of [false, true]) {
        const C = H * N;
        const u = Float32Array.from({ length: C }, () => r());
        const S1 = new Float32Array(H * N * N), S2 = new Float32Array(H * N * N), S3 = new Float32Array(H * N * N);
        for (let call = 0; call < 2; call++) {
          const rr = Float32Array.from({ length: T * C }, () => r()), k = Float32Array.from({ length: T * C }, () => r());
          const v = Float32Array.from({ length: T * C }, () => r());
          const decay = Float32Array.from({ length: perToken ? T * C : C }, () => 0.5 + 0.5 * Math.abs(r()));
          const want = ref.wkv5(T, H, N, rr, k, v, decay, u, S1);
          const got = c.backend.wkv5(T, H, N, rr, k, v, decay, u, S2);
          const what = `wkv5 T=${T} H=${H} N=${N} perToken=${perToken} call ${call}`;
          assertWithin(got, want, scaled(want), what);
          assertWithin(S2, S1, scaled(S1), `${what} state`);
          if (c.single) assert.deepEqual(c.single.wkv5(T, H, N, rr, k, v, decay, u, S3), got, `${what}: 2 threads differ from 1`);
        }
      }
    }
  });

  test(`conformance ${c.label}: wkv7 with state carry`, () => {
    const r = rng(13);
    for (const [T, H, N] of [[1, 1, 4], [1, 3, 5], [3, 2, 5], [17, 3, 16], [1, 12, 64], [2, 12, 64], [64, 2, 8]]) {
      const C = H * N;
      const S1 = new Float32Array(H * N * N), S2 = new Float32Array(H * N * N), S3 = new Float32Array(H * N * N);
      for (let call = 0; call < 2; call++) {
        const vec = () => Float32Array.from({ length: T * C }, () => r());
        const rr = vec(), k = vec(), v = vec();
        const decay = Float32Array.from({ length: T * C }, () => 0.55 + 0.45 * Math.abs(r()));
        // a = -kk and b = kk·iclr with kk unit-norm per head, as RWKV-7 feeds them (keeps S bounded).
        const kk = vec();
        for (let g = 0; g < T * H; g++) {
          let s = 0;
          for (let j = 0; j < N; j++) s += kk[g * N + j] ** 2;
          for (let j = 0; j < N; j++) kk[g * N + j] /= Math.sqrt(s) || 1;
        }
        const a = kk.map((z) => -z), b = kk.map((z) => z * Math.abs(r()));
        const want = ref.wkv7(T, H, N, rr, decay, k, v, a, b, S1);
        const got = c.backend.wkv7(T, H, N, rr, decay, k, v, a, b, S2);
        const what = `wkv7 T=${T} H=${H} N=${N} call ${call}`;
        assertWithin(got, want, scaled(want), what);
        assertWithin(S2, S1, scaled(S1), `${what} state`);
        if (c.single) assert.deepEqual(c.single.wkv7(T, H, N, rr, decay, k, v, a, b, S3), got, `${what}: 2 threads differ from 1`);
      }
    }
  });
}

// ---- the integer path against its specification (int-activations.ts) -------------------------

const wasmBuilds: WasmSimd[] = !wasmAvailable() ? [] : ONLY ? [ONLY] : ["simd", ...(relaxedSimdAvailable() ? ["relaxed-simd" as const] : [])];
for (const simd of wasmBuilds) {
  test(`conformance wasm ${simd}: integer matmul equals its specification (activations rounded per block of 32) within f32 rounding, threads 1 and 2 bit for bit`, () => {
    const r = rng(23);
    const one = new WasmBackend({ simd }), two = wasmBackend(2, simd)!;
    // Node 20 and Chromium both compute i16x8.relaxed_dot_i8x16_i7x16_s as specified, so the
    // relaxed build's i8·i7 kernels run (and are checked) here.
    assert.equal(one.i7, simd === "relaxed-simd", "the i8·i7 kernels run exactly in the relaxed build");
    for (const type of INT_TYPES) {
      // T: the prefill tiles' 8-row and 4-row groups and remainders; 3072 columns: several L2 tiles
      // of 24 rows (45 = 24 + 8 + 8 + 4 + 1); 6144 columns: tiles of the 16-row minimum (37 = 16 +
      // 16 + 4 + 1). O = 17, 33: a last group of output rows that is not whole. i8 rows of 37 and
      // 161 end in a partial block. O = 7: the one-row kernels' four streams (rows a quarter apart)
      // leave 3 rows, a pair and one alone.
      const odd = type === "i8";
      const shapes: Array<[number, number, number[]]> = [[1, 32, [1, 4, 9]], [7, odd ? 37 : 64, [1, 2]], [17, odd ? 37 : 96, [2, 3, 4, 5, 8, 12, 17, 64]], [33, odd ? 161 : 160, [13, 64]], [40, 3072, [45]], [6, 6144, [37]]];
      for (const [O, I, Ts] of shapes) {
        const W = randomMatrix(type, O, I, r);
        for (const T of Ts) {
          const x = Float32Array.from({ length: T * I }, () => r() * (r() > 0.9 ? 8 : 1)); // some outliers
          const { y, bound } = matmulQuantizedActivations(x, T, W);
          const what = `${type} O=${O} I=${I} T=${T}`;
          const got = one.matmul(x, T, one.adopt(W));
          for (let i = 0; i < got.length; i++) {
            if (!(Math.abs(got[i] - y[i]) <= bound[i])) assert.fail(`${what}: element ${i}: got ${got[i]}, specification ${y[i]}, bound ${bound[i]}`);
          }
          assert.deepEqual(two.matmul(x, T, two.adopt(W)), got, `${what}: 2 threads differ from 1`);
          // A prompt's logits equal stepping's: each row of a T > 1 product (tiled kernels) has the
          // bits of that row alone (T = 1: the i8·i7 kernels for q4/q5 where one.i7).
          for (const t of T > 1 ? [0, T - 1] : []) {
            const row = one.matmul(x.slice(t * I, (t + 1) * I), 1, one.adopt(W));
            assert.deepEqual(row, got.subarray(t * O, (t + 1) * O), `${what}: row ${t} alone differs from the product's`);
          }
        }
      }
    }
  });

  test(`conformance wasm ${simd}: integer matmuls whose weights end at the memory's end (reading ahead stays inside it): one row, and a prompt's rows past its 4-row groups`, () => {
    const PAGE = 65536, r = rng(29);
    for (const type of INT_TYPES) {
      const be = new WasmBackend({ simd }), O = 40, I = 3072, T = 5; // T = 5: one 4-row group, then one row as stepping reads it
      const x = Float32Array.from({ length: T * I }, () => r()), x1 = x.subarray(0, I);
      // First products of the shapes size the scratch blocks, so the later ones allocate nothing.
      const first = be.adopt(randomMatrix(type, O, I, r));
      be.matmul(x, T, first);
      const firstOne = be.matmul(x1, 1, first);
      const W = randomMatrix(type, O, I, r);
      const away = new WasmBackend({ simd }), wAway = away.adopt(W);
      const block = Math.ceil(away.adoptedInfo(wAway)!.bytes / 64) * 64; // the adopted block, as the allocator aligns it
      const top = be.alloc(PAGE) + PAGE; // larger than any freed block: taken from the top
      const end = Math.ceil((top + block) / PAGE) * PAGE;
      if (end - block > top) be.alloc(end - block - top); // filler: W's block then ends on a page boundary
      const w = be.adopt(W);
      assert.equal(be.adoptedInfo(w)!.ptr + block, end, `${type}: the weights' block ends at ${end}`);
      const prompt = be.matmul(x, T, w);
      const got = be.matmul(x1, 1, w);
      assert.equal(be.f32.buffer.byteLength, end, `${type}: the memory ends where the weights do`);
      assert.deepEqual(prompt, away.matmul(x, T, wAway), `${type}: the T = ${T} product is the one away from the memory's end`);
      assert.deepEqual(got, away.matmul(x1, 1, wAway), `${type}: the one-row product is the one away from the memory's end`);
      assert.notDeepEqual(got, firstOne, `${type}: (the two matrices differ)`);
    }
  });
}

test("f16sPosition permutes each full group of 8 so lane l holds columns l and l + 4; tails stay", () => {
  assert.deepEqual(Array.from({ length: 8 }, (_, c) => f16sPosition(c, 8)), [0, 2, 4, 6, 1, 3, 5, 7]);
  assert.deepEqual(Array.from({ length: 13 }, (_, c) => f16sPosition(c, 13)), [0, 2, 4, 6, 1, 3, 5, 7, 8, 9, 10, 11, 12]);
  for (const I of [1, 7, 16, 37]) {
    const seen = new Set(Array.from({ length: I }, (_, c) => f16sPosition(c, I)));
    assert.equal(seen.size, I, `I=${I}: a permutation`);
    assert.ok([...seen].every((p) => p >= 0 && p < I));
  }
});

test("q5sBit: a permutation of qh's 32 bits; element j of a half at bit 16·(m & 1) + 4·half + (m >> 1) + 8·(j & 1), m = (j mod 16) >> 1", () => {
  const bits = Array.from({ length: 32 }, (_, j) => q5sBit(j));
  assert.deepEqual(bits.slice(0, 8), [0, 8, 16, 24, 1, 9, 17, 25]);
  assert.deepEqual(bits.slice(16, 20), [4, 12, 20, 28]);
  assert.deepEqual([...bits].sort((a, b) => a - b), Array.from({ length: 32 }, (_, i) => i));
  // toQ5s moves only the qh word: element j's fifth bit set alone lands at q5sBit(j); d, m and the nibbles stay.
  for (const type of ["q5_0", "q5_1"] as const) {
    const at = type === "q5_0" ? 2 : 4, bb = at + 4 + 16;
    for (const j of [0, 5, 15, 16, 31]) {
      const block = Uint8Array.from({ length: bb }, (_, i) => (i * 37 + 11) & 0xff);
      new DataView(block.buffer).setUint32(at, 2 ** j, true);
      const before = block.slice();
      assert.equal(toQ5s(block, type), `${type}s`);
      assert.equal(new DataView(block.buffer).getUint32(at, true), 2 ** q5sBit(j), `${type} element ${j}`);
      assert.deepEqual([...block.subarray(0, at), ...block.subarray(at + 4)], [...before.subarray(0, at), ...before.subarray(at + 4)]);
    }
  }
});

test("wasm backend: q5_0/q5_1 read into memory by adoptFrom become q5_0s/q5_1s, read back as the checkpoint's weights and multiply as adopt()'s, bit for bit", (t) => {
  if (!wasmAvailable() || ONLY) return t.skip("no WebAssembly SIMD here");
  const be = new WasmBackend();
  const r = rng(41);
  for (const type of ["q5_0", "q5_1"] as const) {
    const O = 7, I = 96;
    const W = randomMatrix(type, O, I, r);
    const src = W.data as Uint8Array;
    const F = be.adoptFrom(O, I, type, src.byteLength, (dest) => dest.set(src));
    const A = be.adopt(W);
    assert.equal(F.type, `${type}s`);
    assert.equal(A.type, `${type}s`);
    assert.deepEqual([...(W.data as Uint8Array)], [...src], "adopt leaves the caller's bytes as they were");
    const a = new Float32Array(I), b = new Float32Array(I);
    for (let o = 0; o < O; o++) assert.deepEqual(decodeWeightRow(F, o, a), decodeWeightRow(W, o, b), `${type} row ${o}`);
    for (const T of [1, 5]) {
      const x = Float32Array.from({ length: T * I }, () => r());
      assert.deepEqual(be.matmul(x, T, F), be.matmul(x, T, A), `${type} T=${T}`);
    }
  }
});

test("wasm backend: resident states give the copying path's results bit for bit (wkv4, wkv5, wkv7), also after the memory grows", (t) => {
  if (!wasmAvailable() || ONLY) return t.skip("no WebAssembly SIMD here");
  const be = new WasmBackend();
  const r = rng(23);
  const [T, H, N] = [3, 2, 8], C = H * N;
  const vec = (n: number) => Float32Array.from({ length: n }, () => r());
  const start = vec(H * N * N);
  const resident = be.residentArray(start.slice());
  const plain = start.slice();
  assert.notEqual(resident.buffer, plain.buffer);
  assert.equal(be.residentArray(resident), resident, "already resident: returned as is");
  assert.deepEqual([...resident], [...start], "the values moved in");
  for (let call = 0; call < 3; call++) {
    if (call === 2) {
      const before = be.memoryBytes;
      be.adopt({ rows: 1024, cols: 1024, type: "f32", data: new Float32Array(1 << 20) });
      assert.ok(be.memoryBytes > before, "adopting 4 MiB grew the memory");
    }
    const [rr, k, v] = [vec(T * C), vec(T * C), vec(T * C)];
    const decay = Float32Array.from({ length: T * C }, () => 0.6 + 0.4 * Math.abs(r()));
    const a = vec(T * C).map((z) => -z / 4), b = vec(T * C).map((z) => z / 4);
    assert.deepEqual(be.wkv7(T, H, N, rr, decay, k, v, a, b, resident), be.wkv7(T, H, N, rr, decay, k, v, a, b, plain), `wkv7 call ${call}`);
    assert.deepEqual([...resident], [...plain], `wkv7 state after call ${call}`);
    const u = vec(C);
    assert.deepEqual(be.wkv5(T, H, N, rr, k, v, decay, u, resident), be.wkv5(T, H, N, rr, k, v, decay, u, plain), `wkv5 call ${call}`);
    assert.deepEqual([...resident], [...plain], `wkv5 state after call ${call}`);
  }
  const st4 = () => ({ aa: vec(C), bb: vec(C).map(Math.abs), pp: vec(C) });
  const s4 = st4(), r4 = { aa: be.residentArray(s4.aa.slice()), bb: be.residentArray(s4.bb.slice()), pp: be.residentArray(s4.pp.slice()) };
  const [w4, u4, k4, v4] = [vec(C).map((z) => -Math.exp(z)), vec(C), vec(T * C), vec(T * C)];
  assert.deepEqual(be.wkv4(T, C, w4, u4, k4, v4, r4), be.wkv4(T, C, w4, u4, k4, v4, s4), "wkv4");
  for (const f of ["aa", "bb", "pp"] as const) assert.deepEqual([...r4[f]], [...s4[f]], `wkv4 state ${f}`);
});

test("wasm backend: resident states are capped, and past the cap or the memory limit arrays stay as they are", (t) => {
  if (!wasmAvailable() || ONLY) return t.skip("no WebAssembly SIMD here");
  const capped = new WasmBackend({ residentStateBytes: 1 << 20 });
  const a = new Float32Array(150_000), b = new Float32Array(150_000); // 600 kB each
  assert.notEqual(capped.residentArray(a), a, "the first fits under 1 MiB");
  assert.equal(capped.residentArray(b), b, "the second would pass the cap");
  const small = new WasmBackend({ maxMemoryBytes: 2 << 20 });
  const big = new Float32Array(1 << 20); // 4 MiB: more than the whole memory may hold
  assert.equal(small.residentArray(big), big, "no room: the copying path, not an error");
});

test("wasm backend: a clear error when weights would exceed its memory limit", (t) => {
  if (!wasmAvailable() || ONLY) return t.skip("no WebAssembly SIMD here");
  const small = new WasmBackend({ maxMemoryBytes: 1 << 20 });
  const m: Matrix = { rows: 512, cols: 1024, type: "f32", data: new Float32Array(512 * 1024) }; // 2 MiB
  assert.throws(() => small.adopt(m), /would need .* GiB of WebAssembly memory, over its .* limit/);
});

test("the wasm backend is preferred by default; the reference can still be chosen by name", (t) => {
  if (ONLY) return t.skip("child run");
  assert.equal(selectBackend("reference").name, "reference");
  assert.equal(selectBackend().name, wasmAvailable() ? "wasm" : "reference");
  assert.throws(() => selectBackend("nope"), /unknown backend "nope"/);
});

test("relaxed-SIMD build passes this suite in a child process with --experimental-wasm-relaxed-simd", (t) => {
  if (ONLY) return t.skip("already the child");
  if (relaxedSimdAvailable()) return t.skip("relaxed SIMD is on in this process: covered above");
  const file = fileURLToPath(import.meta.url);
  // Without the parent runner's NODE_TEST_CONTEXT, so the child runs and reports as a runner of its own.
  const env: NodeJS.ProcessEnv = { ...process.env, RWKV_CONFORMANCE: "relaxed-simd" };
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, ["--experimental-wasm-relaxed-simd", "--test", "--test-reporter=spec", file], { env, encoding: "utf8" });
  if (r.status !== 0 && /relaxed.simd|bad option/i.test(r.stderr) && !/conformance/.test(r.stdout)) {
    return t.skip(`this Node cannot enable relaxed SIMD: ${r.stderr.trim().split("\n")[0]}`);
  }
  assert.equal(r.status, 0, `relaxed-SIMD conformance failed:\n${r.stdout}\n${r.stderr}`);
  const passed = r.stdout.split("\n").filter((l) => /✔ conformance wasm relaxed-simd/.test(l)).length;
  assert.ok(passed >= 12, `only ${passed} relaxed-SIMD conformance tests passed:\n${r.stdout}`);
  t.diagnostic(`${passed} relaxed-SIMD conformance tests passed in the child`);
});

// ---- tensor kernels (TensorKernels): the forward's table --------------------------------------

/** Runs `f` on `be`'s tensor kernels with inputs written from JS arrays; returns every tensor read back. */
function onTensors(be: Backend, inputs: Record<string, [Float32Array, number]>, f: (K: TensorKernels, t: Record<string, Tensor>) => void): Record<string, Float32Array> {
  const K = be.tensors, A = K.arena();
  const t: Record<string, Tensor> = {};
  for (const [name, [data, rows]] of Object.entries(inputs)) {
    t[name] = A.take(rows, data.length / rows);
    K.write(t[name], 0, data, 0, data.length);
  }
  f(K, t);
  const out = Object.fromEntries(Object.entries(t).map(([name, x]) => [name, K.read(x)]));
  A.dispose();
  return out;
}

/**
 * Element-wise shapes (R, C): single elements, tails of 2/4-lane vectors, a model's width, a
 * prefill, and one large enough (> 2^17 elements) that 2 threads split it.
 */
const GLUE_SHAPES: Array<[number, number]> = [[1, 1], [1, 5], [3, 7], [17, 13], [2, 768], [64, 33], [257, 515]];
/** Per-head shapes (R, H, N): odd head sizes, RWKV-7's 64, several rows, one that 2 threads split. */
const HEAD_SHAPES: Array<[number, number, number]> = [[1, 1, 4], [3, 2, 5], [17, 3, 16], [2, 12, 64], [5, 1, 7], [200, 2, 33]];

/** Kernel calls a wasm backend ran on several threads so far (0 for others). */
const parallelCalls = (be: Backend): number => (be instanceof WasmBackend ? be.calls.parallel : 0);

for (const c of candidates()) {
  const backends = [c.backend, ...(c.single ? [c.single] : [])];

  test(`conformance ${c.label}: tensor glue kernels equal the reference bit for bit (add, mul, sub, addRow, shift, lerp, mix, lerpBy, copyRows, columns)`, () => {
    const r = rng(29);
    const parallel = parallelCalls(c.backend);
    for (const [R, C] of GLUE_SHAPES) {
      const vec = (n: number) => Float32Array.from({ length: n }, () => 3 * r());
      const mixes = () => Float32Array.from({ length: C }, () => Math.abs(r()));
      const inputs: Record<string, [Float32Array, number]> = {
        a: [vec(R * C), R], b: [vec(R * C), R], y: [new Float32Array(R * C), R], bias: [vec(C), 1], prev: [vec(C), 1],
        sx: [new Float32Array(R * C), R], m1: [mixes(), 1], m2: [mixes(), 1], o1: [new Float32Array(R * C), R], o2: [new Float32Array(R * C), R],
        dyn: [vec(R * C), R], half: [new Float32Array(R * Math.ceil(C / 2)), R],
      };
      const ops = (K: TensorKernels, t: Record<string, Tensor>) => {
        K.sub(t.y, t.a, t.b);
        K.add(t.a, t.y);
        K.mul(t.b, t.y);
        K.addRow(t.y, t.bias);
        K.shift(t.sx, t.a, t.prev, 0, R);
        K.lerp([t.o1, t.o2], t.a, t.sx, [t.m1, t.m2]);
        K.mix([t.dyn], t.o1, t.sx, [t.m2]);
        K.lerpBy(t.o2, t.a, t.b, t.m1, t.dyn);
        K.lerpBy(t.o1, t.o2, t.b, t.m2, null);
        K.columns(t.half, t.o1, Math.floor(C / 3));
        if (R > 1) K.copyRows(t.b, 0, t.a, R - 1, 1);
      };
      const want = onTensors(ref, inputs, ops);
      for (const be of backends) {
        const got = onTensors(be, inputs, ops);
        for (const name of Object.keys(want)) assert.deepEqual(got[name], want[name], `R=${R} C=${C} ${name} on ${be.name}`);
      }
    }
    if (c.single) assert.ok(parallelCalls(c.backend) > parallel, "the large shape ran on 2 threads");
  });

  test(`conformance ${c.label}: shift over two sequences of a batch, state carried`, () => {
    const r = rng(31);
    const [T, C] = [3, 9];
    const vec = (n: number) => Float32Array.from({ length: n }, () => r());
    const inputs: Record<string, [Float32Array, number]> = { xx: [vec(2 * T * C), 2 * T], sx: [new Float32Array(2 * T * C), 2 * T], p0: [vec(C), 1], p1: [vec(C), 1] };
    const ops = (K: TensorKernels, t: Record<string, Tensor>) => { K.shift(t.sx, t.xx, t.p0, 0, T); K.shift(t.sx, t.xx, t.p1, T, T); };
    const want = onTensors(ref, inputs, ops);
    // The specification, by hand: each sequence's first row is its carried state, which becomes its last row.
    assert.deepEqual([...want.sx.subarray(0, C)], [...inputs.p0[0]]);
    assert.deepEqual([...want.sx.subarray(T * C, T * C + C)], [...inputs.p1[0]]);
    assert.deepEqual([...want.sx.subarray(C, 2 * C)], [...inputs.xx[0].subarray(0, C)]);
    assert.deepEqual([...want.p1], [...inputs.xx[0].subarray((2 * T - 1) * C)]);
    for (const be of backends) {
      const got = onTensors(be, inputs, ops);
      for (const name of Object.keys(want)) assert.deepEqual(got[name], want[name], `${name} on ${be.name}`);
    }
  });

  test(`conformance ${c.label}: RWKV-7 v7Keys and v7Bonus equal the reference bit for bit`, () => {
    const r = rng(37);
    const parallel = parallelCalls(c.backend);
    for (const [R, H, N] of HEAD_SHAPES) {
      const C = H * N;
      const vec = (n: number, s = 1) => Float32Array.from({ length: n }, () => s * r());
      const pos = (n: number) => Float32Array.from({ length: n }, () => Math.abs(r()));
      for (const gated of [false, true]) {
        const inputs: Record<string, [Float32Array, number]> = {
          aOut: [new Float32Array(R * C), R], bOut: [new Float32Array(R * C), R], k: [vec(R * C, 3), R], v: [vec(R * C, 2), R],
          iclr: [pos(R * C), R], kK: [vec(C), 1], kA: [vec(C), 1], vGate: [pos(R * C), R], vFirst: [vec(R * C), R],
          out: [vec(R * C), R], rr: [vec(R * C), R], g: [pos(R * C), R], rK: [vec(C), 1],
        };
        if (R === 1 && H === 1) inputs.k[0].fill(0); // a zero key: F.normalize's eps, no division by zero
        const ops = (K: TensorKernels, t: Record<string, Tensor>) => {
          K.v7Keys(t.aOut, t.bOut, t.k, t.v, t.iclr, t.kK, t.kA, gated ? t.vGate : null, gated ? t.vFirst : null, N);
          K.v7Bonus(t.out, t.rr, t.k, t.v, t.g, t.rK, N);
        };
        const want = onTensors(ref, inputs, ops);
        for (const x of Object.values(want)) for (const e of x) assert.ok(Number.isFinite(e), `R=${R} H=${H} N=${N}: finite`);
        for (const be of backends) {
          const got = onTensors(be, inputs, ops);
          for (const name of Object.keys(want)) assert.deepEqual(got[name], want[name], `R=${R} H=${H} N=${N} gated=${gated} ${name} on ${be.name}`);
        }
      }
    }
    if (c.single) assert.ok(parallelCalls(c.backend) > parallel, "the large shape ran on 2 threads");
  });

  test(`conformance ${c.label}: DeepEmbed rowMatVec equals the reference bit for bit; softcapAttention within f64 transcendental ulps`, () => {
    const r = rng(43);
    const parallel = parallelCalls(c.backend);
    // rowMatVec (R, I, J): DeepEmbed's (32, 32), odd sizes, and enough rows for 2 threads.
    for (const [R, I, J] of [[1, 32, 32], [3, 5, 7], [1, 1, 1], [600, 32, 32]] as Array<[number, number, number]>) {
      const vec = (n: number) => Float32Array.from({ length: n }, () => r());
      const inputs: Record<string, [Float32Array, number]> = { y: [new Float32Array(R * J), R], x: [vec(R * I), R], m: [vec(R * I * J), R] };
      const ops = (K: TensorKernels, t: Record<string, Tensor>) => K.rowMatVec(t.y, t.x, t.m);
      const want = onTensors(ref, inputs, ops);
      // The specification by hand for one element: y[r][j] = Σ_i x[r][i] m[r][i·J + j].
      const [r0, j0] = [R - 1, J - 1];
      let dot = 0;
      for (let i = 0; i < I; i++) dot += inputs.x[0][r0 * I + i] * inputs.m[0][r0 * I * J + i * J + j0];
      assert.equal(want.y[r0 * J + j0], Math.fround(dot));
      for (const be of backends) assert.deepEqual(onTensors(be, inputs, ops).y, want.y, `rowMatVec R=${R} I=${I} J=${J} on ${be.name}`);
    }
    // softcapAttention (n queries after P keys, D, Cv): one decode step, a prefill, a continued chunk.
    for (const [n, P, D, Cv, cap, scale] of [[1, 0, 4, 3, 64, 1 / 1024], [1, 9, 256, 64, 64, 1 / 1024], [7, 0, 16, 5, 32, 1 / 512], [5, 11, 8, 9, 4, 0.5], [300, 0, 8, 8, 64, 1 / 1024]] as Array<[number, number, number, number, number, number]>) {
      const Tk = P + n;
      const vec = (len: number, sc = 1) => Float32Array.from({ length: len }, () => sc * r());
      const inputs: Record<string, [Float32Array, number]> = { y: [new Float32Array(n * Cv), n], q: [vec(n * D, 8), n], k: [vec(Tk * D, 8), Tk], v: [vec(Tk * Cv), Tk] };
      const ops = (K: TensorKernels, t: Record<string, Tensor>) => K.softcapAttention(t.y, t.q, t.k, t.v, cap, scale, P);
      const want = onTensors(ref, inputs, ops);
      // By hand: the first query sees keys 0 … P only; with one key its output is that key's value.
      if (P === 0) assert.deepEqual([...want.y.subarray(0, Cv)], [...inputs.v[0].subarray(0, Cv)]);
      for (const be of backends) {
        const got = onTensors(be, inputs, ops).y;
        // exp/tanh are the runtime's (V8's vs AssemblyScript's f64 libm): the f32 results may differ by an ulp.
        for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i] - want.y[i]) <= 4 * U * Math.max(1, Math.abs(want.y[i])), `softcapAttention n=${n} P=${P} [${i}] ${got[i]} vs ${want.y[i]} on ${be.name}`);
      }
    }
    if (c.single) assert.ok(parallelCalls(c.backend) > parallel, "the large shapes ran on 2 threads");
  });

  test(`conformance ${c.label}: tensor matmul, norms, activations and WKV scans equal the same backend's array kernels`, () => {
    const r = rng(41);
    const be = c.backend;
    for (const [R, H, N] of HEAD_SHAPES) {
      const C = H * N;
      const vec = (n: number) => Float32Array.from({ length: n }, () => r());
      const W0 = randomMatrix(R % 2 ? "q8_0" : "f16", 3 + R, 32 * Math.ceil(C / 32), r);
      const W = be.adopt(W0);
      const I = W.cols;
      const x = vec(R * I), w = vec(C), bias = vec(C), k = vec(R * C), v = vec(R * C), rr = vec(R * C);
      const decay = Float32Array.from({ length: R * C }, () => 0.55 + 0.45 * Math.abs(r()));
      const kk = vec(R * C).map((z) => z / Math.sqrt(N)), a = kk.map((z) => -z), b = kk.map((z) => z * 0.5);
      const S7 = vec(H * N * N).map((z) => z / 4), S5 = S7.slice(), u = vec(C);
      const st4 = { aa: vec(C), bb: vec(C).map(Math.abs), pp: vec(C) };
      const inputs: Record<string, [Float32Array, number]> = {
        x: [x, R], y: [new Float32Array(R * W.rows), R], ln: [new Float32Array(R * C), R], gn: [new Float32Array(R * C), R], w: [w, 1], bias: [bias, 1],
        k: [k, R], v: [v, R], rr: [rr, R], decay: [decay, R], a: [a, R], b: [b, R], S7: [S7.slice(), 1], S5: [S5.slice(), 1], u: [u, 1],
        y7: [new Float32Array(R * C), R], y5: [new Float32Array(R * C), R], y4: [new Float32Array(R * C), R], act: [k.slice(), R],
        aa: [st4.aa.slice(), 1], bb: [st4.bb.slice(), 1], pp: [st4.pp.slice(), 1], wd: [w.map((z) => -Math.exp(z)), 1],
      };
      const got = onTensors(be, inputs, (K, t) => {
        K.matmul(t.y, t.x, W);
        K.layerNorm(t.ln, t.k, t.w, t.bias, 1e-5);
        K.groupNorm(t.gn, t.k, H, t.w, t.bias, 64e-5);
        K.activate("sigmoid", t.act, -0.5);
        K.wkv7(t.y7, t.rr, t.decay, t.k, t.v, t.a, t.b, t.S7, H, 0, R);
        K.wkv5(t.y5, t.rr, t.k, t.v, t.decay, t.u, t.S5, H, 0, R);
        K.wkv4(t.y4, t.wd, t.u, t.k, t.v, t.aa, t.bb, t.pp, 0, R);
      });
      const what = `R=${R} H=${H} N=${N}`;
      assert.deepEqual(got.y, be.matmul(x, R, W), `${what} matmul`);
      assert.deepEqual(got.ln, be.layerNorm(k, R, C, w, bias, 1e-5), `${what} layerNorm`);
      assert.deepEqual(got.gn, be.groupNorm(k, R, H, N, w, bias, 64e-5), `${what} groupNorm`);
      assert.deepEqual(got.act, be.activate("sigmoid", k.slice(), -0.5), `${what} activate`);
      const S7a = S7.slice(), S5a = S5.slice(), s4 = { aa: st4.aa.slice(), bb: st4.bb.slice(), pp: st4.pp.slice() };
      assert.deepEqual(got.y7, be.wkv7(R, H, N, rr, decay, k, v, a, b, S7a), `${what} wkv7`);
      assert.deepEqual(got.S7, S7a, `${what} wkv7 state`);
      assert.deepEqual(got.y5, be.wkv5(R, H, N, rr, k, v, decay, u, S5a), `${what} wkv5 per-token decay`);
      assert.deepEqual(got.S5, S5a, `${what} wkv5 state`);
      assert.deepEqual(got.y4, be.wkv4(R, C, inputs.wd[0], u, k, v, s4), `${what} wkv4`);
      for (const f of ["aa", "bb", "pp"] as const) assert.deepEqual(got[f], s4[f], `${what} wkv4 state ${f}`);
      if (c.single) {
        const one = onTensors(c.single, inputs, (K, t) => {
          K.matmul(t.y, t.x, c.single!.adopt(W0));
          K.wkv7(t.y7, t.rr, t.decay, t.k, t.v, t.a, t.b, t.S7, H, 0, R);
        });
        assert.deepEqual(one.y, got.y, `${what} matmul: 2 threads differ from 1`);
        assert.deepEqual(one.y7, got.y7, `${what} wkv7: 2 threads differ from 1`);
      }
    }
  });

  test(`conformance ${c.label}: the arena reuses its slots (no allocation once a forward's shapes are known)`, () => {
    const A = c.backend.tensors.arena();
    const first = [A.take(3, 5), A.take(1, 7)];
    const m = A.mark();
    A.take(2, 2);
    const n = A.allocations;
    A.rewind(m);
    A.take(1, 4); // fits in the slot of (2, 2)
    A.rewind(0);
    const again = [A.take(3, 5), A.take(1, 7)];
    assert.equal(A.allocations, n, "no new allocation for shapes seen before");
    assert.equal(again[0], first[0], "the same tensor object per slot");
    assert.equal(again[1].rows * again[1].cols, 7);
    A.take(100, 100); // larger than any slot
    assert.equal(A.allocations, n + 1, "a larger request grows one slot");
    A.dispose();
  });
}

// ---- the training half of the table ----------------------------------------------------------------

for (const c of candidates()) {
  test(`conformance ${c.label}: training ops, every forward and backward of the table, against the reference kernels`, () => {
    const k = trainingKernels(c.backend), k1 = c.single ? trainingKernels(c.single) : null;
    if (c.backend instanceof WasmBackend) {
      assert.ok(k instanceof WasmTrainKernels && k.threads === c.backend.threads, `${c.label}: the backend's own training kernels`);
    }
    try {
      const run = new Set<TrainOpCheck>();
      for (const op of TRAINING_OPS) {
        const check = TRAIN_OP_CHECKS[op];
        if (run.has(check)) continue; // a forward and its backward share one check
        run.add(check);
        check(k, k1);
      }
    } finally {
      for (const x of [k, k1]) if (x instanceof WasmTrainKernels) x.close();
    }
  });
}

test("the kernel table: every training forward has its backward beside it, and each op one conformance check", () => {
  for (const op of TRAINING_OPS) {
    const back = backwardOf(op);
    if (op.endsWith("Forward")) assert.equal(back, op.replace(/Forward$/, "Backward"), `${op}'s backward`);
    if (back) assert.equal(TRAIN_OP_CHECKS[back], TRAIN_OP_CHECKS[op], `${op} and ${back} are checked together`);
  }
  assert.deepEqual(Object.keys(TRAIN_OP_CHECKS).sort(), [...TRAINING_OPS].sort());
  // The training half's own reference: its checks pass against itself (f64 storage included, by gemm's check).
  TRAIN_OP_CHECKS.gemm(referenceTrainKernels, null);
});

test("supports(op, dtype): the reference runs every op; wasm every inference op, and training ops on f32 but not on f64", (t) => {
  const reference = selectBackend("reference");
  for (const op of [...INFERENCE_OPS, ...TRAINING_OPS]) assert.ok(supports(reference, op, "f32"), `reference ${op}`);
  for (const type of TYPES) assert.ok(supports(reference, "matmul", type), `reference matmul ${type}`);
  for (const op of TRAINING_OPS) assert.ok(supports(reference, op, "f64"), `reference ${op} f64`);
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const wasm = wasmBackend(1)!;
  for (const op of INFERENCE_OPS) assert.ok(supports(wasm, op, "f32"), `wasm ${op}`);
  for (const type of [...TYPES, "f16s" as const]) assert.ok(supports(wasm, "matmul", type), `wasm matmul ${type}`);
  for (const op of ["gemm", "wkv7Forward", "wkv7Backward", "groupNormBackward", "adamwUpdate"] as const) {
    assert.ok(supports(wasm, op, "f32"), `wasm ${op} f32`);
    assert.ok(!supports(wasm, op, "f64"), `wasm ${op} f64 runs the reference`);
  }
  assert.ok(!supports(wasm, "crossEntropyForward", "f32"), "the loss runs the reference's code");
});

test("a backend without a training half trains on the reference kernels, and says so in their name", () => {
  const inferenceOnly: Backend = { ...selectBackend("reference"), name: "gpu-like", trainKernels: undefined, supports: undefined };
  const k = trainingKernels(inferenceOnly);
  assert.match(k.name, /^reference \(fallback: backend "gpu-like" has no training kernels\)$/);
  assert.equal(k.build, "reference");
  assert.equal(k.gemm, referenceTrainKernels.gemm);
  assert.ok(!supports(inferenceOnly, "gemm", "f32") && supports(inferenceOnly, "wkv7", "f32") && supports(inferenceOnly, "matmul", "q4_0"));
});
