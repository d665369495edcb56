import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { Graph, Var } from "../src/core/train/graph.js";
import { referenceTrainKernels, type TrainDType } from "../src/core/backend/train-kernels.js";
import { TrainModel } from "../src/core/train/model.js";
import { type Activation, IGNORE_TARGET, L2WRAP_SCALE } from "../src/core/backend/train-ops.js";
import { WasmTrainKernels, wasmTrainAvailable } from "../src/core/backend/wasm-train.js";
import { wkv4Backward, wkv4Forward, wkv5Backward, wkv5Forward, wkv7Backward, wkv7Forward, wkvChunks } from "../src/core/backend/wkv-train.js";
import { loadModel } from "../src/node/load.js";
import { readJson, readSafetensorsF64, sharedPath } from "./shared.js";
import { GOLDEN_VERSIONS, type GoldenModel, loadParams, nextTokenTargets, relErr, seeded } from "./train-helpers.js";

/*
 * Acceptance of the hand-written backward passes (issue 7):
 *  - every op's backward against central finite differences (float64);
 *  - the WKV backward of each version against ../shared/golden/wkv_kernels (fp64 autograd);
 *  - every parameter gradient of each golden model against grads_fp64.safetensors (fp64: 1e-9,
 *    fp32: 1e-4 of the tensor's max |gradient|) and the loss against loss_fp64, with the reference
 *    kernels and (fp32) with the wasm kernels;
 *  - training logits against the inference engine's sequence logits.
 */

// ---------------------------------------------------------------- finite differences

interface Input { rows: number; cols: number; lo?: number; hi?: number; fixed?: boolean }
interface OpCase { name: string; inputs: Input[]; run(g: Graph, v: Var[]): Var }

/** Central-difference step: small enough for O(h²) error ~1e-12, large enough for rounding ~1e-10. */
const FD_STEP = 1e-6;
/** Allowed |numeric - analytic| relative to the input's largest analytic gradient. */
const FD_TOL = 1e-6;
/** Elements probed per input tensor (all of them when it is smaller). */
const FD_PROBES = 24;

function fdCheck(c: OpCase, seed: number): void {
  const rnd = seeded(seed);
  const data = c.inputs.map((i) => Float64Array.from({ length: i.rows * i.cols }, () => rnd(i.lo ?? -1, i.hi ?? 1)));
  const grads = c.inputs.map((i) => (i.fixed ? null : new Float64Array(i.rows * i.cols)));
  const build = (recording: boolean) => {
    const g = new Graph("f64", referenceTrainKernels, recording);
    const vars = data.map((d, k) => g.leaf(d, c.inputs[k].rows, c.inputs[k].cols, grads[k]));
    return { g, y: c.run(g, vars) };
  };
  const { g, y } = build(true);
  const gy = Float64Array.from({ length: y.data.length }, () => rnd());
  y.grad = gy;
  g.backward();
  const lossAt = () => { const o = build(false).y.data; let s = 0; for (let i = 0; i < o.length; i++) s += o[i] * gy[i]; return s; };
  data.forEach((d, k) => {
    const an = grads[k];
    if (!an) return;
    let scale = 0;
    for (const x of an) scale = Math.max(scale, Math.abs(x));
    const idx = d.length <= FD_PROBES ? [...d.keys()] : Array.from({ length: FD_PROBES }, () => Math.floor(rnd(0, d.length)));
    for (const i of idx) {
      const x0 = d[i], h = FD_STEP * Math.max(1, Math.abs(x0));
      d[i] = x0 + h; const lp = lossAt();
      d[i] = x0 - h; const lm = lossAt();
      d[i] = x0;
      const num = (lp - lm) / (2 * h);
      assert.ok(Math.abs(num - an[i]) <= FD_TOL * Math.max(scale, 1e-3),
        `${c.name}: input ${k}[${i}] numeric ${num} vs analytic ${an[i]} (max |grad| ${scale})`);
    }
  });
}

// Shapes for the op cases: B sequences of T steps (T not a multiple of the 16-step chunk), C = H·N.
const B = 2, T = 21, H = 2, N = 4, C = H * N, R = B * T;

const ACTIVATIONS: Activation[] = ["sigmoid", "tanh", "relu2", "silu", "v7decay"];

const OP_CASES: OpCase[] = [
  { name: "embedding", inputs: [{ rows: 5, cols: C }], run: (g, [E]) => g.embedding(E, Int32Array.from([0, 3, 3, 4, 1, 0])) },
  { name: "layerNorm", inputs: [{ rows: R, cols: C }, { rows: 1, cols: C }, { rows: 1, cols: C }], run: (g, [x, w, b]) => g.layerNorm(x, w, b, 1e-5) },
  { name: "groupNorm", inputs: [{ rows: R, cols: C }, { rows: 1, cols: C }, { rows: 1, cols: C }], run: (g, [x, w, b]) => g.groupNorm(x, H, N, w, b, 64e-5) },
  { name: "tokenShift", inputs: [{ rows: R, cols: C }], run: (g, [x]) => g.tokenShift(x, B, T) },
  { name: "mix", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }, { rows: 1, cols: C }], run: (g, [x, s, m]) => g.mix(x, s, m) },
  { name: "lerp", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }, { rows: 1, cols: C }], run: (g, [x, s, m]) => g.lerp(x, s, m) },
  { name: "lerpDyn", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }, { rows: 1, cols: C }, { rows: R, cols: C }], run: (g, [x, d, m, dm]) => g.lerpDyn(x, d, m, dm) },
  { name: "residualMix", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }, { rows: R, cols: C }], run: (g, [v, f, s]) => g.residualMix(v, f, s) },
  { name: "linear", inputs: [{ rows: R, cols: C }, { rows: 6, cols: C }], run: (g, [x, W]) => g.linear(x, W) },
  { name: "project", inputs: [{ rows: R, cols: C }, { rows: C, cols: 3 }], run: (g, [x, M]) => g.project(x, M) },
  ...ACTIVATIONS.map((f): OpCase => ({ name: f, inputs: [{ rows: R, cols: C, lo: -3, hi: 3 }], run: (g, [x]) => g.act(f, x) })),
  { name: "add (rows)", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }], run: (g, [a, b]) => g.add(a, b) },
  { name: "add (row vector)", inputs: [{ rows: R, cols: C }, { rows: 1, cols: C }], run: (g, [a, b]) => g.add(a, b) },
  { name: "mul (rows)", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }], run: (g, [a, b]) => g.mul(a, b) },
  { name: "mul (row vector)", inputs: [{ rows: R, cols: C }, { rows: 1, cols: C }], run: (g, [a, b]) => g.mul(a, b) },
  { name: "sub", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }], run: (g, [a, b]) => g.sub(a, b) },
  { name: "scale", inputs: [{ rows: R, cols: C }], run: (g, [a]) => g.scale(a, -1.5) },
  { name: "l2Normalize", inputs: [{ rows: R, cols: C }], run: (g, [x]) => g.l2Normalize(x, N) },
  { name: "keyUpdate", inputs: [{ rows: R, cols: C }, { rows: R, cols: C, lo: 0, hi: 1 }, { rows: 1, cols: C }], run: (g, [k, a, ka]) => g.keyUpdate(k, a, ka) },
  { name: "bonus", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }, { rows: R, cols: C }, { rows: 1, cols: C }], run: (g, [r, k, v, rk]) => g.bonus(r, k, v, rk, H, N) },
  { name: "sliceCols", inputs: [{ rows: R, cols: 3 * C }], run: (g, [x]) => g.sliceCols(x, C, C) },
  {
    name: "wkv4", inputs: [{ rows: 1, cols: C, lo: -2, hi: 1 }, { rows: 1, cols: C }, { rows: R, cols: C, lo: -2, hi: 2 }, { rows: R, cols: C }],
    run: (g, [w, u, k, v]) => g.wkv4(B, T, w, u, k, v),
  },
  {
    name: "wkv5 (v5.2, constant decay)", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }, { rows: R, cols: C }, { rows: 1, cols: C, lo: -3, hi: 0 }, { rows: 1, cols: C }],
    run: (g, [r, k, v, w, u]) => g.wkv5(B, T, H, N, r, k, v, w, u),
  },
  {
    name: "wkv5 (v6, per-token decay)", inputs: [{ rows: R, cols: C }, { rows: R, cols: C }, { rows: R, cols: C }, { rows: R, cols: C, lo: -3, hi: 0 }, { rows: 1, cols: C }],
    run: (g, [r, k, v, w, u]) => g.wkv5(B, T, H, N, r, k, v, w, u),
  },
  {
    name: "wkv7", inputs: [{ rows: R, cols: C }, { rows: R, cols: C, lo: -3, hi: -0.6 }, { rows: R, cols: C }, { rows: R, cols: C }, { rows: R, cols: C, lo: -0.5, hi: 0.5 }, { rows: R, cols: C, lo: -0.5, hi: 0.5 }],
    run: (g, [r, w, k, v, a, b]) => g.wkv7(B, T, H, N, r, w, k, v, a, b),
  },
];

test("every training op's backward matches central finite differences (float64)", () => {
  OP_CASES.forEach((c, i) => fdCheck(c, 1000 + i));
});

test("cross entropy backward matches finite differences; L2Wrap adds max·1e-4/(B·T) at each argmax", () => {
  const rnd = seeded(7);
  const V = 11, rows = 6;
  const logits = Float64Array.from({ length: rows * V }, () => rnd(-3, 3));
  const targets = Int32Array.from([3, 0, IGNORE_TARGET, 10, 5, IGNORE_TARGET]);
  const lossOf = (l2wrap: boolean) => {
    const grad = new Float64Array(rows * V);
    const g = new Graph("f64", referenceTrainKernels, true);
    const loss = g.crossEntropy(g.leaf(logits, rows, V, grad), targets, l2wrap);
    g.backward();
    return { loss, grad };
  };
  const { grad } = lossOf(false);
  for (let i = 0; i < logits.length; i++) {
    const x0 = logits[i];
    logits[i] = x0 + FD_STEP; const lp = lossOf(false).loss;
    logits[i] = x0 - FD_STEP; const lm = lossOf(false).loss;
    logits[i] = x0;
    assert.ok(Math.abs((lp - lm) / (2 * FD_STEP) - grad[i]) < 1e-8, `logit ${i}`);
  }
  // L2Wrap leaves the loss unchanged and adds only at each row's argmax, ignored rows included.
  const wrapped = lossOf(true);
  assert.equal(wrapped.loss, lossOf(false).loss);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[r * V + v] > logits[r * V + best]) best = v;
    for (let v = 0; v < V; v++) {
      const extra = wrapped.grad[r * V + v] - grad[r * V + v];
      const want = v === best ? logits[r * V + v] * L2WRAP_SCALE / rows : 0;
      assert.ok(Math.abs(extra - want) < 1e-15, `row ${r} logit ${v}: ${extra} vs ${want}`);
    }
  }
});

// ---------------------------------------------------------------- WKV kernels vs golden

interface WkvGolden {
  B: number; T: number; H: number; N: number; C: number;
  versions: Record<string, { inputs: Record<string, unknown>; gy: unknown; y: unknown; grads_autograd: Record<string, unknown> }>;
}

/** fp64 implementations agree with fp64 autograd to ~1e-14; 1e-9 of the max leaves room for summation order. */
const FP64_REL_TOL = 1e-9;

const flat = (x: unknown): Float64Array => Float64Array.from((x as number[]).flat(3) as number[]);

test("the WKV backward of each version matches wkv_kernel_golden_fp64.json (fp64 autograd)", (t) => {
  const path = sharedPath(t, "golden", "wkv_kernels", "wkv_kernel_golden_fp64.json");
  if (!path) return;
  const gold = readJson<WkvGolden>(path);
  const { B: GB, T: GT, H: GH, N: GN, C: GC } = gold;
  const check = (version: string, name: string, got: Float64Array, want: unknown) => {
    const e = relErr(got, flat(want));
    assert.ok(e.rel < FP64_REL_TOL, `${version} ${name}: max |diff| ${e.abs} of max ${e.max}`);
  };
  const R2 = GB * GT * GC;

  { // v4: grads w.r.t. the raw time_decay (the kernel gets w = -exp(time_decay))
    const g = gold.versions.v4, i = g.inputs;
    const [td, tf, k, v, gy] = [flat(i.time_decay), flat(i.time_first), flat(i.k), flat(i.v), flat(g.gy)];
    const y = new Float64Array(R2);
    wkv4Forward(GB, GT, GC, td, tf, k, v, y);
    check("v4", "y", y, g.y);
    const [gtd, gtf, gk, gv] = [new Float64Array(GC), new Float64Array(GC), new Float64Array(R2), new Float64Array(R2)];
    wkv4Backward(GB, GT, GC, td, tf, k, v, y, gy, gtd, gtf, gk, gv);
    check("v4", "time_decay", gtd, g.grads_autograd.time_decay);
    check("v4", "time_first", gtf, g.grads_autograd.time_first);
    check("v4", "k", gk, g.grads_autograd.k);
    check("v4", "v", gv, g.grads_autograd.v);
  }
  for (const version of ["v5.2", "v6"]) {
    const g = gold.versions[version], i = g.inputs;
    const perToken = version === "v6";
    const [r, k, v, w, u, gy] = [flat(i.r), flat(i.k), flat(i.v), flat(perToken ? i.w : i.time_decay), flat(perToken ? i.u : i.time_faaaa), flat(g.gy)];
    const y = new Float64Array(R2), ckpt = new Float64Array(GB * GH * wkvChunks(GT) * GN * GN);
    wkv5Forward(GB, GT, GH, GN, r, k, v, w, u, y, ckpt);
    check(version, "y", y, g.y);
    const [gr, gk, gv, gw, gu] = [new Float64Array(R2), new Float64Array(R2), new Float64Array(R2), new Float64Array(w.length), new Float64Array(GC)];
    wkv5Backward(GB, GT, GH, GN, r, k, v, w, u, ckpt, gy, gr, gk, gv, gw, gu);
    check(version, "r", gr, g.grads_autograd.r);
    check(version, "k", gk, g.grads_autograd.k);
    check(version, "v", gv, g.grads_autograd.v);
    check(version, "w", gw, perToken ? g.grads_autograd.w : g.grads_autograd.time_decay);
    check(version, "u", gu, perToken ? g.grads_autograd.u : g.grads_autograd.time_faaaa);
  }
  {
    const g = gold.versions.v7, i = g.inputs;
    const [r, w, k, v, a, b, gy] = [flat(i.r), flat(i.w), flat(i.k), flat(i.v), flat(i.a), flat(i.b), flat(g.gy)];
    const y = new Float64Array(R2), ckpt = new Float64Array(GB * GH * wkvChunks(GT) * GN * GN);
    wkv7Forward(GB, GT, GH, GN, r, w, k, v, a, b, y, ckpt);
    check("v7", "y", y, g.y);
    const grads = Array.from({ length: 6 }, () => new Float64Array(R2));
    wkv7Backward(GB, GT, GH, GN, r, w, k, v, a, b, ckpt, gy, grads[0], grads[1], grads[2], grads[3], grads[4], grads[5]);
    ["r", "w", "k", "v", "a", "b"].forEach((n, j) => check("v7", n, grads[j], g.grads_autograd[n]));
  }
});

// ---------------------------------------------------------------- golden models

/** Issue 7's bar for fp32 gradients: within 1e-4 of each tensor's max |gradient|. */
const FP32_REL_TOL = 1e-4;
/** fp32 loss vs the fp64 golden (observed ~1e-7; the official fp32 run is 1.2e-6 off). */
const FP32_LOSS_TOL = 1e-5;

/** The kernels each golden runs on: the reference in f64 and f32, and the wasm kernels (f32 only) where they can run. */
const GOLDEN_RUNS: ReadonlyArray<{ dtype: TrainDType; kernels: "reference" | "wasm" }> = [
  { dtype: "f64", kernels: "reference" }, { dtype: "f32", kernels: "reference" }, { dtype: "f32", kernels: "wasm" },
];

for (const v of GOLDEN_VERSIONS) {
  for (const { dtype, kernels: kind } of GOLDEN_RUNS) {
    const skip = kind === "wasm" && !wasmTrainAvailable() ? "WebAssembly SIMD with shared memory is not available" : false;
    test(`golden ${v} (${dtype}, ${kind} kernels): loss and every parameter gradient match grads_fp64.safetensors`, { skip }, (t) => {
      const dir = sharedPath(t, "golden", v);
      if (!dir) return;
      const kernels = kind === "wasm" ? new WasmTrainKernels({ threads: 1 }) : referenceTrainKernels;
      const gold = readJson<GoldenModel>(join(dir, "golden.json"));
      // The goldens are the plain mean cross entropy over tokens[1:] (no L2Wrap): check that it says so.
      assert.match(gold.train_gpt.desc, /no L2Wrap/);
      const params = loadParams(join(dir, "model.pth"), dtype);
      const model = new TrainModel(params, { kernels });
      if (kind === "wasm") assert.ok((kernels as WasmTrainKernels).owns(params.list[0].data), "parameters were not placed in the wasm memory");
      const g = new Graph(dtype, kernels, true);
      const logits = model.forward(g, Int32Array.from(gold.tokens), 1, gold.tokens.length);
      const loss = g.crossEntropy(logits, nextTokenTargets(gold.tokens), false);
      g.backward();
      const lossTol = dtype === "f64" ? 1e-12 : FP32_LOSS_TOL;
      assert.ok(Math.abs(loss - gold.train_gpt.loss_fp64) < lossTol, `loss ${loss} vs ${gold.train_gpt.loss_fp64}`);
      const logitErr = relErr(logits.data, gold.train_gpt.logits_fp64.flat());
      assert.ok(logitErr.abs < (dtype === "f64" ? 1e-10 : 1e-4), `logits max |diff| ${logitErr.abs}`);

      const want = readSafetensorsF64(join(dir, "grads_fp64.safetensors"));
      const tol = dtype === "f64" ? FP64_REL_TOL : FP32_REL_TOL;
      let worst = 0;
      assert.equal(gold.train_gpt.params_with_grad.length, params.list.length - model.unusedParams().size);
      for (const name of gold.train_gpt.params_with_grad) {
        const ref = want.get(name);
        assert.ok(ref, `grads file lacks ${name}`);
        const e = relErr(params.get(name).grad!, ref);
        worst = Math.max(worst, e.rel);
        assert.ok(e.rel <= tol, `${name}: max |diff| ${e.abs} = ${e.rel} of max |grad| ${e.max}`);
      }
      t.diagnostic(`${v} ${dtype} ${kind}: loss ${loss}, worst gradient error ${worst.toExponential(2)} of tensor max`);
    });
  }
}

test("training logits equal the inference engine's sequence logits (golden models, B = 2)", async (t) => {
  for (const v of GOLDEN_VERSIONS) {
    const dir = sharedPath(t, "golden", v);
    if (!dir) return;
    const gold = readJson<GoldenModel>(join(dir, "golden.json"));
    const model = new TrainModel(loadParams(join(dir, "model.pth"), "f32"));
    const inf = await loadModel(join(dir, "model.pth"), { backend: "reference", matrices: "f32" });
    // Two different sequences in one batch: each must equal its own inference run from a zero state.
    const seqs = [gold.tokens, [...gold.tokens].reverse()];
    const Tn = gold.tokens.length;
    const got = model.forward(new Graph("f32", referenceTrainKernels, false), Int32Array.from(seqs.flat()), seqs.length, Tn).data;
    const V = model.config.vocabSize;
    for (const [b, s] of seqs.entries()) {
      const want = await inf.forward(s, inf.initState(), { allLogits: true });
      const e = relErr(got.subarray(b * Tn * V, (b + 1) * Tn * V), want);
      // Same f32 math in a different association (f64 states here, f32 states there): ~1e-6.
      assert.ok(e.abs < 1e-5, `${v} sequence ${b}: max |diff| ${e.abs}`);
    }
  }
});
