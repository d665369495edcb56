import assert from "node:assert/strict";
import { test } from "node:test";
import { Graph } from "../src/core/train/graph.js";
import { initModel } from "../src/core/train/init.js";
import { type Buf, referenceTrainKernels, type TrainKernels } from "../src/core/backend/train-kernels.js";
import { referenceOps } from "../src/core/backend/train-ops.js";
import { TrainModel, type TrainVersion } from "../src/core/train/model.js";
import { AdamW } from "../src/core/train/optim.js";
import { TrainRng } from "../src/core/train/rng.js";
import { trainStep } from "../src/core/train/trainer.js";
import { WasmTrainKernels, wasmTrainAvailable } from "../src/core/backend/wasm-train.js";
import { trainKernels } from "../src/node/threads/pool.js";
import { relErr, seeded } from "./train-helpers.js";

/*
 * Conformance of the WebAssembly training kernels (assembly/train.ts) against the reference
 * kernels, which are the specification: every product layout and the WKV7 forward/backward on
 * random shapes with tails (sizes that are not multiples of the 4 x 8 tile, the 256-step K block,
 * the SIMD width or the 16-step state chunk), operands inside and outside the wasm memory; 2
 * threads against 1 bit for bit; a few training steps against the reference; no memory growth
 * from step to step.
 */

const skip = !wasmTrainAvailable();
const one = skip ? null : new WasmTrainKernels({ threads: 1 });
/** Two threads (a worker_threads pool), built lazily by the tests that need it. */
let twoCache: WasmTrainKernels | null = null;
const two = (): WasmTrainKernels => (twoCache ??= trainKernels("wasm", 2) as WasmTrainKernels);

function rand(n: number, rnd: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => rnd());
}

/** A copy of `src` in the kernels' memory (what Graph hands them during training). */
function inside(k: TrainKernels, src: Float32Array): Float32Array {
  const b = k.alloc("f32", src.length) as Float32Array;
  b.set(src);
  return b;
}

const GEMM_SHAPES: Array<[number, number, number]> = [
  [1, 1, 1], [3, 5, 7], [4, 8, 16], [5, 9, 257], [13, 17, 300], [64, 33, 129], [130, 7, 513], [7, 130, 19], [33, 64, 1], [96, 40, 600],
];

test("gemm: every transpose combination on odd shapes matches the reference (copy-in and in-place operands)", { skip }, () => {
  const k = one!;
  const rnd = seeded(11);
  for (const [M, N, K] of GEMM_SHAPES) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        for (const acc of [false, true]) {
          const A = rand(M * K, rnd), B = rand(K * N, rnd), C0 = rand(M * N, rnd);
          const want = Float32Array.from(C0);
          referenceTrainKernels.gemm(tA, tB, M, N, K, A, B, want, acc);
          const outside = Float32Array.from(C0);
          k.gemm(tA, tB, M, N, K, A, B, outside, acc);
          const mark = k.mark();
          const Ci = inside(k, C0);
          k.gemm(tA, tB, M, N, K, inside(k, A), inside(k, B), Ci, acc);
          const got = Float32Array.from(Ci);
          k.release(mark);
          const what = `M ${M} N ${N} K ${K} tA ${tA} tB ${tB} acc ${acc}`;
          // f32 sums of up to 600 products of ±1 values against f64 ones: ~1e-6 of the largest output.
          assert.ok(relErr(outside, want).rel < 1e-5, `${what}: ${relErr(outside, want).abs}`);
          assert.deepEqual(got, outside, `${what}: in place differs from copied operands`);
        }
      }
    }
  }
});

test("gemm: 2 threads give exactly the 1-thread result, split by rows or by columns", { skip }, () => {
  const k2 = two();
  const rnd = seeded(12);
  const before = k2.calls.parallel;
  for (const [M, N, K] of [[300, 37, 129], [9, 600, 300], [257, 255, 70]] as const) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        const A = rand(M * K, rnd), B = rand(K * N, rnd), C0 = rand(M * N, rnd);
        const c1 = Float32Array.from(C0), c2 = Float32Array.from(C0);
        one!.gemm(tA, tB, M, N, K, A, B, c1, true);
        k2.gemm(tA, tB, M, N, K, A, B, c2, true);
        assert.deepEqual(c2, c1, `M ${M} N ${N} K ${K} tA ${tA} tB ${tB}`);
      }
    }
  }
  assert.ok(k2.calls.parallel > before, "no product ran on 2 threads");
});

interface WkvCase { B: number; T: number; H: number; N: number }

function wkvInputs(c: WkvCase, seed: number): { r: Float32Array; w: Float32Array; k: Float32Array; v: Float32Array; a: Float32Array; b: Float32Array; gy: Float32Array } {
  const rnd = seeded(seed), n = c.B * c.T * c.H * c.N;
  const kk = (): Float32Array => { // a = -kk, b = kk·iclr with kk unit per head, as the model feeds them
    const x = rand(n, rnd);
    for (let g = 0; g < n / c.N; g++) {
      let s = 0;
      for (let j = 0; j < c.N; j++) s += x[g * c.N + j] ** 2;
      for (let j = 0; j < c.N; j++) x[g * c.N + j] /= Math.sqrt(s);
    }
    return x;
  };
  const kn = kk(), iclr = Float32Array.from({ length: n }, () => rnd(0, 1));
  return {
    r: rand(n, rnd), w: Float32Array.from({ length: n }, () => rnd(-3, -0.6)), k: rand(n, rnd), v: rand(n, rnd),
    a: kn.map((x) => -x), b: kn.map((x, i) => x * iclr[i]), gy: rand(n, rnd),
  };
}

function runWkv(k: TrainKernels, c: WkvCase, seed: number, inPlace: boolean): { y: Float32Array; grads: Float32Array[] } {
  const { B, T, H, N } = c, n = B * T * H * N;
  const x = wkvInputs(c, seed);
  const mark = k.mark();
  const put = (s: Float32Array): Float32Array => (inPlace ? inside(k, s) : Float32Array.from(s));
  const [r, w, kk, v, a, b, gy] = [x.r, x.w, x.k, x.v, x.a, x.b, x.gy].map(put);
  const y = inPlace ? (k.alloc("f32", n) as Float32Array) : new Float32Array(n);
  const ckpt = k.wkv7Forward(B, T, H, N, r, w, kk, v, a, b, y, true)!;
  const grads = Array.from({ length: 6 }, () => (inPlace ? (k.alloc("f32", n) as Float32Array) : new Float32Array(n)));
  grads.forEach((g, i) => g.fill(0.25 * i)); // the backward accumulates into what is there
  k.wkv7Backward(B, T, H, N, r, w, kk, v, a, b, ckpt, gy, grads[0], grads[1], grads[2], grads[3], grads[4], grads[5]);
  const out = { y: Float32Array.from(y), grads: grads.map((g) => Float32Array.from(g)) };
  k.release(mark);
  return out;
}

const WKV_CASES: WkvCase[] = [{ B: 2, T: 37, H: 3, N: 8 }, { B: 1, T: 20, H: 2, N: 64 }, { B: 3, T: 16, H: 1, N: 4 }, { B: 2, T: 5, H: 2, N: 12 }];
const WKV_NAMES = ["r", "w", "k", "v", "a", "b"];

test("wkv7 forward and backward match the reference (f32 states against f64 ones)", { skip }, () => {
  WKV_CASES.forEach((c, i) => {
    const want = runWkv(referenceTrainKernels, c, 100 + i, false);
    for (const inPlace of [false, true]) {
      const got = runWkv(one!, c, 100 + i, inPlace);
      const what = `B ${c.B} T ${c.T} H ${c.H} N ${c.N}${inPlace ? " in place" : ""}`;
      assert.ok(relErr(got.y, want.y).rel < 1e-5, `${what} y: ${relErr(got.y, want.y).abs} of ${relErr(got.y, want.y).max}`);
      got.grads.forEach((g, j) => {
        const e = relErr(g, want.grads[j]);
        assert.ok(e.rel < 1e-4, `${what} g${WKV_NAMES[j]}: max |diff| ${e.abs} of max ${e.max}`);
      });
    }
  });
});

test("wkv7: 2 threads give exactly the 1-thread result", { skip }, () => {
  const c: WkvCase = { B: 3, T: 40, H: 4, N: 16 };
  const before = two().calls.parallel;
  const a = runWkv(one!, c, 7, true), b = runWkv(two(), c, 7, true);
  assert.ok(two().calls.parallel > before, "no WKV ran on 2 threads");
  assert.deepEqual(b.y, a.y);
  b.grads.forEach((g, j) => assert.deepEqual(g, a.grads[j], `g${WKV_NAMES[j]}`));
});

test("wkv7 head sizes that are not a multiple of 4, and f64 storage, run the reference kernels", { skip }, () => {
  const c: WkvCase = { B: 1, T: 9, H: 2, N: 6 };
  const want = runWkv(referenceTrainKernels, c, 3, false), got = runWkv(one!, c, 3, true);
  assert.deepEqual(got.y, want.y);
  const A = Float64Array.from([1, 2, 3, 4]), C = new Float64Array(4);
  one!.gemm(false, false, 2, 2, 2, A, A, C, false);
  assert.deepEqual([...C], [7, 10, 15, 22]);
});

test("element-wise ops (token shift, lerp, dynamic lerp, add, sub, mul, scale, column slices, activations, norms, v7 key update, L2 normalize, bonus, value residual) match the reference ops", { skip }, () => {
  const k = one!, ref = referenceTrainKernels.ops, fast = k.ops, rnd = seeded(21);
  const R = 7, C = 12, H = 3, N = 4, n = R * C;
  const check = (what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = 2e-6) => {
    const e = relErr(got, want);
    assert.ok(e.rel < tol, `${what}: max |diff| ${e.abs} of max ${e.max}`);
  };
  /** Runs `f` on copies in the wasm memory (fast) and in plain arrays (reference); compares every buffer afterwards. */
  const both = (what: string, bufs: Float32Array[], f: (ops: typeof ref, b: Float32Array[]) => void, tol?: number) => {
    const mark = k.mark();
    const mine = bufs.map((b) => inside(k, b)), theirs = bufs.map((b) => Float32Array.from(b));
    f(fast, mine);
    f(ref, theirs);
    mine.forEach((b, i) => check(`${what} buffer ${i}`, b, theirs[i], tol));
    k.release(mark);
  };
  const r = (len: number, lo = -2, hi = 2) => Float32Array.from({ length: len }, () => rnd(lo, hi));
  const B = 2, T = 3; // token shift: B sequences of T rows (B·T < R: the rows past B·T stay as they were)
  both("token shift", [r(n), r(n)], (o, [x, y]) => o.tokenShiftForward(x, B, T, C, y));
  both("token shift backward", [r(n), r(n), r(n)], (o, [x, gy, gx]) => o.tokenShiftBackward(x, B, T, C, gy, gx));
  both("dynamic lerp", [r(n), r(n), r(C), r(n), new Float32Array(n)], (o, [x, d, m, dm, y]) => o.lerpDynForward(x, d, m, dm, C, y));
  both("dynamic lerp backward", [r(n), r(n), r(C), r(n), r(n), r(n), r(n), r(C), r(n)],
    (o, [x, d, m, dm, gy, gx, gd, gm, gdm]) => o.lerpDynBackward(x, d, m, dm, C, gy, gx, gd, gm, gdm));
  both("sub", [r(n), r(n), new Float32Array(n)], (o, [a, b, y]) => o.subForward(a, b, y));
  both("sub backward", [r(n), r(n), r(n), r(n), r(n)], (o, [a, b, gy, ga, gb]) => o.subBackward(a, b, gy, ga, gb));
  both("scale", [r(n), new Float32Array(n)], (o, [a, y]) => o.scaleForward(a, -1.5, y));
  both("scale backward", [r(n), r(n), r(n)], (o, [a, gy, ga]) => o.scaleBackward(a, -1.5, gy, ga));
  for (const [c0, w] of [[4, 8], [3, 5]]) { // aligned, and unaligned (odd width: the reference backward)
    both(`column slice ${c0}+${w}`, [r(n), new Float32Array(R * w)], (o, [x, y]) => o.sliceColsForward(x, R, C, c0, w, y));
    both(`column slice ${c0}+${w} backward`, [r(n), r(R * w), r(n)], (o, [x, gy, gx]) => o.sliceColsBackward(x, R, C, c0, w, gy, gx));
  }
  both("lerp", [r(n), r(n), r(C), new Float32Array(n)], (o, [x, sx, m, y]) => o.lerpForward(x, sx, m, C, y));
  both("lerp backward", [r(n), r(n), r(C), r(n), r(n), r(n), r(C)], (o, [x, sx, m, gy, gx, gsx, gm]) => o.lerpBackward(x, sx, m, C, gy, gx, gsx, gm));
  for (const rowVector of [false, true]) {
    const bl = rowVector ? C : n, tag = rowVector ? " (row vector)" : "";
    both("add" + tag, [r(n), r(bl), new Float32Array(n)], (o, [a, b, y]) => o.addForward(a, b, C, y));
    both("add backward" + tag, [r(n), r(bl), r(n), r(n), r(bl)], (o, [a, b, gy, ga, gb]) => o.addBackward(a, b, C, gy, ga, gb));
    both("mul" + tag, [r(n), r(bl), new Float32Array(n)], (o, [a, b, y]) => o.mulForward(a, b, C, y));
    both("mul backward" + tag, [r(n), r(bl), r(n), r(n), r(bl)], (o, [a, b, gy, ga, gb]) => o.mulBackward(a, b, C, gy, ga, gb));
  }
  for (const f of ["sigmoid", "tanh", "relu2", "silu", "v7decay"] as const) {
    // Inputs over the range the model sees and beyond, where exp over/underflows.
    const xs = Float32Array.from({ length: 4 * n }, (_, i) => (i % 3 === 0 ? rnd(-100, 100) : rnd(-6, 6)));
    both(f, [xs, new Float32Array(4 * n)], (o, [x, y]) => o.activationForward(f, x, y));
    const y = new Float32Array(4 * n);
    ref.activationForward(f, xs, y);
    both(f + " backward", [xs, y, r(4 * n), r(4 * n)], (o, [x, yy, gy, gx]) => o.activationBackward(f, x, yy, gy, gx));
  }
  for (const [G, M] of [[1, C], [H, N]]) {
    const what = G === 1 ? "layer norm" : "group norm";
    const mean = new Float64Array(R * G), rstd = new Float64Array(R * G);
    both(what, [r(n), r(C), r(C), new Float32Array(n)], (o, [x, w, b, y]) => o.groupNormForward(x, R, G, M, w, b, 1e-5, y, mean, rstd));
    const x = r(n), w = r(C), b = r(C);
    ref.groupNormForward(x, R, G, M, w, b, 1e-5, new Float32Array(n), mean, rstd);
    both(what + " backward", [x, w, b, r(n), r(n), r(C), r(C)],
      (o, [xx, ww, bb, gy, gx, gw, gb]) => o.groupNormBackward(xx, R, G, M, ww, bb, 1e-5, mean, rstd, gy, gx, gw, gb), 1e-5);
  }
  both("residual mix", [r(n), r(n), r(n, 0, 1), new Float32Array(n)], (o, [v, vf, g, y]) => o.residualMixForward(v, vf, g, y));
  both("residual mix backward", [r(n), r(n), r(n, 0, 1), r(n), r(n), r(n), r(n)],
    (o, [v, vf, g, gy, gv, gvf, gg]) => o.residualMixBackward(v, vf, g, gy, gv, gvf, gg));
  both("key update", [r(n), r(n, 0, 1), r(C), new Float32Array(n)], (o, [kk, a, ka, y]) => o.keyUpdateForward(kk, a, ka, C, y));
  both("key update backward", [r(n), r(n, 0, 1), r(C), r(n), r(n), r(n), r(C)],
    (o, [kk, a, ka, gy, gk, ga, gka]) => o.keyUpdateBackward(kk, a, ka, C, gy, gk, ga, gka));
  const groups = n / N, norm = new Float64Array(groups), xs = r(n);
  xs.fill(0, 0, N); // one all-zero group: the eps clamp
  both("L2 normalize", [xs, new Float32Array(n)], (o, [x, y]) => o.l2NormalizeForward(x, groups, N, y, norm));
  referenceOps.l2NormalizeForward(xs, groups, N, new Float32Array(n), norm);
  both("L2 normalize backward", [xs, r(n), r(n)], (o, [x, gy, gx]) => o.l2NormalizeBackward(x, groups, N, norm, gy, gx));
  both("bonus", [r(n), r(n), r(n), r(C), new Float32Array(n)], (o, [rr, kk, v, rk, y]) => o.bonusForward(rr, kk, v, rk, R, H, N, y));
  both("bonus backward", [r(n), r(n), r(n), r(C), r(n), r(n), r(n), r(n), r(C)],
    (o, [rr, kk, v, rk, gy, gr, gk, gv, grk]) => o.bonusBackward(rr, kk, v, rk, R, H, N, gy, gr, gk, gv, grk));
});

test("AdamW's wasm update matches the reference loop", { skip }, () => {
  const k = one!, rnd = seeded(31), n = 103; // not a multiple of 4: the scalar tail too
  const make = () => Float32Array.from({ length: n }, () => rnd());
  const [p, g, m, v] = [make(), make(), make(), make().map(Math.abs)];
  const mark = k.mark();
  const [p2, g2, m2, v2] = [p, g, m, v].map((b) => inside(k, b));
  assert.ok(k.adamwUpdate(p2, g2, m2, v2, 1e-2, 1e-3, 0.9, 0.99, 1e-8, 0.19, 0.0199));
  assert.equal(k.adamwUpdate(p, g, m, v, 1e-2, 1e-3, 0.9, 0.99, 1e-8, 0.19, 0.0199), false, "operands outside the memory");
  // The reference: optim.ts's loop, in f64.
  for (let i = 0; i < n; i++) {
    const mi = 0.9 * m[i] + 0.1 * g[i], vi = 0.99 * v[i] + 0.01 * g[i] * g[i];
    m[i] = mi; v[i] = vi;
    p[i] -= 1e-2 * ((mi / 0.19) / (Math.sqrt(vi / 0.0199) + 1e-8) + 1e-3 * p[i]);
  }
  for (const [got, want, name] of [[p2, p, "p"], [m2, m, "m"], [v2, v, "v"]] as const) {
    assert.ok(relErr(got, want).rel < 1e-6, `${name}: ${relErr(got, want).abs}`);
  }
  k.release(mark);
});

/** Losses of `steps` AdamW steps of a small model on fixed random batches, and the final parameters. */
function trainLosses(kernels: TrainKernels, steps: number, version: TrainVersion): { losses: number[]; params: Buf[] } {
  const rng = new TrainRng(5);
  const params = initModel({ version, nLayer: 2, nEmbd: 64, vocabSize: 97, headSize: 16 }, rng, "f32");
  const model = new TrainModel(params, { kernels });
  const opt = new AdamW(params, version, undefined, model.unusedParams(), undefined, kernels);
  const B = 3, T = 24, rnd = seeded(9);
  // One batch with a learnable rule (target = a function of the input token), so the loss falls.
  const inputs = Int32Array.from({ length: B * T }, () => Math.floor(rnd(0, 97)));
  const targets = inputs.map((t) => (3 * t + 1) % 97);
  const losses: number[] = [];
  for (let s = 0; s < steps; s++) {
    losses.push(trainStep(model, opt, inputs, targets, B, T, { lr: 3e-3, gradClip: 1, l2wrap: true }).loss);
  }
  return { losses, params: params.list.map((p) => Float32Array.from(p.data)) };
}

for (const version of ["4", "5.2", "6", "7"] as const) {
  test(`v${version}: training steps with the wasm kernels follow the reference kernels' losses; 2 threads equal 1`, { skip }, () => {
    const STEPS = 6;
    const ref = trainLosses(referenceTrainKernels, STEPS, version);
    const k1 = new WasmTrainKernels({ threads: 1 });
    const w1 = trainLosses(k1, STEPS, version);
    ref.losses.forEach((l, i) => assert.ok(Math.abs(w1.losses[i] - l) / l < 1e-4, `step ${i}: wasm ${w1.losses[i]} vs reference ${l}`));
    assert.ok(ref.losses[STEPS - 1] < ref.losses[0], "the model did not learn");
    const k2 = trainKernels("wasm", 2) as WasmTrainKernels;
    const before = k2.calls.parallel;
    const w2 = trainLosses(k2, STEPS, version);
    assert.ok(k2.calls.parallel > before);
    assert.deepEqual(w2.losses, w1.losses);
    w2.params.forEach((p, i) => assert.deepEqual(p, w1.params[i], `parameter ${i}`));
    k2.close();
  });
}

test("a training step releases everything it allocated: memory stays flat from step to step", { skip }, () => {
  const k = new WasmTrainKernels({ threads: 1 });
  const rng = new TrainRng(2);
  const params = initModel({ version: "7", nLayer: 1, nEmbd: 32, vocabSize: 50, headSize: 16 }, rng, "f32");
  const model = new TrainModel(params, { kernels: k });
  assert.ok(k.owns(params.list[0].data), "parameters were not placed in the wasm memory");
  const opt = new AdamW(params, "7", undefined, model.unusedParams(), undefined, k);
  assert.ok(k.owns(opt.state.m.get(params.list[0].name)!), "AdamW's moments were not placed in the wasm memory");
  const inputs = Int32Array.from({ length: 32 }, (_, i) => i % 50), targets = Int32Array.from({ length: 32 }, (_, i) => (i * 7) % 50);
  const used = k.usedBytes;
  trainStep(model, opt, inputs, targets, 2, 16, { lr: 1e-3, gradClip: 1, l2wrap: true });
  const reserved = k.memoryBytes;
  for (let s = 0; s < 5; s++) trainStep(model, opt, inputs, targets, 2, 16, { lr: 1e-3, gradClip: 1, l2wrap: true });
  assert.equal(k.usedBytes, used);
  assert.equal(k.memoryBytes, reserved);
  // The graph can still be used directly; its tensors are freed by releasing a mark.
  const mark = k.mark();
  const g = new Graph("f32", k, false);
  assert.ok(Number.isFinite(g.crossEntropy(model.forward(g, inputs, 2, 16), targets, false)));
  k.release(mark);
  assert.equal(k.usedBytes, used);
});

test.after(() => twoCache?.close());
