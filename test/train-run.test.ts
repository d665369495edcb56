import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import { RwkvInputError } from "../src/core/errors.js";
import { buildModel } from "../src/core/model/model.js";
import { rwkv7 } from "../src/core/model/v7/infer.js";
import { storeCheckpoint } from "../src/core/train/params.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { loadCheckpointFile } from "../src/node/train/checkpoint.js";
import type { NewTrainRun } from "../src/node/train/run-options.js";
import { TrainingDivergedError, type TrainingEvent, TrainingRun } from "../src/node/train/run.js";
import { bitsEqual, readJson, sharedPath } from "./shared.js";
import { relErr, shakespeareFile } from "./train-helpers.js";

/*
 * TrainingRun in this process (what `rwkv train` runs; the CLI's own tests keep what needs a real
 * process): its events, stop() and maxSeconds, an interrupted run resumed bit-identically, the
 * exports loading back with the trained weights' logits, fine-tuning any loadable format, and bad
 * input refused by name.
 */

const ONE_THREAD = { kernels: "wasm", threads: 1 } as const;

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "rwkv-run-"));
}

/** ~12 KB of text: Shakespeare from ../shared when present, else generated. */
function textFile(t: TestContext, dir: string): string {
  const p = shakespeareFile(t, dir, 12_000);
  if (p) return p;
  writeFileSync(join(dir, "data.txt"), "To be, or not to be, that is the question.\n".repeat(300));
  return join(dir, "data.txt");
}

/** A small v7 run: 1 layer x 32, windows of 16 bytes. */
function small(data: string, more: Partial<NewTrainRun> = {}): NewTrainRun {
  return { data: [data], init: { scratch: { version: "7", nLayer: 1, nEmbd: 32, headSize: 16, vocabSize: 0 } }, ctx: 16, batch: 2, lr: 2e-3, warmup: 3, ...more };
}

function label(e: TrainingEvent): string {
  return e.type === "step" || e.type === "validation" || e.type === "checkpoint" ? `${e.type} ${e.step}` : e.type;
}

test("events: every step, validations and checkpoints when due and at the last step, then export and done", async (t) => {
  const dir = tmp();
  const out = join(dir, "run");
  const run = await TrainingRun.create(out, small(textFile(t, dir), { steps: 7, valEvery: 3, saveEvery: 2 }), ONE_THREAD);
  const events: TrainingEvent[] = [];
  const done = await run.run({ onEvent: (e) => events.push(e) });
  assert.deepEqual(events.map(label), [
    "step 1", "step 2", "checkpoint 2", "step 3", "validation 3", "step 4", "checkpoint 4", "step 5", "step 6", "validation 6", "checkpoint 6",
    "step 7", "validation 7", "checkpoint 7", "export", "done",
  ]);
  assert.deepEqual(done, events[events.length - 1]);
  assert.equal(done.reason, "steps");
  assert.deepEqual([done.step, done.tokensSeen], [7, 7 * 2 * 16]);
  assert.deepEqual(done.exported.files, [join(out, "model.pth"), join(out, "model.safetensors")]);
  // Events carry what the checkpoint records.
  const saved = loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).header;
  const steps = events.filter((e) => e.type === "step");
  assert.deepEqual(steps.map((e) => [e.step, e.loss]), saved.history.train);
  assert.deepEqual(events.filter((e) => e.type === "validation").map((e) => [e.step, e.loss, e.seconds]), saved.history.val);
  assert.ok(steps.every((e) => e.steps === 7 && e.lr > 0 && Number.isFinite(e.gradNorm)));
  assert.ok(steps[0].lr < steps[2].lr, "warmup raises the learning rate");
  const csv = readFileSync(join(out, "loss.csv"), "utf8").trim().split("\n");
  assert.equal(csv.length, 8);
  assert.equal(csv[3].split(",")[2], String(saved.history.val[0][1]), "step 3's validation loss in loss.csv");
});

test("stop() from a listener ends the run after that step (checkpoint and export); resumed, it ends bit-identical to an uninterrupted run", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  const spec = small(data, { steps: 9, valEvery: 3, saveEvery: 4 });
  const straight = await TrainingRun.create(join(dir, "straight"), spec, ONE_THREAD);
  await straight.run();

  const first = await TrainingRun.create(join(dir, "stopped"), spec, ONE_THREAD);
  const seen: string[] = [];
  const done = await first.run({ onEvent: (e) => { seen.push(label(e)); if (e.type === "validation" && e.step === 3) first.stop(); } });
  assert.deepEqual([done.reason, done.step], ["stopped", 3]);
  assert.deepEqual(seen, ["step 1", "step 2", "step 3", "validation 3", "checkpoint 3", "export", "done"]);
  assert.ok(existsSync(join(dir, "stopped", "model.safetensors")), "a stopped run exports what it has");

  const resumed = await TrainingRun.resume(join(dir, "stopped"), ONE_THREAD);
  assert.deepEqual(resumed.resumedFrom, { step: 3, kernels: resumed.kernels.build });
  assert.equal(resumed.data.cached, true, "the token cache is reused");
  await resumed.run();
  const a = readFileSync(join(dir, "straight", "model.safetensors")), b = readFileSync(join(dir, "stopped", "model.safetensors"));
  assert.ok(a.equals(b), "final weights differ after stop and resume");
  const ca = loadCheckpointFile(join(dir, "straight", "checkpoint.rwkvtrain")), cb = loadCheckpointFile(join(dir, "stopped", "checkpoint.rwkvtrain"));
  assert.deepEqual(cb.header.history.train, ca.header.history.train);
  assert.deepEqual(cb.header.history.val.map(([s, l]) => [s, l]), ca.header.history.val.map(([s, l]) => [s, l]));
  for (const p of ca.params.list) assert.ok(bitsEqual(cb.optimizer.m.get(p.name) as Float32Array, ca.optimizer.m.get(p.name) as Float32Array), p.name);

  // maxSeconds: the first step already takes longer than a nanosecond.
  const timed = await TrainingRun.create(join(dir, "timed"), spec, ONE_THREAD);
  const byTime = await timed.run({ maxSeconds: 1e-9 });
  assert.deepEqual([byTime.reason, byTime.step], ["time", 1]);
  assert.equal(loadCheckpointFile(join(dir, "timed", "checkpoint.rwkvtrain")).header.step, 1);
});

test("validationLoss at the start is the untrained model's; training lowers it", async (t) => {
  const dir = tmp();
  const run = await TrainingRun.create(join(dir, "v"), small(textFile(t, dir), { steps: 20, valEvery: 20, lr: 1e-2 }), ONE_THREAD);
  const before = run.validationLoss();
  // A fresh byte model predicts about uniformly over 256 ids.
  assert.ok(Math.abs(before - Math.log(256)) < 0.3, `initial validation loss ${before}, ln 256 = ${Math.log(256)}`);
  assert.equal(run.history.val.length, 0, "validationLoss records nothing");
  await run.run();
  const after = run.history.val[0][1];
  assert.ok(after < before - 0.5, `validation loss ${after} after 20 steps, ${before} before`);
});

test("exported .pth and .safetensors load back through loadModel with the trained weights' logits", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  for (const exportDtype of ["f32", "bf16"] as const) {
    const out = join(dir, exportDtype);
    const spec = small(data, { init: { scratch: { version: "7", nLayer: 2, nEmbd: 64, headSize: 32, vocabSize: 0 } }, steps: 4, valEvery: 2, exportDtype });
    await (await TrainingRun.create(out, spec, ONE_THREAD)).run();
    const trained = loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).params;
    const direct = buildModel(storeCheckpoint(trained), rwkv7, "7", referenceBackend, { matrices: "f32" });
    const tokens = Array.from(new TextEncoder().encode("First Citizen:\nBefore we proceed"));
    const want = await direct.forward(tokens, direct.initState(), { allLogits: true });
    for (const file of ["model.pth", "model.safetensors"]) {
      const m = await loadModel(join(out, file), { backend: "reference", matrices: "f32" });
      const got = await m.forward(tokens, m.initState(), { allLogits: true });
      if (exportDtype === "f32") assert.ok(bitsEqual(got, want), `${exportDtype} ${file}: logits differ`);
      else assert.ok(relErr(got, want).rel < 0.05, `${exportDtype} ${file}: ${relErr(got, want).rel}`);
    }
    // Names, shapes and order as RWKV-LM's state dict (the same list a golden v7 checkpoint has, per layer).
    const { checkpoint, close } = loadCheckpoint(join(out, "model.pth"));
    const names = [...checkpoint.tensors.keys()];
    close();
    assert.deepEqual(names, trained.list.map((p) => p.name));
    const gold = sharedPath(t, "golden", "v7", "golden.json");
    if (gold) {
      const goldNames = readJson<{ checkpoint: { tensors: Array<{ name: string; shape: number[] }> } }>(gold).checkpoint.tensors
        .map((x) => x.name).filter((n) => !/^blocks\.[2-9]\./.test(n));
      assert.deepEqual(names, goldNames, "tensor order differs from RWKV-LM's");
    }
  }
});

test("fine-tune from a checkpoint in any loadable format; resume raises the step count", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  for (const [v, file] of [["v7", "model.pth"], ["v4", "model_bf16.safetensors"], ["v6", "model.safetensors"]]) {
    const model = sharedPath(t, "golden", v, file);
    if (!model) return;
    const out = join(dir, `ft-${v}`);
    // Vocabulary 512 is no known tokenizer's size: bytes (ids < 256) fit in it.
    const run = await TrainingRun.create(out, { data: [data], init: { model }, tokenizerKind: "bytes", ctx: 16, batch: 2, valEvery: 0, steps: 2 }, ONE_THREAD);
    assert.equal(run.config.vocabSize, 512);
    await run.run();
    assert.equal(loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).header.step, 2);
    const more = await TrainingRun.resume(out, { ...ONE_THREAD, steps: 3 });
    assert.equal((await more.run()).step, 3);
    assert.equal(loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).header.step, 3);
    // The export keeps the original file's tensor names, loadable by the inference engine.
    const { checkpoint, close } = loadCheckpoint(model);
    const names = [...checkpoint.tensors.keys()];
    close();
    const m = await loadModel(join(out, "model.pth"), { backend: "reference" });
    assert.equal(m.config.vocabSize, 512);
    const exported = loadCheckpoint(join(out, "model.pth"));
    assert.deepEqual([...exported.checkpoint.tensors.keys()], names);
    exported.close();
  }
});

test("bad input: options, empty or tiny data, an existing run, a missing or corrupted checkpoint, a refused resume, a diverging run", async (t) => {
  const dir = tmp();
  const empty = join(dir, "empty.txt"), tiny = join(dir, "tiny.txt");
  writeFileSync(empty, "");
  writeFileSync(tiny, "hello");
  const refused = async (p: Promise<unknown>, re: RegExp) => {
    await assert.rejects(p, (e: unknown) => e instanceof RwkvInputError && re.test(e.message));
  };
  await refused(TrainingRun.create(join(dir, "c"), small(tiny, { ctx: 0 })), /^training option ctx: must be an integer in \[1, \d+\], got 0$/);
  await refused(TrainingRun.create(join(dir, "l"), small(tiny, { lr: -1 })), /^training option lr: must be a number/);
  await refused(TrainingRun.create(join(dir, "d"), small(tiny, { decay: "step" as "cosine" })), /training option decay: must be cosine or linear, got step/);
  await refused(TrainingRun.create(join(dir, "s"), small(tiny, { stateTune: true })), /need an existing model/);
  await refused(TrainingRun.create(join(dir, "e"), small(empty, { steps: 2 })), /empty/);
  await refused(TrainingRun.create(join(dir, "t"), small(tiny, { steps: 2 })), /too small/);
  await refused(TrainingRun.create(join(dir, "m"), small(join(dir, "missing.txt"))), /missing\.txt: no such file or directory/);

  const data = textFile(t, dir), out = join(dir, "run");
  await (await TrainingRun.create(out, small(data, { steps: 3, saveEvery: 1, valEvery: 0 }), ONE_THREAD)).run();
  await refused(TrainingRun.create(out, small(data, { steps: 3 })), /a training checkpoint already exists here/);
  // accept() sees the saved run and can refuse it before any data is read.
  let saw = "";
  await assert.rejects(TrainingRun.resume(out, { accept: (saved, config) => { saw = `${config.version} ${saved.steps}`; throw new RwkvInputError("x", "refused"); } }), /x: refused/);
  assert.equal(saw, "7 3");

  const ckpt = join(out, "checkpoint.rwkvtrain");
  const bytes = readFileSync(ckpt);
  bytes[Math.floor(bytes.length / 2)] ^= 0x40;
  writeFileSync(ckpt, bytes);
  await refused(TrainingRun.resume(out, { steps: 5 }), /corrupted training checkpoint/);
  writeFileSync(ckpt, bytes.subarray(0, 100));
  await refused(TrainingRun.resume(out), /corrupted|truncated/);
  await refused(TrainingRun.resume(join(dir, "nothing")), /no training checkpoint/);

  // Divergence: an absurd learning rate turns the loss into NaN; the last good checkpoint stays.
  const div = join(dir, "div");
  const run = await TrainingRun.create(div, small(data, { steps: 40, saveEvery: 1, valEvery: 0, lr: 1e9, warmup: 0, gradClip: 0 }), ONE_THREAD);
  const events: TrainingEvent[] = [];
  let error: unknown;
  try { await run.run({ onEvent: (e) => events.push(e) }); } catch (e) { error = e; }
  assert.ok(error instanceof TrainingDivergedError, String(error));
  assert.match(error.message, /^training: diverged at step (\d+): loss NaN/);
  const failed = events[events.length - 1];
  assert.deepEqual(failed, error.event);
  assert.equal(failed.type, "diverged");
  const last = loadCheckpointFile(join(div, "checkpoint.rwkvtrain")).header;
  assert.equal(last.step, error.event.step - 1, "the checkpoint before the failing step stays");
  assert.equal(error.event.checkpoint, last.step > 0 ? join(div, "checkpoint.rwkvtrain") : null);
  assert.ok(last.history.train.every(([, l]) => Number.isFinite(l)));
  assert.ok(!existsSync(join(div, "model.safetensors")), "a diverged run exports nothing");
});
