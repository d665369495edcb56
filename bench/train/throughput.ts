import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Graph } from "../../src/core/train/graph.js";
import { initModel } from "../../src/core/train/init.js";
import { TrainModel, type TrainVersion } from "../../src/core/train/model.js";
import { AdamW } from "../../src/core/train/optim.js";
import { TrainRng } from "../../src/core/train/rng.js";
import { trainFlopsPerToken, trainStep } from "../../src/core/train/trainer.js";
import { type TrainKernelKind, trainKernels } from "../../src/node/threads/pool.js";

/*
 * Training throughput: optimizer steps on (B, T) windows of tiny Shakespeare (bytes) for a model
 * shaped like nanoGPT's CPU setting (4 layers x 128, context 64, batch 12), with the wasm kernels
 * (default; --threads N, 1 by default here) or --kernels reference. Prints tokens/s, model GFLOP/s,
 * the split of a step between forward, backward and optimizer, and the same rates per CPU-second
 * of the whole process (all threads), which a busy machine distorts less than wall-clock time.
 *
 *   node [--experimental-wasm-relaxed-simd] dist/bench/train/throughput.js [--kernels wasm|reference] [--threads 1]
 *     [--version 7] [--layers 4] [--embd 128] [--head-size 64] [--ctx 64] [--batch 12] [--steps 10] [--warmup 2]
 */

const { values } = parseArgs({
  options: {
    version: { type: "string", default: "7" }, layers: { type: "string", default: "4" }, embd: { type: "string", default: "128" },
    "head-size": { type: "string", default: "64" }, ctx: { type: "string", default: "64" }, batch: { type: "string", default: "12" },
    steps: { type: "string", default: "10" }, warmup: { type: "string", default: "2" },
    kernels: { type: "string", default: "wasm" }, threads: { type: "string", default: "1" },
    data: { type: "string", default: join(import.meta.dirname, "..", "..", "..", "..", "shared", "data", "tinyshakespeare", "input.txt") },
  },
});

const B = Number(values.batch), T = Number(values.ctx), steps = Number(values.steps), warmup = Number(values.warmup);
const rng = new TrainRng(1);
const params = initModel({ version: values.version as TrainVersion, nLayer: Number(values.layers), nEmbd: Number(values.embd), vocabSize: 256, headSize: Number(values["head-size"]) }, rng);
const model = new TrainModel(params, { kernels: trainKernels(values.kernels as TrainKernelKind, Number(values.threads)) });
const opt = new AdamW(params, model.config.version, undefined, model.unusedParams(), undefined, model.kernels);
const text = readFileSync(values.data);

function batch(): { inputs: Int32Array; targets: Int32Array } {
  const inputs = new Int32Array(B * T), targets = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    const s = rng.int(text.length - T - 1);
    for (let t = 0; t < T; t++) { inputs[b * T + t] = text[s + t]; targets[b * T + t] = text[s + t + 1]; }
  }
  return { inputs, targets };
}

const flops = trainFlopsPerToken(model);
console.log(`RWKV-${model.config.version} ${model.config.nLayer} x ${model.config.nEmbd}, ${params.count().toLocaleString("en-US")} parameters, batch ${B} x ${T}, ` +
  `${(flops / 1e6).toFixed(2)} MFLOP per trained token, kernels: ${model.kernels.name}`);
for (let i = 0; i < warmup; i++) { const { inputs, targets } = batch(); trainStep(model, opt, inputs, targets, B, T, { lr: 6e-4, gradClip: 1, l2wrap: true }); }

let fwd = 0, bwd = 0, total = 0, loss = NaN;
const cpu0 = process.cpuUsage();
for (let i = 0; i < steps; i++) {
  const { inputs, targets } = batch();
  const t0 = performance.now();
  // The phases of trainStep, timed separately.
  params.zeroGrad();
  const mark = model.kernels.mark();
  const g = new Graph(model.dtype, model.kernels, true);
  loss = g.crossEntropy(model.forward(g, inputs, B, T), targets, true);
  const t1 = performance.now();
  g.backward();
  model.kernels.release(mark);
  const t2 = performance.now();
  opt.step(6e-4);
  const t3 = performance.now();
  fwd += t1 - t0; bwd += t2 - t1; total += t3 - t0;
}
const cpu = process.cpuUsage(cpu0);
const tps = (steps * B * T) / (total / 1000);
// On a busy machine wall-clock time includes waiting for a core; CPU time does not.
const cpuTps = (steps * B * T) / ((cpu.user + cpu.system) / 1e6);
console.log(`${tps.toFixed(0)} tokens/s, ${((tps * flops) / 1e9).toFixed(2)} GFLOP/s; per step ${(total / steps).toFixed(0)} ms = ` +
  `forward ${(fwd / steps).toFixed(0)} + backward ${(bwd / steps).toFixed(0)} + AdamW ${((total - fwd - bwd) / steps).toFixed(0)} ms; last loss ${loss.toFixed(3)}`);
console.log(`per CPU-second (all threads; robust to a busy machine): ${cpuTps.toFixed(0)} tokens/s, ${((cpuTps * flops) / 1e9).toFixed(2)} GFLOP/s`);
