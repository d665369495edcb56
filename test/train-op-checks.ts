import assert from "node:assert/strict";
import type { TrainingOp } from "../src/core/backend/backend.js";
import type { Buf } from "../src/core/backend/buffers.js";
import { referenceTrainKernels, type TrainKernels } from "../src/core/backend/train-kernels.js";
import { referenceOps, type TrainOps } from "../src/core/backend/train-ops.js";
import { WasmTrainKernels } from "../src/core/backend/wasm-train.js";
import { relErr, seeded } from "./train-helpers.js";

/*
 * The conformance checks of the training half of the kernel table, one per TrainingOp (the
 * compiler checks the Record is complete; a forward and its backward share one check), run by
 * test/backend-conformance.test.ts on every backend's training kernels against the reference
 * kernels (the specification): random shapes with odd sizes and tails (sizes that are not
 * multiples of the SIMD width, the 4 x 8 product tile, the 256-step K block or the 16-step state
 * chunk), operands inside and outside the kernels' memory, and, when the kernels run on several
 * threads, bit-for-bit equality with the same build on one thread.
 *
 * Tolerances: the reference sums and keeps WKV states in f64, a fast kernel in f32: element-wise
 * ops to 2e-6 of the largest value, norms' backward 1e-5; products ~1e-6 of the largest output
 * (1e-5); WKV outputs 1e-5 and gradients 1e-4 of the largest (f32 states and exponentials).
 */

/** `k` the kernels under test; `k1` the same build on one thread when `k` runs on several, else null. */
export type TrainOpCheck = (k: TrainKernels, k1: TrainKernels | null) => void;

type Rnd = (lo?: number, hi?: number) => number;
const rand = (n: number, rnd: Rnd, lo = -1, hi = 1): Float32Array => Float32Array.from({ length: n }, () => rnd(lo, hi));

/** A copy of `src` in the kernels' memory (what Graph hands them during training). */
function inside(k: TrainKernels, src: Float32Array): Float32Array {
  const b = k.alloc("f32", src.length) as Float32Array;
  b.set(src);
  return b;
}

/** Kernel calls the kernels ran on all their threads so far (0 for kernels that do not count them). */
function parallelCalls(k: TrainKernels): number {
  return k instanceof WasmTrainKernels ? k.calls.parallel : 0;
}

function threads(k: TrainKernels): number {
  return k instanceof WasmTrainKernels ? k.threads : 1;
}

// ---- element-wise ops ----------------------------------------------------------------------------

/**
 * Runs `f` with `ops` of `k` on copies in its memory and with the reference ops on plain arrays;
 * compares every buffer afterwards (outputs, and gradients that accumulate onto random values).
 */
function both(k: TrainKernels, what: string, bufs: Float32Array[], f: (ops: TrainOps, b: Float32Array[]) => void, tol = 2e-6): void {
  const mark = k.mark();
  const mine = bufs.map((b) => inside(k, b)), theirs = bufs.map((b) => Float32Array.from(b));
  f(k.ops, mine);
  f(referenceOps, theirs);
  mine.forEach((b, i) => {
    const e = relErr(b, theirs[i]);
    assert.ok(e.rel < tol, `${what} buffer ${i}: max |diff| ${e.abs} of max ${e.max}`);
  });
  k.release(mark);
}

/** Shapes of the element-wise checks: widths that are multiples of 4, and odd ones (a backend's tails or fallbacks). */
const SHAPES = [{ R: 7, C: 12, H: 3, N: 4 }, { R: 7, C: 10, H: 2, N: 5 }];

/** An element-wise check over both shapes: `run(k, rnd, shape)` calls `both` for forward and backward. */
function elementwise(run: (k: TrainKernels, r: (len: number, lo?: number, hi?: number) => Float32Array, s: typeof SHAPES[number]) => void): TrainOpCheck {
  return (k) => {
    SHAPES.forEach((s, i) => {
      const rnd = seeded(21 + i);
      run(k, (len, lo = -2, hi = 2) => rand(len, rnd, lo, hi), s);
    });
  };
}

const embedding = elementwise((k, r, { R, C }) => {
  const V = 9, E = r(V * C), tokens = Int32Array.from({ length: R }, (_, i) => (i * 5) % V);
  both(k, "embedding", [E, new Float32Array(R * C)], (o, [e, y]) => o.embeddingForward(e, C, tokens, y));
  both(k, "embedding backward", [E, r(R * C), r(V * C)], (o, [e, gy, gE]) => o.embeddingBackward(e, C, tokens, gy, gE));
});

const tokenShift = elementwise((k, r, { R, C }) => {
  const n = R * C, B = 2, T = 3; // B sequences of T rows (B·T < R: the rows past B·T stay as they were)
  both(k, "token shift", [r(n), r(n)], (o, [x, y]) => o.tokenShiftForward(x, B, T, C, y));
  both(k, "token shift backward", [r(n), r(n), r(n)], (o, [x, gy, gx]) => o.tokenShiftBackward(x, B, T, C, gy, gx));
});

const lerp = elementwise((k, r, { R, C }) => {
  const n = R * C;
  both(k, "lerp", [r(n), r(n), r(C), new Float32Array(n)], (o, [x, sx, m, y]) => o.lerpForward(x, sx, m, C, y));
  both(k, "lerp backward", [r(n), r(n), r(C), r(n), r(n), r(n), r(C)], (o, [x, sx, m, gy, gx, gsx, gm]) => o.lerpBackward(x, sx, m, C, gy, gx, gsx, gm));
});

const lerpDyn = elementwise((k, r, { R, C }) => {
  const n = R * C;
  both(k, "dynamic lerp", [r(n), r(n), r(C), r(n), new Float32Array(n)], (o, [x, d, m, dm, y]) => o.lerpDynForward(x, d, m, dm, C, y));
  both(k, "dynamic lerp backward", [r(n), r(n), r(C), r(n), r(n), r(n), r(n), r(C), r(n)],
    (o, [x, d, m, dm, gy, gx, gd, gm, gdm]) => o.lerpDynBackward(x, d, m, dm, C, gy, gx, gd, gm, gdm));
});

const residualMix = elementwise((k, r, { R, C }) => {
  const n = R * C;
  both(k, "residual mix", [r(n), r(n), r(n, 0, 1), new Float32Array(n)], (o, [v, vf, g, y]) => o.residualMixForward(v, vf, g, y));
  both(k, "residual mix backward", [r(n), r(n), r(n, 0, 1), r(n), r(n), r(n), r(n)],
    (o, [v, vf, g, gy, gv, gvf, gg]) => o.residualMixBackward(v, vf, g, gy, gv, gvf, gg));
});

/** add and mul: b as long as a, or a row vector (C) broadcast over the rows. */
const addMul = (which: "add" | "mul") => elementwise((k, r, { R, C }) => {
  const n = R * C;
  for (const rowVector of [false, true]) {
    const bl = rowVector ? C : n, tag = rowVector ? " (row vector)" : "";
    if (which === "add") {
      both(k, "add" + tag, [r(n), r(bl), new Float32Array(n)], (o, [a, b, y]) => o.addForward(a, b, C, y));
      both(k, "add backward" + tag, [r(n), r(bl), r(n), r(n), r(bl)], (o, [a, b, gy, ga, gb]) => o.addBackward(a, b, C, gy, ga, gb));
    } else {
      both(k, "mul" + tag, [r(n), r(bl), new Float32Array(n)], (o, [a, b, y]) => o.mulForward(a, b, C, y));
      both(k, "mul backward" + tag, [r(n), r(bl), r(n), r(n), r(bl)], (o, [a, b, gy, ga, gb]) => o.mulBackward(a, b, C, gy, ga, gb));
    }
  }
});

const sub = elementwise((k, r, { R, C }) => {
  const n = R * C;
  both(k, "sub", [r(n), r(n), new Float32Array(n)], (o, [a, b, y]) => o.subForward(a, b, y));
  both(k, "sub backward", [r(n), r(n), r(n), r(n), r(n)], (o, [a, b, gy, ga, gb]) => o.subBackward(a, b, gy, ga, gb));
});

const scale = elementwise((k, r, { R, C }) => {
  const n = R * C;
  both(k, "scale", [r(n), new Float32Array(n)], (o, [a, y]) => o.scaleForward(a, -1.5, y));
  both(k, "scale backward", [r(n), r(n), r(n)], (o, [a, gy, ga]) => o.scaleBackward(a, -1.5, gy, ga));
});

const sliceCols = elementwise((k, r, { R, C }) => {
  const n = R * C;
  for (const [c0, w] of [[4, 4], [3, 5]]) { // aligned, and unaligned (odd width)
    both(k, `column slice ${c0}+${w}`, [r(n), new Float32Array(R * w)], (o, [x, y]) => o.sliceColsForward(x, R, C, c0, w, y));
    both(k, `column slice ${c0}+${w} backward`, [r(n), r(R * w), r(n)], (o, [x, gy, gx]) => o.sliceColsBackward(x, R, C, c0, w, gy, gx));
  }
});

const activation = elementwise((k, _r, { R, C }) => {
  const n = 4 * R * C, rnd = seeded(R);
  for (const f of ["sigmoid", "tanh", "relu2", "silu", "v7decay"] as const) {
    // Inputs over the range the model sees and beyond, where exp over/underflows.
    const xs = Float32Array.from({ length: n }, (_, i) => (i % 3 === 0 ? rnd(-100, 100) : rnd(-6, 6)));
    both(k, f, [xs, new Float32Array(n)], (o, [x, y]) => o.activationForward(f, x, y));
    const y = new Float32Array(n);
    referenceOps.activationForward(f, xs, y);
    both(k, f + " backward", [xs, y, rand(n, rnd), rand(n, rnd)], (o, [x, yy, gy, gx]) => o.activationBackward(f, x, yy, gy, gx));
  }
});

const groupNorm = elementwise((k, r, { R, C, H, N }) => {
  const n = R * C;
  for (const [G, M] of [[1, C], [H, N]]) {
    const what = G === 1 ? "layer norm" : "group norm";
    const mean = new Float64Array(R * G), rstd = new Float64Array(R * G);
    both(k, what, [r(n), r(C), r(C), new Float32Array(n)], (o, [x, w, b, y]) => o.groupNormForward(x, R, G, M, w, b, 1e-5, y, mean, rstd));
    const x = r(n), w = r(C), b = r(C);
    referenceOps.groupNormForward(x, R, G, M, w, b, 1e-5, new Float32Array(n), mean, rstd);
    both(k, what + " backward", [x, w, b, r(n), r(n), r(C), r(C)],
      (o, [xx, ww, bb, gy, gx, gw, gb]) => o.groupNormBackward(xx, R, G, M, ww, bb, 1e-5, mean, rstd, gy, gx, gw, gb), 1e-5);
  }
});

const l2Normalize = elementwise((k, r, { R, C, N }) => {
  const n = R * C, groups = n / N, norm = new Float64Array(groups), xs = r(n);
  xs.fill(0, 0, N); // one all-zero group: the eps clamp
  both(k, "L2 normalize", [xs, new Float32Array(n)], (o, [x, y]) => o.l2NormalizeForward(x, groups, N, y, norm));
  referenceOps.l2NormalizeForward(xs, groups, N, new Float32Array(n), norm);
  both(k, "L2 normalize backward", [xs, r(n), r(n)], (o, [x, gy, gx]) => o.l2NormalizeBackward(x, groups, N, norm, gy, gx));
});

const keyUpdate = elementwise((k, r, { R, C }) => {
  const n = R * C;
  both(k, "key update", [r(n), r(n, 0, 1), r(C), new Float32Array(n)], (o, [kk, a, ka, y]) => o.keyUpdateForward(kk, a, ka, C, y));
  both(k, "key update backward", [r(n), r(n, 0, 1), r(C), r(n), r(n), r(n), r(C)],
    (o, [kk, a, ka, gy, gk, ga, gka]) => o.keyUpdateBackward(kk, a, ka, C, gy, gk, ga, gka));
});

const bonus = elementwise((k, r, { R, C, H, N }) => {
  const n = R * C;
  both(k, "bonus", [r(n), r(n), r(n), r(C), new Float32Array(n)], (o, [rr, kk, v, rk, y]) => o.bonusForward(rr, kk, v, rk, R, H, N, y));
  both(k, "bonus backward", [r(n), r(n), r(n), r(C), r(n), r(n), r(n), r(n), r(C)],
    (o, [rr, kk, v, rk, gy, gr, gk, gv, grk]) => o.bonusBackward(rr, kk, v, rk, R, H, N, gy, gr, gk, gv, grk));
});

/** The loss: returned value and saved log-sum-exp equal, gradients (with and without L2Wrap) within 2e-6; an ignored target included. */
const crossEntropy: TrainOpCheck = (k) => {
  const rnd = seeded(41), R = 6, V = 11, logits = rand(R * V, rnd, -4, 4);
  const targets = Int32Array.from([3, 0, -1, 10, 5, 7]);
  const mark = k.mark();
  const mine = inside(k, logits), lseA = new Float64Array(R), lseB = new Float64Array(R);
  const got = k.ops.crossEntropyForward(mine, R, V, targets, lseA), want = referenceOps.crossEntropyForward(logits, R, V, targets, lseB);
  assert.ok(Math.abs(got - want) <= 1e-6 * Math.abs(want), `loss ${got} vs ${want}`);
  for (const l2wrap of [false, true]) {
    const ga = inside(k, rand(R * V, seeded(42))), gb = rand(R * V, seeded(42));
    k.ops.crossEntropyBackward(mine, R, V, targets, lseA, 0.5, l2wrap, ga);
    referenceOps.crossEntropyBackward(logits, R, V, targets, lseB, 0.5, l2wrap, gb);
    assert.ok(relErr(ga, gb).rel < 2e-6, `cross entropy backward (l2wrap ${l2wrap}): ${relErr(ga, gb).abs}`);
  }
  k.release(mark);
};

// ---- products ------------------------------------------------------------------------------------

const GEMM_SHAPES: Array<[number, number, number]> = [
  [1, 1, 1], [3, 5, 7], [4, 8, 16], [5, 9, 257], [13, 17, 300], [64, 33, 129], [130, 7, 513], [7, 130, 19], [33, 64, 1], [96, 40, 600],
];

/** Every transpose combination, accumulating or not, operands copied in and in place; on several threads, equal to one thread. */
const gemm: TrainOpCheck = (k, k1) => {
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
  // f64 storage runs the reference's product.
  const A = Float64Array.from([1, 2, 3, 4]), C = new Float64Array(4);
  k.gemm(false, false, 2, 2, 2, A, A, C, false);
  assert.deepEqual([...C], [7, 10, 15, 22]);
  if (!k1) return;
  const before = parallelCalls(k); // split by rows or by columns
  for (const [M, N, K] of [[300, 37, 129], [9, 600, 300], [257, 255, 70]] as const) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        const A2 = rand(M * K, rnd), B2 = rand(K * N, rnd), C0 = rand(M * N, rnd);
        const c1 = Float32Array.from(C0), c2 = Float32Array.from(C0);
        k1.gemm(tA, tB, M, N, K, A2, B2, c1, true);
        k.gemm(tA, tB, M, N, K, A2, B2, c2, true);
        assert.deepEqual(c2, c1, `M ${M} N ${N} K ${K} tA ${tA} tB ${tB}: ${threads(k)} threads differ from 1`);
      }
    }
  }
  assert.ok(parallelCalls(k) > before, "no product ran on several threads");
};

/** AdamW's update in the kernels' memory against optim.ts's loop in f64; operands outside it are refused (false). */
const adamw: TrainOpCheck = (k) => {
  if (!k.adamwUpdate) return; // optional: the optimizer runs its own loop
  const rnd = seeded(31), n = 103; // not a multiple of 4: the scalar tail too
  const make = () => rand(n, rnd);
  const [p, g, m, v] = [make(), make(), make(), make().map(Math.abs)];
  const mark = k.mark();
  const [p2, g2, m2, v2] = [p, g, m, v].map((b) => inside(k, b));
  assert.ok(k.adamwUpdate(p2, g2, m2, v2, 1e-2, 1e-3, 0.9, 0.99, 1e-8, 0.19, 0.0199));
  if (k !== referenceTrainKernels) assert.equal(k.adamwUpdate(p, g, m, v, 1e-2, 1e-3, 0.9, 0.99, 1e-8, 0.19, 0.0199), false, "operands outside the memory");
  for (let i = 0; i < n; i++) {
    const mi = 0.9 * m[i] + 0.1 * g[i], vi = 0.99 * v[i] + 0.01 * g[i] * g[i];
    m[i] = mi; v[i] = vi;
    p[i] -= 1e-2 * ((mi / 0.19) / (Math.sqrt(vi / 0.0199) + 1e-8) + 1e-3 * p[i]);
  }
  for (const [got, want, name] of [[p2, p, "p"], [m2, m, "m"], [v2, v, "v"]] as const) {
    assert.ok(relErr(got, want).rel < 1e-6, `${name}: ${relErr(got, want).abs}`);
  }
  k.release(mark);
};

// ---- WKV scans -----------------------------------------------------------------------------------

/** f32 states and exponentials against the reference's f64 ones: outputs to ~1e-6, gradients to ~1e-5 of the largest. */
const Y_TOL = 1e-5, GRAD_TOL = 1e-4;

/**
 * Runs `forward` then `backward` on kernels `k` with every tensor inside the kernels' memory
 * (`inPlace`, as Graph hands them) or in plain arrays; gradient buffers start non-zero, since the
 * backward accumulates. Returns copies of y and of every gradient.
 */
function runCase(k: TrainKernels, inPlace: boolean, inputs: Float32Array[], yLen: number, gradLens: number[],
  forward: (ins: Float32Array[], y: Float32Array) => Buf | null | void, backward: (ins: Float32Array[], y: Float32Array, fwd: Buf | null | void, grads: Float32Array[]) => void,
): Float32Array[] {
  const mark = k.mark();
  const put = (s: Float32Array): Float32Array => (inPlace ? inside(k, s) : Float32Array.from(s));
  const ins = inputs.map(put);
  const y = put(new Float32Array(yLen));
  const saved = forward(ins, y);
  const grads = gradLens.map((n, i) => put(new Float32Array(n).fill(0.25 * (i + 1))));
  backward(ins, y, saved, grads);
  const out = [y, ...grads].map((b) => Float32Array.from(b));
  k.release(mark);
  return out;
}

function assertClose(what: string, names: string[], got: Float32Array[], want: Float32Array[]): void {
  got.forEach((g, i) => {
    const e = relErr(g, want[i]);
    assert.ok(e.rel < (i === 0 ? Y_TOL : GRAD_TOL), `${what} ${names[i]}: max |diff| ${e.abs} of max ${e.max}`);
  });
}

/**
 * A WKV check: `run(k, shape, seed, inPlace)` on every shape against the reference, in and out of
 * the kernels' memory; then, on several threads, a larger shape equal to one thread bit for bit
 * (forward and backward both split over the threads); then the odd shapes the fast path leaves to
 * the reference, which must equal it exactly.
 */
function wkvCheck<S>(names: string[], shapes: S[], big: S, exact: S[], run: (k: TrainKernels, s: S, seed: number, inPlace: boolean) => Float32Array[],
  seed0: number): TrainOpCheck {
  return (k, k1) => {
    shapes.forEach((s, i) => {
      const want = run(referenceTrainKernels, s, seed0 + i, false);
      for (const inPlace of [false, true]) assertClose(`${JSON.stringify(s)}${inPlace ? " in place" : ""}`, names, run(k, s, seed0 + i, inPlace), want);
    });
    for (const s of exact) assert.deepEqual(run(k, s, seed0 + 50, true), run(referenceTrainKernels, s, seed0 + 50, false), JSON.stringify(s));
    if (!k1) return;
    const before = parallelCalls(k);
    const a = run(k1, big, seed0 + 99, true), b = run(k, big, seed0 + 99, true);
    b.forEach((g, j) => assert.deepEqual(g, a[j], `${JSON.stringify(big)} ${names[j]}: ${threads(k)} threads differ from 1`));
    assert.ok(parallelCalls(k) >= before + 2, "the scans did not run on several threads");
  };
}

interface V4Case { B: number; T: number; C: number }

function wkv4Case(k: TrainKernels, c: V4Case, seed: number, inPlace: boolean): Float32Array[] {
  const { B, T, C } = c, n = B * T * C, rnd = seeded(seed);
  // As the golden check draws them: decays over e^{-2}…e^{1}, keys wide enough to move the running maximum.
  const inputs = [rand(C, rnd, -2, 1), rand(C, rnd), rand(n, rnd, -2, 2), rand(n, rnd), rand(n, rnd)]; // td, tf, k, v, gy
  return runCase(k, inPlace, inputs, n, [C, C, n, n],
    ([td, tf, kk, v], y) => k.wkv4Forward(B, T, C, td, tf, kk, v, y),
    ([td, tf, kk, v, gy], y, _, [gtd, gtf, gk, gv]) => k.wkv4Backward(B, T, C, td, tf, kk, v, y, gy, gtd, gtf, gk, gv));
}

const wkv4 = wkvCheck(["y", "time_decay", "time_first", "k", "v"],
  [{ B: 2, T: 37, C: 12 }, { B: 1, T: 20, C: 8 }, { B: 3, T: 16, C: 4 }, { B: 2, T: 5, C: 20 }, { B: 1, T: 1, C: 4 }],
  { B: 3, T: 40, C: 16 }, [{ B: 2, T: 9, C: 6 }], wkv4Case, 40);

interface V5Case { B: number; T: number; H: number; N: number; perToken: boolean }

function wkv5Case(k: TrainKernels, c: V5Case, seed: number, inPlace: boolean): Float32Array[] {
  const { B, T, H, N } = c, C = H * N, n = B * T * C, nw = c.perToken ? n : C, rnd = seeded(seed);
  // wraw over [-3, 0]: decays exp(-exp(wraw)) from 0.37 to 0.95, the range trained models use.
  const inputs = [rand(n, rnd), rand(n, rnd), rand(n, rnd), rand(nw, rnd, -3, 0), rand(C, rnd), rand(n, rnd)]; // r, k, v, wraw, u, gy
  return runCase(k, inPlace, inputs, n, [n, n, n, nw, C],
    ([r, kk, v, w, u], y) => k.wkv5Forward(B, T, H, N, r, kk, v, w, u, y, true),
    ([r, kk, v, w, u, gy], _y, ckpt, [gr, gk, gv, gw, gu]) => k.wkv5Backward(B, T, H, N, r, kk, v, w, u, ckpt as Buf, gy, gr, gk, gv, gw, gu));
}

const V5_SHAPES = [{ B: 2, T: 37, H: 3, N: 8 }, { B: 1, T: 20, H: 2, N: 64 }, { B: 3, T: 16, H: 1, N: 4 }, { B: 2, T: 5, H: 2, N: 12 }, { B: 1, T: 1, H: 1, N: 4 }];
/** Constant decay (v5.2) and per-token decay (v6). */
const wkv5 = (perToken: boolean) => wkvCheck(["y", "r", "k", "v", "w", "u"], V5_SHAPES.map((s) => ({ ...s, perToken })),
  { B: 3, T: 40, H: 4, N: 16, perToken }, [{ B: 2, T: 19, H: 2, N: 6, perToken }], wkv5Case, perToken ? 70 : 60);

interface V7Case { B: number; T: number; H: number; N: number; state: boolean }

/**
 * wkv7 from zeros, or from a trained initial state s0 (state tuning) with the gradient of s0;
 * a = -kk, b = kk·iclr with kk unit per head, as the model feeds them.
 */
function wkv7Case(k: TrainKernels, c: V7Case, seed: number, inPlace: boolean): Float32Array[] {
  const { B, T, H, N } = c, n = B * T * H * N, rnd = seeded(seed);
  const kk = rand(n, rnd), iclr = rand(n, rnd, 0, 1);
  for (let g = 0; g < n / N; g++) {
    const s = Math.hypot(...kk.subarray(g * N, (g + 1) * N));
    for (let j = 0; j < N; j++) kk[g * N + j] /= s;
  }
  const inputs = [rand(n, rnd), rand(n, rnd, -3, -0.6), rand(n, rnd), rand(n, rnd), kk.map((x) => -x), kk.map((x, i) => x * iclr[i]),
    rand(H * N * N, rnd, -0.5, 0.5), rand(n, rnd)]; // r, wraw, k, v, a, b, s0, gy
  return runCase(k, inPlace, inputs, n, [n, n, n, n, n, n, ...(c.state ? [H * N * N] : [])],
    ([r, w, kx, v, a, b, s0], y) => k.wkv7Forward(B, T, H, N, r, w, kx, v, a, b, y, true, c.state ? s0 : null),
    ([r, w, kx, v, a, b, _s0, gy], _y, ckpt, [gr, gw, gk, gv, ga, gb, gs0]) =>
      k.wkv7Backward(B, T, H, N, r, w, kx, v, a, b, ckpt as Buf, gy, gr, gw, gk, gv, ga, gb, c.state ? gs0 : null));
}

const V7_SHAPES = [{ B: 2, T: 37, H: 3, N: 8 }, { B: 1, T: 20, H: 2, N: 64 }, { B: 3, T: 16, H: 1, N: 4 }, { B: 2, T: 5, H: 2, N: 12 }];
/** From zeros, and from a trained initial state. */
const wkv7 = (state: boolean) => wkvCheck(["y", "r", "w", "k", "v", "a", "b", "s0"], V7_SHAPES.map((s) => ({ ...s, state })),
  { B: 3, T: 40, H: 4, N: 16, state }, [{ B: 1, T: 9, H: 2, N: 6, state }], wkv7Case, state ? 80 : 100);

const both2 = (a: TrainOpCheck, b: TrainOpCheck): TrainOpCheck => (k, k1) => { a(k, k1); b(k, k1); };
const wkv5Both = both2(wkv5(false), wkv5(true)), wkv7Both = both2(wkv7(false), wkv7(true));
const add = addMul("add"), mul = addMul("mul");

/** One check per op of the training half; a forward and its backward share theirs. */
export const TRAIN_OP_CHECKS: Readonly<Record<TrainingOp, TrainOpCheck>> = {
  gemm, adamwUpdate: adamw,
  embeddingForward: embedding, embeddingBackward: embedding, tokenShiftForward: tokenShift, tokenShiftBackward: tokenShift,
  lerpForward: lerp, lerpBackward: lerp, lerpDynForward: lerpDyn, lerpDynBackward: lerpDyn,
  residualMixForward: residualMix, residualMixBackward: residualMix, addForward: add, addBackward: add,
  mulForward: mul, mulBackward: mul, subForward: sub, subBackward: sub, scaleForward: scale, scaleBackward: scale,
  sliceColsForward: sliceCols, sliceColsBackward: sliceCols, activationForward: activation, activationBackward: activation,
  groupNormForward: groupNorm, groupNormBackward: groupNorm, l2NormalizeForward: l2Normalize, l2NormalizeBackward: l2Normalize,
  keyUpdateForward: keyUpdate, keyUpdateBackward: keyUpdate, bonusForward: bonus, bonusBackward: bonus,
  crossEntropyForward: crossEntropy, crossEntropyBackward: crossEntropy,
  wkv4Forward: wkv4, wkv4Backward: wkv4, wkv5Forward: wkv5Both, wkv5Backward: wkv5Both, wkv7Forward: wkv7Both, wkv7Backward: wkv7Both,
};
