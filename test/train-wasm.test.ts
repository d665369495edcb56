import assert from "node:assert/strict";
import { test } from "node:test";
import { Graph } from "../src/core/train/graph.js";
import { initModel } from "../src/core/train/init.js";
import { type Buf, referenceTrainKernels, type TrainKernels } from "../src/core/backend/train-kernels.js";
import { TrainModel, type TrainVersion } from "../src/core/train/model.js";
import { AdamW } from "../src/core/train/optim.js";
import { TrainRng } from "../src/core/train/rng.js";
import { trainStep } from "../src/core/train/trainer.js";
import { WasmTrainKernels, wasmTrainAvailable } from "../src/core/backend/wasm-train.js";
import { trainKernels } from "../src/node/threads/pool.js";
import { seeded } from "./train-helpers.js";

/*
 * The WebAssembly training kernels (assembly/train.ts) in whole training steps: a few steps of
 * every version against the reference kernels, 2 threads against 1 bit for bit, and no memory
 * growth from step to step. Each op alone (products, WKV scans, element-wise ops, AdamW) is
 * checked against the reference by the conformance suite (test/backend-conformance.test.ts,
 * test/train-op-checks.ts), with every other op of the kernel table.
 */

const skip = !wasmTrainAvailable();

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

