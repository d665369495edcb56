import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import { buildModel } from "../src/core/model/model.js";
import { rwkv7 } from "../src/core/model/v7.js";
import { storeCheckpoint } from "../src/core/train/params.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { loadCheckpointFile } from "../src/node/train/checkpoint.js";
import { bitsEqual, sharedPath } from "./shared.js";
import { readJson } from "./shared.js";
import { relErr } from "./train-helpers.js";
import { runCaptured as cli } from "./run-cli.js";

/*
 * `rwkv train` end to end on small models and data (each run well under a second or two):
 * kill-and-resume gives bit-identical weights, the exported .pth / .safetensors load back with the
 * trained weights' logits, and bad input stops with a one-line diagnosis.
 */

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "rwkv-train-"));
}

/** ~12 KB of text: Shakespeare from ../shared when present, else generated. */
function textFile(t: import("node:test").TestContext, dir: string): string {
  const src = sharedPath(t, "data", "tinyshakespeare", "input.txt");
  const text = src ? readFileSync(src, "utf8").slice(0, 12_000) : "To be, or not to be, that is the question.\n".repeat(300);
  const p = join(dir, "data.txt");
  writeFileSync(p, text);
  return p;
}

/** Runs bin.js in a child process to its end. */
async function runBin(argv: string[]): Promise<{ code: number | null; err: string }> {
  const c = spawn(process.execPath, [BIN, ...argv], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  c.stderr.setEncoding("utf8");
  c.stderr.on("data", (d: string) => { err += d; });
  const code = await new Promise<number | null>((res) => c.on("exit", (code) => res(code)));
  return { code, err };
}

/** A small v7 run: 2 layers x 64, windows of 32 bytes. */
const SMALL = ["--version", "7", "--layers", "2", "--embd", "64", "--head-size", "32", "--ctx", "32", "--lr", "2e-3", "--warmup", "3"];

test("kill -9 between checkpoints, then --resume: bit-identical final weights to an uninterrupted run", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  const args = (out: string) => ["train", "--data", data, "--out", out, ...SMALL, "--batch", "2", "--steps", "30", "--save-every", "10", "--val-every", "15"];
  const straight = join(dir, "straight"), killed = join(dir, "killed");
  // Every run goes through bin.js, as a user's would: the CLI turns on the relaxed-SIMD kernels, which
  // round multiply-adds differently from the plain build this test process has.
  const r = await runBin(args(straight));
  assert.equal(r.code, 0, r.err);

  // The same run in a child process, SIGKILLed right after its first checkpoint.
  const child = spawn(process.execPath, [BIN, ...args(killed)], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d: string) => {
    stderr += d;
    if (stderr.includes("checkpoint step 10 ")) child.kill("SIGKILL");
  });
  const signal = await new Promise<NodeJS.Signals | null>((res) => child.on("exit", (_code, sig) => res(sig)));
  assert.equal(signal, "SIGKILL", `the child was not killed (stderr: ${stderr})`);
  assert.ok(!existsSync(join(killed, "model.safetensors")), "the killed run must not have finished");
  const mid = loadCheckpointFile(join(killed, "checkpoint.rwkvtrain")).header.step;
  assert.ok(mid >= 10 && mid < 30, `killed at checkpoint step ${mid}`);

  const resumed = await runBin(["train", "--out", killed, "--resume"]);
  assert.equal(resumed.code, 0, resumed.err);
  assert.match(resumed.err, new RegExp(`resuming .* at step ${mid}/30`));
  const a = readFileSync(join(straight, "model.safetensors")), b = readFileSync(join(killed, "model.safetensors"));
  assert.ok(a.equals(b), "final weights differ after kill and resume");
  // The optimizer state and the loss history continue exactly too.
  const ca = loadCheckpointFile(join(straight, "checkpoint.rwkvtrain")), cb = loadCheckpointFile(join(killed, "checkpoint.rwkvtrain"));
  assert.deepEqual(cb.header.history.train, ca.header.history.train);
  // Validation losses are equal too; only the recorded wall-clock seconds differ.
  assert.deepEqual(cb.header.history.val.map(([s, l]) => [s, l]), ca.header.history.val.map(([s, l]) => [s, l]));
  assert.deepEqual(cb.header.rng, ca.header.rng);
  for (const p of ca.params.list) assert.ok(bitsEqual(cb.optimizer.v.get(p.name) as Float32Array, ca.optimizer.v.get(p.name) as Float32Array), p.name);
  assert.ok(existsSync(join(killed, "loss.svg")) && readFileSync(join(killed, "loss.svg"), "utf8").startsWith("<svg"));
});

test("exported .pth and .safetensors load back through loadModel with the trained weights' logits", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  for (const dtype of ["f32", "bf16"]) {
    const out = join(dir, dtype);
    const r = await cli(["train", "--data", data, "--out", out, ...SMALL, "--batch", "4", "--steps", "4", "--val-every", "2", "--export-dtype", dtype]);
    assert.equal(r.code, 0, r.err);
    const trained = loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).params;
    const direct = buildModel(storeCheckpoint(trained), rwkv7, "7", referenceBackend, { matrices: "f32" });
    const tokens = Array.from(new TextEncoder().encode("First Citizen:\nBefore we proceed"));
    const want = direct.forward(tokens, direct.initState(), { allLogits: true });
    for (const file of ["model.pth", "model.safetensors"]) {
      const m = loadModel(join(out, file), { backend: "reference", matrices: "f32" });
      const got = m.forward(tokens, m.initState(), { allLogits: true });
      if (dtype === "f32") assert.ok(bitsEqual(got, want), `${dtype} ${file}: logits differ`);
      else assert.ok(relErr(got, want).rel < 0.05, `${dtype} ${file}: ${relErr(got, want).rel}`);
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

test("bad input: empty or tiny data, another architecture or a corrupted checkpoint on --resume, a diverging run", async (t) => {
  const dir = tmp();
  const empty = join(dir, "empty.txt"), tiny = join(dir, "tiny.txt");
  writeFileSync(empty, "");
  writeFileSync(tiny, "hello");
  const base = ["--version", "7", "--layers", "1", "--embd", "32", "--head-size", "16", "--ctx", "16", "--batch", "2", "--val-every", "0"];

  let r = await cli(["train", "--data", empty, "--out", join(dir, "e"), ...base, "--steps", "2"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /empty/);
  r = await cli(["train", "--data", tiny, "--out", join(dir, "t"), ...base, "--steps", "2"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /too small/);
  r = await cli(["train", "--data", join(dir, "missing.txt"), "--out", join(dir, "m"), ...base]);
  assert.equal(r.code, 1);
  r = await cli(["train", "--data", tiny, "--out", join(dir, "u"), "--version", "9", "--layers", "1", "--embd", "32"]);
  assert.equal(r.code, 2);

  // A run to resume from.
  const data = textFile(t, dir), out = join(dir, "run");
  r = await cli(["train", "--data", data, "--out", out, ...base, "--steps", "3", "--save-every", "1"]);
  assert.equal(r.code, 0, r.err);
  r = await cli(["train", "--data", data, "--out", out, ...base, "--steps", "3"]);
  assert.equal(r.code, 1, "a fresh run must not overwrite an existing checkpoint");
  r = await cli(["train", "--out", out, "--resume", "--version", "4"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /another architecture/);
  r = await cli(["train", "--out", out, "--resume", "--layers", "3"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /another architecture/);

  const ckpt = join(out, "checkpoint.rwkvtrain");
  const bytes = readFileSync(ckpt);
  bytes[Math.floor(bytes.length / 2)] ^= 0x40;
  writeFileSync(ckpt, bytes);
  r = await cli(["train", "--out", out, "--resume", "--steps", "5"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /corrupted training checkpoint/);
  writeFileSync(ckpt, bytes.subarray(0, 100));
  r = await cli(["train", "--out", out, "--resume"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /corrupted|truncated/);
  r = await cli(["train", "--out", join(dir, "nothing"), "--resume"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /no training checkpoint/);

  // Divergence: an absurd learning rate turns the loss into NaN; the last good checkpoint stays.
  const div = join(dir, "div");
  r = await cli(["train", "--data", data, "--out", div, ...base, "--steps", "40", "--save-every", "1", "--lr", "1e9", "--warmup", "0", "--grad-clip", "0"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /diverged at step (\d+): loss NaN/);
  const failedAt = Number(/diverged at step (\d+)/.exec(r.err)![1]);
  const last = loadCheckpointFile(join(div, "checkpoint.rwkvtrain")).header;
  assert.equal(last.step, failedAt - 1, "the checkpoint before the failing step stays");
  assert.ok(last.history.train.every(([, l]) => Number.isFinite(l)));
});

test("fine-tune from a checkpoint in any loadable format; --resume accepts flags that match the run", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  for (const [v, file] of [["v7", "model.pth"], ["v4", "model_bf16.safetensors"], ["v6", "model.safetensors"]]) {
    const model = sharedPath(t, "golden", v, file);
    if (!model) return;
    const out = join(dir, `ft-${v}`);
    // Vocabulary 512 is no known tokenizer's size: bytes (ids < 256) fit in it.
    const args = ["train", "--model", model, "--tokenizer-kind", "bytes", "--data", data, "--out", out, "--ctx", "16", "--batch", "2", "--val-every", "0"];
    let r = await cli([...args, "--steps", "2"]);
    assert.equal(r.code, 0, `${v}: ${r.err}`);
    const before = loadCheckpointFile(join(out, "checkpoint.rwkvtrain"));
    assert.equal(before.header.step, 2);
    // The same flags again with --resume are accepted; a higher --steps continues the run.
    r = await cli([...args, "--resume", "--steps", "3"]);
    assert.equal(r.code, 0, `${v}: ${r.err}`);
    assert.equal(loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).header.step, 3);
    r = await cli(["train", "--out", out, "--resume", "--batch", "4"]);
    assert.equal(r.code, 2, "a changed --batch is refused on resume");
    // The export keeps the original file's tensor names, loadable by the inference engine.
    const { checkpoint, close } = loadCheckpoint(model);
    const names = [...checkpoint.tensors.keys()];
    close();
    const m = loadModel(join(out, "model.pth"), { backend: "reference" });
    assert.equal(m.config.vocabSize, 512);
    const exported = loadCheckpoint(join(out, "model.pth"));
    assert.deepEqual([...exported.checkpoint.tensors.keys()], names);
    exported.close();
  }
});

test("a checkpoint records its kernels' build; resuming on another build says it will not be bit-identical", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  const out = join(dir, "builds");
  const args = ["train", "--data", data, "--out", out, ...SMALL, "--batch", "2", "--val-every", "0"];
  let r = await cli([...args, "--steps", "2", "--kernels", "reference"]);
  assert.equal(r.code, 0, r.err);
  assert.equal(loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).header.kernels, "reference");
  r = await cli(["train", "--out", out, "--resume", "--steps", "3", "--kernels", "reference"]);
  assert.equal(r.code, 0, r.err);
  assert.doesNotMatch(r.err, /round differently/, "same build: no note");
  r = await cli(["train", "--out", out, "--resume", "--steps", "4", "--kernels", "wasm"]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /ran on the reference kernels, these run on wasm (relaxed-)?simd, which round differently/);
  assert.match(loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).header.kernels ?? "", /^wasm /);
});
