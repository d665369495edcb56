import "./relaxed-simd.js"; // first: in-process runs must round as the bin.js child does
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { referenceBackend } from "../src/core/backend/reference.js";
import { buildModel } from "../src/core/model/model.js";
import { rwkv7 } from "../src/core/model/v7/infer.js";
import type { TensorEntry } from "../src/core/tensor.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { DEFAULT_LORA_TARGETS } from "../src/core/train/lora.js";
import { loadCheckpointFile } from "../src/node/train/checkpoint.js";
import { TrainingRun } from "../src/node/train/run.js";
import { runCaptured as cli } from "./run-cli.js";
import { compare } from "./shared.js";
import { runBin, shakespeareFile } from "./train-helpers.js";

/*
 * rwkv train --lora on the bundled RWKV-7 (trained on tiny Shakespeare): the validation loss drops
 * below the base model's, the exported adapter (RWKV-PEFT .pth and peft directory) loads back
 * with the trained model's logits, and a killed run resumes bit-identically.
 */

const ROOT = join(import.meta.dirname, "..", "..");
const BASE = join(ROOT, "models", "rwkv7-shakespeare.safetensors");
const RANK = 4, ALPHA = 32;

function setup(t: import("node:test").TestContext): { dir: string; data: string } | null {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-lora-"));
  const data = shakespeareFile(t, dir, 30_000);
  return data ? { dir, data } : null;
}

const RUN = ["--model", BASE, "--lora", String(RANK), "--batch", "4", "--ctx", "32", "--warmup", "0", "--threads", "1"];

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

test("LoRA training run: validation loss below the base model's; adapter.pth and the peft directory load back with the trained logits", async (t) => {
  const s = setup(t);
  if (!s) return;
  try {
    const run = await TrainingRun.create(join(s.dir, "tuned"), {
      data: [s.data], init: { model: BASE }, lora: { rank: RANK, alpha: ALPHA, targets: [...DEFAULT_LORA_TARGETS] },
      batch: 4, ctx: 32, warmup: 0, steps: 30, valEvery: 30, lr: 1e-3, lrFinal: 1e-3,
    }, { threads: 1 });
    const base = run.validationLoss(); // B starts at zero: before any step the model is the base
    await run.run();
    const tuned = run.history.val[0][1];
    assert.ok(tuned < base - 1e-3, `validation loss ${tuned} is not below the base model's ${base}`);

    const out = join(s.dir, "tuned");
    const lora = loadCheckpoint(join(out, "adapter.pth"));
    const baseCk = loadCheckpoint(BASE);
    try {
      const names = [...lora.checkpoint.tensors.keys()];
      assert.equal(names.length, 2 * 4 * 6, "v7 has 4 Linears in att and 2 in ffn per block, 4 blocks");
      assert.ok(names.every((n) => /^blocks\.\d+\.(att|ffn)\.\w+\.lora_[AB]$/.test(n)), names.join(","));
      assert.deepEqual(lora.checkpoint.tensors.get("blocks.0.att.key.lora_A")!.shape, [RANK, 128]);
      const tokens = Array.from(new TextEncoder().encode("ROMEO:\nWhat light"));
      const ref = buildModel(mergedByHand(baseCk.checkpoint, lora.checkpoint), rwkv7, "7", referenceBackend);
      const want = await ref.forward(tokens, ref.initState(), { allLogits: true });
      const viaPth = await loadModel(BASE, { backend: "reference", adapters: [{ path: join(out, "adapter.pth"), kind: "lora", alpha: ALPHA }] });
      const viaPeft = await loadModel(BASE, { backend: "reference", adapters: [{ path: join(out, "adapter") }] });
      const a = await viaPth.forward(tokens, viaPth.initState(), { allLogits: true });
      const b = await viaPeft.forward(tokens, viaPeft.initState(), { allLogits: true });
      assert.deepEqual(a, b, "adapter.pth and the peft directory give different logits");
      const c = compare(a, want, 1e-5, 1e-5);
      assert.ok(c.ok, `loaded adapter vs trained weights: ${c.maxAbs}`);
      const config = JSON.parse(readFileSync(join(out, "adapter", "adapter_config.json"), "utf8")) as { r: number; lora_alpha: number; peft_type: string };
      assert.deepEqual([config.peft_type, config.r, config.lora_alpha], ["LORA", RANK, ALPHA]);
    } finally {
      lora.close();
      baseCk.close();
    }
  } finally {
    rmSync(s.dir, { recursive: true, force: true });
  }
});

test("rwkv train --lora: kill -9 after a checkpoint, --resume gives a bit-identical adapter", async (t) => {
  const s = setup(t);
  if (!s) return;
  try {
    const args = (out: string) => ["train", "--data", s.data, "--out", join(s.dir, out), ...RUN, "--steps", "12", "--save-every", "6", "--val-every", "0", "--lr", "1e-3"];
    const straight = await cli(args("straight")); // in this process; only the killed run needs a child
    assert.equal(straight.code, 0, straight.err);
    const killed = await runBin(args("killed"), "checkpoint step 6 ");
    assert.equal(killed.signal, "SIGKILL", killed.err);
    assert.ok(!existsSync(join(s.dir, "killed", "adapter.pth")));
    const resumed = await cli(["train", "--out", join(s.dir, "killed"), "--resume"]);
    assert.equal(resumed.code, 0, resumed.err);
    assert.match(resumed.err, /resuming .* at step 6\/12/);
    for (const f of ["adapter.pth", join("adapter", "adapter_model.safetensors")]) {
      assert.ok(readFileSync(join(s.dir, "straight", f)).equals(readFileSync(join(s.dir, "killed", f))), `${f} differs after kill and resume`);
    }
    // The checkpoint holds the LoRA tensors only, not the frozen base.
    const saved = loadCheckpointFile(join(s.dir, "killed", "checkpoint.rwkvtrain")).params;
    assert.ok(saved.list.length === 48 && saved.list.every((p) => /\.lora_[AB]$/.test(p.name)), saved.list.map((p) => p.name).join(","));
    // Resuming with another rank is refused by name.
    const bad = await cli(["train", "--out", join(s.dir, "killed"), "--resume", "--lora", "8"]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--lora 8 differs from the checkpoint's run \(4\)/);
  } finally {
    rmSync(s.dir, { recursive: true, force: true });
  }
});

test("rwkv train --lora: bad flags get one-line errors", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-lora-bad-"));
  try {
    const data = join(dir, "d.txt");
    writeFileSync(data, "To be, or not to be, that is the question.\n".repeat(100));
    const cases: Array<[string[], RegExp]> = [
      [["--version", "7", "--layers", "1", "--embd", "32", "--lora", "4"], /--lora tunes an existing model: give it with --model FILE/],
      [["--model", BASE, "--lora", "0"], /--lora must be a positive integer/],
      [["--model", BASE, "--lora-alpha", "8"], /--lora-alpha and --lora-targets need --lora R/],
      [["--model", BASE, "--lora", "4", "--lora-targets", "att.nothing"], /--lora-targets: none of att\.nothing is a Linear weight/],
      [["--model", BASE, "--lora", "999"], /--lora: rank 999 exceeds blocks\.0\.att\.receptance\.weight's smaller side 128/],
    ];
    for (const [i, [flags, re]] of cases.entries()) {
      const r = await cli(["train", "--data", data, "--out", join(dir, `o${i}`), ...flags]);
      assert.notEqual(r.code, 0);
      assert.match(r.err, re);
      assert.equal(r.err.trim().split("\n").filter((l) => l.startsWith("rwkv:")).length, 1, r.err);
    }
    // The checkpoint does not hold the base: a --model file changed since is refused on --resume.
    const copy = join(dir, "base.safetensors");
    writeFileSync(copy, readFileSync(BASE));
    let r = await cli(["train", "--data", data, "--out", join(dir, "run"), "--model", copy, "--lora", "2", "--steps", "1", "--batch", "1", "--ctx", "16", "--val-fraction", "0"]);
    assert.equal(r.code, 0, r.err);
    const bytes = readFileSync(copy);
    bytes[bytes.length - 1] ^= 0x40; // the last weight of the last tensor
    writeFileSync(copy, bytes);
    r = await cli(["train", "--out", join(dir, "run"), "--resume", "--steps", "2"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /base\.safetensors: this base model is not the one the adapter run started from/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
