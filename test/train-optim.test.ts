import assert from "node:assert/strict";
import { test } from "node:test";
import { Graph } from "../src/core/train/graph.js";
import { initModel, type NewModelSpec } from "../src/core/train/init.js";
import { loraWidths } from "../src/core/model/v7/sizes.js";
import { referenceTrainKernels } from "../src/core/backend/train-kernels.js";
import { TrainModel, type TrainVersion } from "../src/core/train/model.js";
import { AdamW, clipGradNorm, gradNorm, learningRate, type LrSchedule, paramGroup } from "../src/core/train/optim.js";
import { ParamStore } from "../src/core/train/params.js";
import { TrainRng } from "../src/core/train/rng.js";
import { trainStep } from "../src/core/train/trainer.js";
import { readJson, sharedPath } from "./shared.js";

/*
 * AdamW with RWKV-LM's parameter groups, the learning-rate schedule, gradient clipping, the
 * official initialisation and the resumable RNG.
 */

test("parameter groups: lr multipliers and weight decay as RWKV-LM's configure_optimizers", () => {
  const g = (name: string, shape: number[], v: TrainVersion) => paramGroup(name, shape, v);
  // v7 (train_temp): w0 2x; ≥2-D ".weight" decayed; LoRA factors, r_k, mixes, norms plain.
  assert.deepEqual(g("blocks.0.att.w0", [1, 1, 128], "7"), { lrScale: 2, decay: false });
  assert.deepEqual(g("blocks.0.att.key.weight", [128, 128], "7"), { lrScale: 1, decay: true });
  assert.deepEqual(g("emb.weight", [512, 128], "7"), { lrScale: 1, decay: true });
  assert.deepEqual(g("head.weight", [512, 128], "7"), { lrScale: 1, decay: true });
  assert.deepEqual(g("blocks.0.att.w1", [128, 32], "7"), { lrScale: 1, decay: false });
  assert.deepEqual(g("blocks.0.att.r_k", [2, 64], "7"), { lrScale: 1, decay: false });
  assert.deepEqual(g("blocks.0.att.x_r", [1, 1, 128], "7"), { lrScale: 1, decay: false });
  assert.deepEqual(g("blocks.0.ln1.weight", [128], "7"), { lrScale: 1, decay: false });
  assert.deepEqual(g("blocks.0.att.ln_x.weight", [128], "7"), { lrScale: 1, decay: false });
  // v4/v5/v6 (layerwise_lr): time_decay 2x, time_first 3x, time_faaaa/mix/maa/LoRA 1x, never decayed.
  assert.deepEqual(g("blocks.0.att.time_decay", [96], "4"), { lrScale: 2, decay: false });
  assert.deepEqual(g("blocks.0.att.time_first", [96], "4"), { lrScale: 3, decay: false });
  assert.deepEqual(g("blocks.0.att.time_decay", [3, 32], "5.2"), { lrScale: 2, decay: false });
  assert.deepEqual(g("blocks.0.att.time_faaaa", [3, 32], "5.2"), { lrScale: 1, decay: false });
  assert.deepEqual(g("blocks.0.att.time_decay_w1", [96, 64], "6"), { lrScale: 1, decay: false });
  assert.deepEqual(g("blocks.0.att.time_maa_w2", [5, 32, 96], "6"), { lrScale: 1, decay: false });
  assert.deepEqual(g("blocks.0.ffn.time_mix_k", [1, 1, 96], "5.2"), { lrScale: 1, decay: false });
  assert.deepEqual(g("blocks.0.ffn.key.weight", [320, 96], "6"), { lrScale: 1, decay: true });
});

test("AdamW: bias-corrected FusedAdam update, decoupled decay only in the decay group, frozen params untouched", () => {
  const store = new ParamStore("f64");
  const w = store.add("blocks.0.att.key.weight", [2, 2], [1, -2, 3, 0.5]);
  const d = store.add("blocks.0.att.w0", [1, 1, 2], [0.25, -1]);
  const f = store.add("blocks.0.att.v1", [2, 1], [7, 8]);
  const opt = new AdamW(store, "7", { beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1 }, new Set([f.name]));
  const grads = [[0.5, -1, 2, 0], [1, 0.25]];
  const ref = { w: [...w.data], d: [...d.data], mw: [0, 0, 0, 0], vw: [0, 0, 0, 0], md: [0, 0], vd: [0, 0] };
  for (let step = 1; step <= 3; step++) {
    const lr = 0.01 * step;
    w.grad!.set(grads[0].map((x) => x * step)); d.grad!.set(grads[1].map((x) => x / step)); f.grad!.fill(1);
    opt.step(lr);
    const upd = (p: number[], m: number[], v: number[], g: number[], rate: number, wd: number) => p.forEach((x, i) => {
      m[i] = 0.9 * m[i] + 0.1 * g[i];
      v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
      p[i] = x - rate * ((m[i] / (1 - 0.9 ** step)) / (Math.sqrt(v[i] / (1 - 0.99 ** step)) + 1e-8) + wd * x);
    });
    upd(ref.w, ref.mw, ref.vw, grads[0].map((x) => x * step), lr, 0.1);
    upd(ref.d, ref.md, ref.vd, grads[1].map((x) => x / step), 2 * lr, 0);
    ref.w.forEach((x, i) => assert.ok(Math.abs(w.data[i] - x) < 1e-15, `w[${i}] step ${step}`));
    ref.d.forEach((x, i) => assert.ok(Math.abs(d.data[i] - x) < 1e-15, `w0[${i}] step ${step}`));
  }
  assert.deepEqual([...f.data], [7, 8]);
  assert.equal(opt.state.step, 3);
});

test("gradient clipping scales the global norm down to the limit, and only above it", () => {
  const store = new ParamStore("f64");
  store.add("a", [3], [3, 0, 0]).grad!.set([3, 0, 0]);
  store.add("b", [1], [0]).grad!.set([4]);
  assert.equal(clipGradNorm(store.list, 10), 5);
  assert.equal(gradNorm(store.list), 5);
  assert.equal(clipGradNorm(store.list, 1), 5);
  assert.ok(Math.abs(gradNorm(store.list) - 1) < 1e-6);
});

test("learning rate: warmup from 1%, then cosine or linear decay to lr_final", () => {
  const s: LrSchedule = { lrInit: 1e-3, lrFinal: 1e-4, warmupSteps: 10, totalSteps: 110, decay: "cosine" };
  assert.ok(Math.abs(learningRate(s, 0) - 1e-5) < 1e-18);
  assert.ok(Math.abs(learningRate(s, 5) - 1e-3 * (0.01 + 0.99 * 0.5)) < 1e-15);
  assert.ok(Math.abs(learningRate(s, 10) - 1e-3) < 1e-15);
  assert.ok(Math.abs(learningRate(s, 60) - 5.5e-4) < 1e-15);
  assert.ok(Math.abs(learningRate(s, 110) - 1e-4) < 1e-15);
  assert.ok(Math.abs(learningRate(s, 500) - 1e-4) < 1e-15);
  const lin = { ...s, decay: "linear" as const };
  assert.ok(Math.abs(learningRate(lin, 35) - (1e-3 - 0.9e-3 * 0.25)) < 1e-15);
});

test("the RNG's state restores its stream exactly", () => {
  const a = new TrainRng(42);
  for (let i = 0; i < 10; i++) a.uint32();
  const b = TrainRng.fromState(a.state());
  const xs = Array.from({ length: 20 }, () => [a.uniform(), a.normal(), a.int(1000)]);
  const ys = Array.from({ length: 20 }, () => [b.uniform(), b.normal(), b.int(1000)]);
  assert.deepEqual(xs, ys);
  assert.notDeepEqual(new TrainRng(1).state(), new TrainRng(2).state());
  const u = Array.from({ length: 10000 }, () => a.uniform());
  const mean = u.reduce((x, y) => x + y) / u.length;
  assert.ok(Math.abs(mean - 0.5) < 0.02 && Math.min(...u) >= 0 && Math.max(...u) < 1);
});

test("initialisation: RWKV-LM's names, shapes, order and formulas; orthogonal matrices; seeded", (t) => {
  const spec: NewModelSpec = { version: "7", nLayer: 3, nEmbd: 128, vocabSize: 512, headSize: 64 };
  const p = initModel(spec, new TrainRng(5), "f64");
  // Same tensor names in the same order as the golden v7 checkpoint written by RWKV-LM.
  const gold = sharedPath(t, "golden", "v7", "golden.json");
  if (gold) {
    const names = readJson<{ checkpoint: { tensors: Array<{ name: string }> } }>(gold).checkpoint.tensors.map((x) => x.name);
    assert.deepEqual(p.list.map((x) => x.name), names);
  }
  // LoRA widths: max(32, round(k·sqrt(C)/32)·32); the released 0.1B (C = 768) has 64/64/32/128.
  assert.deepEqual(loraWidths(768), { w: 64, a: 64, v: 32, g: 128 });
  // train_temp's formula at C = 2048 (Python rounding: 2.5·√2048/32 = 3.54 -> 4, 5·√2048/32 = 7.07 -> 7).
  assert.deepEqual(loraWidths(2048), { w: 128, a: 128, v: 64, g: 224 });
  assert.deepEqual(p.get("blocks.0.att.w1").shape, [128, 32]);
  assert.deepEqual(p.get("blocks.0.att.g2").shape, [64, 128]);
  assert.deepEqual(p.get("blocks.1.att.r_k").shape, [2, 64]);
  assert.deepEqual(p.get("blocks.0.ffn.key.weight").shape, [512, 128]);
  const v = (name: string, i: number) => p.get(name).data[i];
  const near = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) < 1e-12, `${what}: ${a} vs ${b}`);
  // Per-channel "fancy" values of layer 1 (ratio_0_to_1 = 0.5, ratio_1_to_almost0 = 2/3).
  near(v("blocks.1.att.x_r", 64), 1 - 0.5 ** (0.2 * (2 / 3)), "x_r");
  near(v("blocks.1.att.x_w", 32), 1 - 0.25 ** (0.9 * (2 / 3)), "x_w");
  near(v("blocks.1.ffn.x_k", 64), 1 - 0.5 ** ((2 / 3) ** 4), "ffn x_k");
  const zig = (n: number) => { const z = ((n % 64) - 31.5) / 31.5; return z * Math.abs(z); };
  near(v("blocks.1.att.w0", 10), -6 + 6 * (10 / 127) ** (1 + 0.5 ** 0.3) + 0.5 + zig(10) * 2.5, "w0");
  near(v("blocks.1.att.a0", 10), -0.19 + zig(10) * 0.3 + (10 / 127 - 0.5) * 0.4, "a0");
  near(v("blocks.1.att.v0", 10), 0.73 - (10 / 127 - 0.5) * 0.4, "v0");
  near(v("blocks.1.att.k_k", 10), 0.71 - (10 / 127 - 0.5) * 0.1, "k_k");
  near(v("blocks.1.att.k_a", 10), 1.02, "k_a");
  near(v("blocks.1.att.r_k", 10), -0.04, "r_k");
  near(v("blocks.1.att.ln_x.weight", 3), (2 / 3) ** 0.7, "ln_x");
  for (const zero of ["blocks.0.att.output.weight", "blocks.0.ffn.value.weight", "blocks.0.att.w1", "blocks.2.att.g1", "blocks.0.ln1.bias"]) {
    assert.ok(p.get(zero).data.every((x) => x === 0), `${zero} is zero`);
  }
  assert.ok(p.get("emb.weight").data.every((x) => Math.abs(x) <= 1e-4));
  // Orthogonal with the gains of generate_init_weight / ortho_init.
  const gram = (name: string, gain: number) => {
    const t = p.get(name), [R, C] = t.shape, a = t.data, cols = R >= C;
    const n = cols ? C : R, m = cols ? R : C;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < m; k++) s += cols ? a[k * C + i] * a[k * C + j] : a[i * C + k] * a[j * C + k];
      near(s, i === j ? gain * gain : 0, `${name} gram[${i}][${j}]`);
    }
  };
  gram("head.weight", 0.5 * Math.sqrt(512 / 128));
  gram("blocks.0.att.key.weight", 0.1);
  gram("blocks.0.att.receptance.weight", 1);
  gram("blocks.1.att.w2", 0.1);
  gram("blocks.0.ffn.key.weight", 1);
  // Seeded: same seed, same weights; another seed, other weights.
  const again = initModel(spec, new TrainRng(5), "f64"), other = initModel(spec, new TrainRng(6), "f64");
  assert.deepEqual([...again.get("head.weight").data], [...p.get("head.weight").data]);
  assert.notDeepEqual([...other.get("head.weight").data], [...p.get("head.weight").data]);
});

test("every version initialises to a model the training forward accepts and that learns", () => {
  for (const version of ["4", "5.2", "6", "7"] as const) {
    const params = initModel({ version, nLayer: 2, nEmbd: 32, vocabSize: 16, headSize: 16 }, new TrainRng(3), "f32");
    const model = new TrainModel(params);
    assert.equal(model.config.version, version);
    assert.equal(model.config.nLayer, 2);
    // A fresh model predicts nearly uniformly (zero-initialised block outputs, head gain 0.5: logit
    // std ≈ 0.5): loss ≈ ln(V), give or take the spread of 4 distinct inputs.
    const B = 2, T = 12;
    const inputs = Int32Array.from({ length: B * T }, (_, i) => i % 4), targets = Int32Array.from({ length: B * T }, (_, i) => (i + 1) % 4);
    const g = new Graph("f32", referenceTrainKernels, false);
    const first = g.crossEntropy(model.forward(g, inputs, B, T), targets, false);
    assert.ok(Math.abs(first - Math.log(16)) < 0.75, `v${version}: initial loss ${first}`);
    const opt = new AdamW(params, version, { beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.001 }, model.unusedParams());
    let last = first;
    for (let s = 0; s < 15; s++) last = trainStep(model, opt, inputs, targets, B, T, { lr: 1e-2, gradClip: 1, l2wrap: true }).loss;
    assert.ok(last < first * 0.5, `v${version}: loss ${first} -> ${last}`);
  }
});
