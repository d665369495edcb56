import "./relaxed-simd.js"; // first: in-process runs must round as the bin.js child does
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { buildModel } from "../src/core/model/model.js";
import { rwkv7 } from "../src/core/model/v7/infer.js";
import type { TensorEntry } from "../src/core/tensor.js";
import { Graph } from "../src/core/train/graph.js";
import { referenceTrainKernels, type TrainKernels } from "../src/core/backend/train-kernels.js";
import { addLoraParams, DEFAULT_LORA_TARGETS, loraParamNames } from "../src/core/train/lora.js";
import { TrainModel } from "../src/core/train/model.js";
import { AdamW } from "../src/core/train/optim.js";
import { type FrozenMatrices, ParamStore } from "../src/core/train/params.js";
import { TrainRng } from "../src/core/train/rng.js";
import { WasmTrainKernels } from "../src/core/backend/wasm-train.js";
import { type ConvertDType, convertModel, type OutputFormat } from "../src/node/commands/convert.js";
import { loadAdapterUnmerged } from "../src/node/adapters.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { TrainingRun } from "../src/node/train/run.js";
import { runCaptured as cli } from "./run-cli.js";
import { compare } from "./shared.js";
import { runBin, shakespeareFile } from "./train-helpers.js";

/*
 * QLoRA: `rwkv train --lora` on a compact base (rwkv.cpp q8_0/q5_1, GGUF q8_0/q4_0 whose head is
 * quantized too, f16/bf16 safetensors, --int8) keeps the frozen matrices in their stored type. Checked against an
 * f32 file holding the very values the compact one decodes to: the LoRA gradients agree (bit for
 * bit: both run the same f32 products on the same values), the trainer's buffers stay far below
 * the f32 base's size, training lowers the validation loss, the adapter loads back onto the
 * compact and the f32 base with the trained logits, and a killed run resumes bit-identically.
 */

const ROOT = join(import.meta.dirname, "..", "..");
const BASE = join(ROOT, "models", "rwkv7-shakespeare.safetensors");
const RANK = 4, ALPHA = 32;

/** Compact copies of the bundled model and f32 files of what each decodes to, made once per test file. */
interface Copies {
  dir: string; q8bin: string; q8gguf: string; f16: string; bf16: string; q5bin: string; q4gguf: string;
  q8binF32: string; q8ggufF32: string; f16F32: string; bf16F32: string; q5binF32: string; q4ggufF32: string;
}
let copies: Promise<Copies> | null = null;

function makeCopies(): Promise<Copies> {
  copies ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), "rwkv-qlora-"));
    const conv = async (input: string, name: string, format: OutputFormat, dtype: ConvertDType) => {
      const out = join(dir, name);
      await convertModel(input, out, { format, dtype });
      return out;
    };
    const q8bin = await conv(BASE, "q8.bin", "rwkv.cpp", "q8_0");
    const q8gguf = await conv(BASE, "q8.gguf", "gguf", "q8_0");
    const f16 = await conv(BASE, "f16.safetensors", "safetensors", "f16");
    const bf16 = await conv(BASE, "bf16.safetensors", "safetensors", "bf16");
    const q5bin = await conv(BASE, "q5_1.bin", "rwkv.cpp", "q5_1"), q4gguf = await conv(BASE, "q4_0.gguf", "gguf", "q4_0");
    return {
      dir, q8bin, q8gguf, f16, bf16, q5bin, q4gguf,
      q5binF32: await conv(q5bin, "q5bin-f32.safetensors", "safetensors", "f32"),
      q4ggufF32: await conv(q4gguf, "q4gguf-f32.safetensors", "safetensors", "f32"),
      bf16F32: await conv(bf16, "bf16-f32.safetensors", "safetensors", "f32"),
      q8binF32: await conv(q8bin, "q8bin-f32.safetensors", "safetensors", "f32"),
      q8ggufF32: await conv(q8gguf, "q8gguf-f32.safetensors", "safetensors", "f32"),
      f16F32: await conv(f16, "f16-f32.safetensors", "safetensors", "f32"),
    };
  })();
  return copies;
}

test.after(async () => {
  if (copies) rmSync((await copies).dir, { recursive: true, force: true });
});

/** A LoRA-tuning store of `path` whose base is held as `frozen`, its A and B set from `values` (B nonzero, so A has a gradient). */
function loraStore(path: string, frozen: FrozenMatrices, values?: ParamStore): ParamStore {
  const { checkpoint, close } = loadCheckpoint(path);
  let store: ParamStore;
  try { store = ParamStore.fromCheckpoint(checkpoint, "f32", frozen); } finally { close(); }
  addLoraParams(store, { rank: RANK, alpha: ALPHA, targets: [...DEFAULT_LORA_TARGETS] }, new TrainRng(3));
  const rng = new TrainRng(4);
  for (const n of loraParamNames(store)) {
    const p = store.get(n);
    if (values) p.data.set(values.get(n).data);
    else if (n.endsWith(".lora_B")) for (let i = 0; i < p.data.length; i++) p.data[i] = (2 * rng.uniform() - 1) * 0.05;
  }
  return store;
}

/** Loss and the LoRA gradients of one batch. */
function loraGrads(store: ParamStore, kernels: TrainKernels, decodeLimit?: number): { loss: number; grads: Map<string, Float32Array>; scratch: number } {
  const trainable = new Set(loraParamNames(store));
  const model = new TrainModel(store, { kernels, trainable, loraScale: ALPHA / RANK, decodeLimit });
  const text = new TextEncoder().encode("ROMEO:\nBut, soft! what light through yonder window breaks?\nJULIET:\nAy me!");
  const B = 2, T = 32;
  const inputs = Int32Array.from(text.subarray(0, B * T)), targets = Int32Array.from(text.subarray(1, B * T + 1));
  model.params.zeroGrad();
  const mark = kernels.mark();
  let loss: number;
  try {
    const g = new Graph("f32", kernels, true);
    loss = g.crossEntropy(model.forward(g, inputs, B, T), targets, false);
    g.backward();
  } finally {
    kernels.release(mark);
  }
  return { loss, grads: new Map([...trainable].map((n) => [n, Float32Array.from(model.params.get(n).grad!)])), scratch: model.scratchBytes };
}

for (const kind of ["reference", "wasm"] as const) {
  test(`QLoRA ${kind}: LoRA gradients on q8_0 (rwkv.cpp, GGUF), q5_1, q4_0, f16 and bf16 bases equal those on f32 bases of the decoded values`, async () => {
    const c = await makeCopies();
    for (const [compact, dequantized, what] of [[c.q8bin, c.q8binF32, "rwkv.cpp q8_0"], [c.q8gguf, c.q8ggufF32, "GGUF q8_0"], [c.f16, c.f16F32, "f16"], [c.bf16, c.bf16F32, "bf16"],
      [c.q5bin, c.q5binF32, "rwkv.cpp q5_1"], [c.q4gguf, c.q4ggufF32, "GGUF q4_0"]] as const) {
      const kernels = kind === "wasm" ? new WasmTrainKernels() : referenceTrainKernels;
      try {
        const small = loraStore(compact, "compact");
        assert.ok(small.list.some((p) => p.compact), `${what}: no matrix stayed compact`);
        const full = loraStore(dequantized, "f32", small);
        assert.ok(!full.list.some((p) => p.compact));
        const a = loraGrads(small, kernels), b = loraGrads(full, kernels);
        assert.equal(a.loss, b.loss, `${what}: loss`);
        for (const [n, g] of b.grads) {
          assert.ok(g.some((x) => x !== 0), `${what}: ${n} has no gradient`);
          assert.deepEqual(a.grads.get(n), g, `${what}: ${n}'s gradient differs`);
        }
        // A scratch smaller than the matrices (40 rows of 128): decoded by chunks of rows (ragged last
        // ones too), which splits the backward's sums: equal to rounding.
        const chunked = loraGrads(loraStore(compact, "compact", small), kernels, 40 * 128);
        assert.equal(chunked.scratch, 4 * 40 * 128);
        assert.ok(Math.abs(chunked.loss - b.loss) <= 1e-6 * Math.abs(b.loss), `${what}: chunked loss ${chunked.loss} vs ${b.loss}`);
        for (const [n, g] of b.grads) {
          const d = compare(chunked.grads.get(n)!, g, 1e-5 * Math.max(...g.map(Math.abs)), 1e-5);
          assert.ok(d.ok, `${what}: ${n}'s gradient with a chunked decode: ${d.maxAbs}`);
        }
      } finally {
        if (kernels instanceof WasmTrainKernels) kernels.close();
      }
    }
  });
}

test("QLoRA memory: the trainer holds the compact base, gradients and moments of the LoRA only, one decode scratch; far below the f32 base", async () => {
  const c = await makeCopies();
  const kernels = new WasmTrainKernels();
  try {
    for (const [path, frozen, what] of [[c.q8gguf, "compact", "GGUF q8_0"], [c.f16, "compact", "f16"], [BASE, "int8", "int8 (from f32)"]] as const) {
      const store = loraStore(path, frozen);
      const names = loraParamNames(store), trainable = new Set(names);
      const model = new TrainModel(store, { kernels, trainable, loraScale: ALPHA / RANK });
      const opt = new AdamW(store, model.config.version, undefined, model.frozenParams(), undefined, kernels);
      const loraCount = names.reduce((s, n) => s + store.get(n).data.length, 0);
      const baseCount = store.count() - loraCount;
      const f32Base = 4 * baseCount;
      const held = store.bytes();
      assert.equal(held.grads, 4 * loraCount, `${what}: a gradient buffer beyond the LoRA's`);
      assert.equal(opt.momentBytes(), 2 * 4 * loraCount, `${what}: moments beyond the LoRA's`);
      // The largest compact matrix in f32: the bundled model's ffn.key (512 x 128), or the GGUF's q8_0 head (256 x 128).
      assert.equal(model.scratchBytes, 4 * 512 * 128, `${what}: decode scratch`);
      const total = held.values + held.compact + held.grads + opt.momentBytes() + model.scratchBytes;
      // Values are held only for the tensors that are not compact (no f32 copy of a compact matrix) …
      const plain = store.list.filter((p) => !p.compact).reduce((s, p) => s + p.data.length, 0);
      assert.equal(held.values, 4 * plain, `${what}: f32 values beyond the non-compact tensors`);
      for (const p of store.list) {
        if (p.compact) assert.equal(p.compact.data.buffer.byteLength, p.compact.data.byteLength, `${what}: ${p.name} keeps a larger buffer alive`);
      }
      const compactCount = store.list.filter((p) => p.compact).reduce((s, p) => s + p.compact!.rows * p.compact!.cols, 0);
      assert.ok(compactCount > 0.75 * baseCount, `${what}: only ${compactCount} of ${baseCount} base weights are compact`);
      // … so everything the trainer holds is below the f32 base alone (the f32 path also kept its gradient and moments: 16 bytes a weight).
      assert.ok(total < f32Base, `${what}: ${total} bytes held vs ${f32Base} for the f32 base`);
      const perWeight = held.compact / compactCount;
      const want = { "GGUF q8_0": 34 / 32, f16: 2, "int8 (from f32)": 1 }[what];
      assert.ok(Math.abs(perWeight - want) < 0.04, `${what}: ${perWeight} bytes a compact weight, expected ${want}`);
    }
  } finally {
    kernels.close();
  }
});

/** The base with W + (alpha/r)·B A for every trained pair, summed in f64 here (independently of the merge code). */
function mergedByHand(base: Checkpoint, lora: Checkpoint): Checkpoint {
  const tensors = new Map<string, TensorEntry>(base.tensors);
  for (const [name, A] of lora.tensors) {
    if (!name.endsWith(".lora_A")) continue;
    const prefix = name.slice(0, -".lora_A".length), W = base.tensors.get(prefix + ".weight")!;
    const [out, inp] = W.shape, a = A.toFloat32(), b = lora.tensors.get(prefix + ".lora_B")!.toFloat32(), w = W.toFloat32();
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inp; i++) {
        let s = 0;
        for (let k = 0; k < RANK; k++) s += b[o * RANK + k] * a[k * inp + i];
        w[o * inp + i] += (ALPHA / RANK) * s;
      }
    }
    tensors.set(W.name, { name: W.name, dtype: "f32", shape: W.shape, toFloat32: () => w.slice() });
  }
  return { ...base, tensors };
}

test("QLoRA training run on a q8_0 base: validation loss below the base's; the adapter loads back onto the q8_0 base (unmerged) and the f32 base with the trained logits", async (t) => {
  const c = await makeCopies();
  const dir = mkdtempSync(join(tmpdir(), "rwkv-qlora-run-"));
  try {
    const data = shakespeareFile(t, dir, 30_000);
    if (!data) return;
    const run = await TrainingRun.create(join(dir, "tuned"), {
      data: [data], init: { model: c.q8bin }, lora: { rank: RANK, alpha: ALPHA, targets: [...DEFAULT_LORA_TARGETS] },
      batch: 4, ctx: 32, warmup: 0, steps: 30, valEvery: 30, lr: 1e-3, lrFinal: 1e-3,
    }, { threads: 1 });
    const base = run.validationLoss();
    await run.run();
    const tuned = run.history.val[0][1];
    assert.ok(tuned < base - 1e-3, `validation loss ${tuned} is not below the q8_0 base's ${base}`);

    const adapter = join(dir, "tuned", "adapter.pth");
    const lora = loadCheckpoint(adapter), f32 = loadCheckpoint(c.q8binF32);
    try {
      const tokens = Array.from(new TextEncoder().encode("ROMEO:\nWhat light"));
      const ref = buildModel(mergedByHand(f32.checkpoint, lora.checkpoint), rwkv7, "7", referenceBackend);
      const want = await ref.forward(tokens, ref.initState(), { allLogits: true });
      // On the compact base with the reference kernels, which compute with the decoded weights as
      // training does (the wasm q8_0 kernels also round the activations to 8 bits: ~0.1 off in logits).
      const onCompact = await loadModel(c.q8bin, { backend: "reference" });
      loadAdapterUnmerged(onCompact, "tuned", { path: adapter, kind: "lora", alpha: ALPHA });
      const d = compare(await onCompact.forward(tokens, onCompact.initState("tuned"), { allLogits: true }), want, 1e-5, 1e-5);
      assert.ok(d.ok, `adapter unmerged on the q8_0 base vs the trained weights: ${d.maxAbs}`);
      const baseOnly = compare(await onCompact.forward(tokens, onCompact.initState(), { allLogits: true }), want, 1e-5, 1e-5);
      assert.ok(!baseOnly.ok && baseOnly.maxAbs > 1e-2, `the adapter changes the logits (${baseOnly.maxAbs})`);
      for (const backend of ["reference", "wasm"]) {
        const onF32 = await loadModel(c.q8binF32, { backend, adapters: [{ path: adapter, kind: "lora", alpha: ALPHA }] });
        const e = compare(await onF32.forward(tokens, onF32.initState(), { allLogits: true }), want, 1e-5, 1e-5);
        assert.ok(e.ok, `${backend}: adapter merged into the f32 base vs the trained weights: ${e.maxAbs}`);
      }
    } finally {
      lora.close();
      f32.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("QLoRA on f16 and --int8 bases, and state tuning on a q8_0 base, lower the validation loss; the f16 adapter loads back unmerged onto the f16 base", async (t) => {
  const c = await makeCopies();
  const dir = mkdtempSync(join(tmpdir(), "rwkv-qlora-f16-"));
  try {
    const data = shakespeareFile(t, dir, 30_000);
    if (!data) return;
    for (const [model, baseMatrices] of [[c.f16, undefined], [BASE, "int8"]] as const) {
      const run = await TrainingRun.create(join(dir, `tuned-${baseMatrices ?? "f16"}`), {
        data: [data], init: { model }, lora: { rank: RANK, alpha: ALPHA, targets: [...DEFAULT_LORA_TARGETS] }, ...(baseMatrices ? { baseMatrices } : {}),
        batch: 4, ctx: 32, warmup: 0, steps: 20, valEvery: 20, lr: 1e-3, lrFinal: 1e-3,
      }, { threads: 1 });
      const base = run.validationLoss();
      await run.run();
      const tuned = run.history.val[0][1];
      assert.ok(tuned < base - 1e-3, `${baseMatrices ?? "f16"}: validation loss ${tuned} is not below the base's ${base}`);
    }
    // The f16-trained adapter kept unmerged on the f16 base: the trained weights' logits (f16 is decoded exactly).
    const adapter = join(dir, "tuned-f16", "adapter.pth");
    const lora = loadCheckpoint(adapter), f32 = loadCheckpoint(c.f16F32);
    try {
      const tokens = Array.from(new TextEncoder().encode("JULIET:\nO Romeo"));
      const ref = buildModel(mergedByHand(f32.checkpoint, lora.checkpoint), rwkv7, "7", referenceBackend);
      const onF16 = await loadModel(c.f16, { backend: "reference" });
      loadAdapterUnmerged(onF16, "tuned", { path: adapter, kind: "lora", alpha: ALPHA });
      const d = compare(await onF16.forward(tokens, onF16.initState("tuned"), { allLogits: true }), await ref.forward(tokens, ref.initState(), { allLogits: true }), 1e-5, 1e-5);
      assert.ok(d.ok, `adapter unmerged on the f16 base vs the trained weights: ${d.maxAbs}`);
    } finally {
      lora.close();
      f32.close();
    }
    const state = await TrainingRun.create(join(dir, "state-q8"), {
      data: [data], init: { model: c.q8bin }, stateTune: true, batch: 4, ctx: 32, warmup: 0, steps: 20, valEvery: 20, lr: 1e-2, lrFinal: 1e-2,
    }, { threads: 1 });
    const before = state.validationLoss();
    await state.run();
    assert.ok(state.history.val[0][1] < before, `state tuning on q8_0: validation loss ${state.history.val[0][1]} is not below the base's ${before}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("rwkv train --lora on a q8_0 base: kill -9 after a checkpoint, --resume gives a bit-identical adapter; --int8 needs an adapter run", async (t) => {
  const c = await makeCopies();
  const dir = mkdtempSync(join(tmpdir(), "rwkv-qlora-kill-"));
  try {
    const data = shakespeareFile(t, dir, 30_000);
    if (!data) return;
    const args = (out: string) => ["train", "--data", data, "--out", join(dir, out), "--model", c.q8gguf, "--lora", String(RANK), "--batch", "4", "--ctx", "32",
      "--warmup", "0", "--threads", "1", "--steps", "12", "--save-every", "6", "--val-every", "0", "--lr", "1e-3"];
    const straight = await cli(args("straight"));
    assert.equal(straight.code, 0, straight.err);
    const killed = await runBin(args("killed"), "checkpoint step 6 ");
    assert.equal(killed.signal, "SIGKILL", killed.err);
    assert.ok(!existsSync(join(dir, "killed", "adapter.pth")));
    const resumed = await cli(["train", "--out", join(dir, "killed"), "--resume"]);
    assert.equal(resumed.code, 0, resumed.err);
    assert.match(resumed.err, /resuming .* at step 6\/12/);
    for (const f of ["adapter.pth", join("adapter", "adapter_model.safetensors")]) {
      assert.ok(readFileSync(join(dir, "straight", f)).equals(readFileSync(join(dir, "killed", f))), `${f} differs after kill and resume`);
    }
    const bad = await cli(["train", "--data", data, "--out", join(dir, "bad"), "--model", BASE, "--int8"]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--int8 holds a frozen base: it needs --lora R or --state-tune/);
    const int8 = await cli(["train", "--data", data, "--out", join(dir, "int8"), "--model", BASE, "--lora", "2", "--int8", "--steps", "2", "--batch", "1", "--ctx", "16", "--val-every", "0", "--threads", "1"]);
    assert.equal(int8.code, 0, int8.err);
    const again = await cli(["train", "--out", join(dir, "int8"), "--resume", "--steps", "3"]);
    assert.equal(again.code, 0, again.err);
    const mismatch = await cli(["train", "--out", join(dir, "straight"), "--resume", "--int8"]);
    assert.equal(mismatch.code, 2);
    assert.match(mismatch.err, /--int8 true differs from the checkpoint's run \(false\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
