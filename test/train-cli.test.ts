import "./relaxed-simd.js"; // first: in-process runs must round as the bin.js child does
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { loadCheckpointFile } from "../src/node/train/checkpoint.js";
import { bitsEqual, sharedPath } from "./shared.js";
import { runBin } from "./train-helpers.js";
import { runCaptured as cli } from "./run-cli.js";

/*
 * `rwkv train` as a command: what needs a real process (kill -9, then --resume bit-identical), exit
 * codes and one-line diagnoses, and the --resume flag checks. The run itself (events, exports,
 * fine-tuning, stop and resume in-process) is tested on TrainingRun in train-run.test.ts.
 */

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

/** A small v7 run: 2 layers x 64, windows of 32 bytes. */
const SMALL = ["--version", "7", "--layers", "2", "--embd", "64", "--head-size", "32", "--ctx", "32", "--lr", "2e-3", "--warmup", "3"];

test("kill -9 between checkpoints, then --resume: bit-identical final weights to an uninterrupted run", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  const args = (out: string) => ["train", "--data", data, "--out", out, ...SMALL, "--batch", "2", "--steps", "30", "--save-every", "10", "--val-every", "15"];
  const straight = join(dir, "straight"), killed = join(dir, "killed");
  // The uninterrupted run and the resumption run in this process; only the killed one needs a child.
  const r = await cli(args(straight));
  assert.equal(r.code, 0, r.err);
  const child = await runBin(args(killed), "checkpoint step 10 ");
  assert.equal(child.signal, "SIGKILL", `the child was not killed (stderr: ${child.err})`);
  assert.ok(!existsSync(join(killed, "model.safetensors")), "the killed run must not have finished");
  assert.equal(loadCheckpointFile(join(killed, "checkpoint.rwkvtrain")).header.kernels, loadCheckpointFile(join(straight, "checkpoint.rwkvtrain")).header.kernels,
    "the child and this process run the same kernels' build");
  const mid = loadCheckpointFile(join(killed, "checkpoint.rwkvtrain")).header.step;
  assert.ok(mid >= 10 && mid < 30, `killed at checkpoint step ${mid}`);

  const resumed = await cli(["train", "--out", killed, "--resume"]);
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

test("bad input: exit 1 with one line naming the problem, 2 for bad usage; --resume refuses another architecture", async (t) => {
  const dir = tmp();
  const empty = join(dir, "empty.txt");
  writeFileSync(empty, "");
  const base = ["--version", "7", "--layers", "1", "--embd", "32", "--head-size", "16", "--ctx", "16", "--batch", "2", "--val-every", "0"];
  const expect = (r: { code: number; err: string }, code: number, re: RegExp) => {
    assert.equal(r.code, code, r.err);
    assert.match(r.err, re);
    assert.equal(r.err.trim().split("\n").filter((l) => l.startsWith("rwkv:")).length, 1, r.err);
  };

  expect(await cli(["train", "--data", empty, "--out", join(dir, "e"), ...base, "--steps", "2"]), 1, /^rwkv: .*empty\.txt: the dataset is empty/);
  expect(await cli(["train", "--data", empty, "--out", join(dir, "u"), "--version", "9", "--layers", "1", "--embd", "32"]), 2, /--version must be one of/);
  expect(await cli(["train", "--data", dir, "--out", dir, ...base]), 2, /--out must not be one of the --data paths/);
  expect(await cli(["train", "--data", empty]), 2, /--out DIR is required/);

  // A run to resume from.
  const data = textFile(t, dir), out = join(dir, "run");
  let r = await cli(["train", "--data", data, "--out", out, ...base, "--steps", "3", "--save-every", "1"]);
  assert.equal(r.code, 0, r.err);
  expect(await cli(["train", "--data", data, "--out", out, ...base, "--steps", "3"]), 1, /a training checkpoint already exists here/);
  expect(await cli(["train", "--out", out, "--resume", "--version", "4"]), 1, /another architecture/);
  expect(await cli(["train", "--out", out, "--resume", "--layers", "3"]), 1, /another architecture/);
  expect(await cli(["train", "--out", out, "--resume", "--batch", "4"]), 2, /--batch 4 differs from the checkpoint's run \(2\)/);
  const ckpt = join(out, "checkpoint.rwkvtrain");
  const bytes = readFileSync(ckpt);
  bytes[Math.floor(bytes.length / 2)] ^= 0x40;
  writeFileSync(ckpt, bytes);
  expect(await cli(["train", "--out", out, "--resume", "--steps", "5"]), 1, /corrupted training checkpoint/);
  expect(await cli(["train", "--out", join(dir, "nothing"), "--resume"]), 1, /no training checkpoint/);

  // Divergence: the diagnosis names the step and the last good checkpoint.
  r = await cli(["train", "--data", data, "--out", join(dir, "div"), ...base, "--steps", "40", "--save-every", "1", "--lr", "1e9", "--warmup", "0", "--grad-clip", "0"]);
  expect(r, 1, /^rwkv: training: diverged at step (\d+): loss NaN.*Lower --lr/m);
});

test("--resume accepts the run's own flags (a fine-tune's --model included) and a higher --steps", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  const model = sharedPath(t, "golden", "v7", "model.pth");
  if (!model) return;
  const out = join(dir, "ft");
  const args = ["train", "--model", model, "--tokenizer-kind", "bytes", "--data", data, "--out", out, "--ctx", "16", "--batch", "2", "--val-every", "0"];
  let r = await cli([...args, "--steps", "2"]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^trained 2 steps \(64 tokens, .* s\): .*model\.pth, .*model\.safetensors \(f32\), loss curve .*loss\.svg\n$/);
  r = await cli([...args, "--resume", "--steps", "3"]);
  assert.equal(r.code, 0, r.err);
  assert.equal(loadCheckpointFile(join(out, "checkpoint.rwkvtrain")).header.step, 3);
  r = await cli([...args.map((a) => (a === model ? join(dir, "other.pth") : a)), "--resume"]);
  assert.equal(r.code, 1, "another --model is another architecture");
  assert.match(r.err, /another architecture/);
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
