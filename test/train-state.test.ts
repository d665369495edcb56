import "./relaxed-simd.js"; // first: in-process runs must round as the bin.js child does
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import { buildModel } from "../src/core/model/model.js";
import { rwkv7 } from "../src/core/model/v7/infer.js";
import { Graph } from "../src/core/train/graph.js";
import { referenceTrainKernels } from "../src/core/backend/train-kernels.js";
import { TrainModel } from "../src/core/train/model.js";
import { storeCheckpoint } from "../src/core/train/params.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { loadCheckpointFile } from "../src/node/train/checkpoint.js";
import { TrainingRun } from "../src/node/train/run.js";
import { runCaptured as cli } from "./run-cli.js";
import { compare, sharedPath } from "./shared.js";
import { loadParams, nextTokenTargets, runBin, seeded } from "./train-helpers.js";

/*
 * State tuning (RWKV-7): the training scan from a trained initial state, its gradient (against
 * central differences in f64), the same logits as the inference engine's time_state, and
 * rwkv train --state-tune end to end on the bundled model.
 */

const ROOT = join(import.meta.dirname, "..", "..");
const BASE = join(ROOT, "models", "rwkv7-shakespeare.safetensors");
const TOKENS = [3, 17, 200, 42, 5, 511, 0, 99, 7, 250];

function withState(t: import("node:test").TestContext) {
  const dir = sharedPath(t, "golden", "v7");
  if (!dir) return null;
  const params = loadParams(join(dir, "model.pth"), "f64");
  const rnd = seeded(11);
  const [H, N] = params.get("blocks.0.att.r_k").shape;
  for (let i = 0; i < 3; i++) params.add(`blocks.${i}.att.time_state`, [H, N, N], Array.from({ length: H * N * N }, () => rnd(-0.5, 0.5)));
  return params;
}

test("state tuning: the time_state gradient matches central differences (f64)", (t) => {
  const params = withState(t);
  if (!params) return;
  const model = new TrainModel(params, { trainable: new Set(["blocks.0.att.time_state", "blocks.1.att.time_state", "blocks.2.att.time_state"]) });
  const tokens = Int32Array.from(TOKENS), targets = nextTokenTargets(TOKENS);
  const loss = (): number => new Graph("f64", referenceTrainKernels, false).crossEntropy(model.forward(new Graph("f64", referenceTrainKernels, false), tokens, 1, TOKENS.length), targets, false);
  params.zeroGrad();
  const g = new Graph("f64", referenceTrainKernels, true);
  g.crossEntropy(model.forward(g, tokens, 1, TOKENS.length), targets, false);
  g.backward();
  assert.ok(params.get("blocks.0.att.key.weight").grad!.every((x) => x === 0), "the frozen base got a gradient");
  const EPS = 1e-5;
  let checked = 0;
  for (const layer of [0, 2]) {
    const p = params.get(`blocks.${layer}.att.time_state`);
    for (const idx of [0, 77, 64 * 64 + 5, p.data.length - 1]) {
      const x = p.data[idx];
      p.data[idx] = x + EPS; const up = loss();
      p.data[idx] = x - EPS; const down = loss();
      p.data[idx] = x;
      const fd = (up - down) / (2 * EPS);
      assert.ok(Math.abs(fd - p.grad![idx]) <= 1e-7 + 1e-5 * Math.abs(fd), `layer ${layer} [${idx}]: analytic ${p.grad![idx]} vs numeric ${fd}`);
      if (Math.abs(fd) > 1e-6) checked++;
    }
  }
  assert.ok(checked >= 4, `only ${checked} entries had a measurable gradient`);
});

test("state tuning: the training forward from time_state gives the inference engine's logits", async (t) => {
  const params = withState(t);
  if (!params) return;
  const model = new TrainModel(params);
  const g = new Graph("f64", referenceTrainKernels, false);
  const train = model.forward(g, Int32Array.from(TOKENS), 1, TOKENS.length).data;
  const inf = buildModel(storeCheckpoint(params), rwkv7, "7", referenceBackend);
  const logits = await inf.forward(TOKENS, inf.initState(), { allLogits: true });
  const c = compare(logits, train, 1e-4, 1e-4);
  assert.ok(c.ok, `train vs inference from the same time_state: ${c.maxAbs}`);
  // The state matters (else the comparison above would say nothing).
  const checkpoint = storeCheckpoint(params);
  const noState = new Map([...checkpoint.tensors].filter(([k]) => !k.endsWith("time_state")));
  const plain = buildModel({ ...checkpoint, tensors: noState }, rwkv7, "7", referenceBackend);
  assert.ok(compare(await plain.forward(TOKENS, plain.initState(), { allLogits: true }), train, 1e-3, 0).maxAbs > 1e-2);
});

test("rwkv train --state-tune: validation loss below the base's, state.pth loads back (adapter or --state-in), kill and resume bit-identical", async (t) => {
  const src = sharedPath(t, "data", "tinyshakespeare", "input.txt");
  if (!src) return;
  const dir = mkdtempSync(join(tmpdir(), "rwkv-state-"));
  try {
    const data = join(dir, "data.txt");
    writeFileSync(data, readFileSync(src, "utf8").slice(0, 30_000));
    const run = (out: string, lr: string, steps: string) => ["train", "--data", data, "--out", join(dir, out), "--model", BASE, "--state-tune",
      "--batch", "4", "--ctx", "32", "--warmup", "0", "--threads", "1", "--steps", steps, "--val-every", steps, "--save-every", "10", "--lr", lr, "--lr-final", lr];
    const tunedRun = await TrainingRun.create(join(dir, "tuned"), {
      data: [data], init: { model: BASE }, stateTune: true, batch: 4, ctx: 32, warmup: 0, steps: 20, valEvery: 20, saveEvery: 10, lr: 1e-2, lrFinal: 1e-2,
    }, { threads: 1 });
    const base = tunedRun.validationLoss(); // a zero state: the base model
    await tunedRun.run();
    const tuned = tunedRun.history.val[0][1];
    assert.ok(tuned < base, `validation loss ${tuned} is not below the base model's ${base}`);

    const file = join(dir, "tuned", "state.pth");
    const { checkpoint, close } = loadCheckpoint(file);
    const names = [...checkpoint.tensors.keys()];
    close();
    assert.deepEqual(names, [0, 1, 2, 3].map((i) => `blocks.${i}.att.time_state`));
    // The run's checkpoint holds only what it trains (the base is reloaded from --model on resume).
    const trained = loadCheckpointFile(join(dir, "tuned", "checkpoint.rwkvtrain")).params;
    assert.deepEqual(trained.list.map((p) => p.name), names);
    const baseCk = loadCheckpoint(BASE);
    const direct = buildModel({ ...baseCk.checkpoint, tensors: new Map([...baseCk.checkpoint.tensors, ...storeCheckpoint(trained).tensors]) }, rwkv7, "7", referenceBackend);
    baseCk.close();
    const tokens = Array.from(new TextEncoder().encode("KING RICHARD:"));
    const want = await direct.forward(tokens, direct.initState(), { allLogits: true });
    const viaAdapter = await loadModel(BASE, { backend: "reference", adapters: [{ path: file }] });
    assert.deepEqual(await viaAdapter.forward(tokens, viaAdapter.initState(), { allLogits: true }), want);
    const viaStateIn = await loadModel(BASE, { backend: "reference" });
    viaStateIn.useTimeState(loadCheckpoint(file).checkpoint);
    assert.deepEqual(await viaStateIn.forward(tokens, viaStateIn.initState(), { allLogits: true }), want);

    // The same run as `tuned` through the CLI in a child, kill -9 after its step-10 checkpoint, then --resume (in this process).
    const killed = await runBin(run("killed", "1e-2", "20"), "checkpoint step 10 ");
    assert.equal(killed.signal, "SIGKILL", killed.err);
    assert.ok(!existsSync(join(dir, "killed", "state.pth")));
    const resumed = await cli(["train", "--out", join(dir, "killed"), "--resume"]);
    assert.equal(resumed.code, 0, resumed.err);
    assert.match(resumed.err, /resuming .* at step 10\/20/);
    assert.ok(readFileSync(file).equals(readFileSync(join(dir, "killed", "state.pth"))), "state differs after kill and resume");

    const v6 = sharedPath(t, "golden", "v6", "model.safetensors");
    if (v6) {
      const r = await cli(["train", "--data", data, "--out", join(dir, "v6"), "--model", v6, "--state-tune"]);
      assert.equal(r.code, 1);
      assert.match(r.err, /--state-tune trains RWKV-7 models only/);
    }
    const both = await cli(["train", "--data", data, "--out", join(dir, "x"), "--model", BASE, "--state-tune", "--lora", "4"]);
    assert.match(both.err, /--state-tune and --lora are separate runs/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
