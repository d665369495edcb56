import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import type { ModelConfig } from "../src/core/model/model.js";
import { initModel } from "../src/core/train/init.js";
import { TrainRng } from "../src/core/train/rng.js";
import { loadCheckpoint } from "../src/node/load.js";
import { binidx, magicPrime, rwkvLmLayout } from "../src/node/train/rwkv-lm.js";
import { runCaptured as cli } from "./run-cli.js";
import { sharedPath } from "./shared.js";

/*
 * `rwkv train --export rwkv-lm` and `--init-from`. RWKV-LM's own code checks the export in
 * tools/rwkv-lm-check/check.py (Python, not in CI); these tests pin the layout, the data file,
 * the generated command and the way back, and the refusals.
 */

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "rwkv-lm-"));
}

function textFile(t: TestContext, dir: string): string {
  const src = sharedPath(t, "data", "tinyshakespeare", "input.txt");
  const text = src ? readFileSync(src, "utf8").slice(0, 12_000) : "To be, or not to be, that is the question.\n".repeat(300);
  const p = join(dir, "data.txt");
  writeFileSync(p, text);
  return p;
}

const config = (version: "6" | "7", C: number): ModelConfig => ({
  version, nLayer: 2, nEmbd: C, nHead: C / 64, headSize: 64, vocabSize: 256, dimFfn: version === "7" ? 4 * C : Math.floor((3.5 * C) / 32) * 32, dimAtt: C,
} as ModelConfig);

test("rwkvLmLayout: the same names, order and shapes as the trainer's RWKV-LM init (v7, v6)", () => {
  for (const version of ["7", "6"] as const) {
    const cfg = config(version, 128);
    const store = initModel({ version, nLayer: 2, nEmbd: 128, headSize: 64, vocabSize: 256, lrInit: 1e-3 }, new TrainRng(1), "f32");
    assert.deepEqual(rwkvLmLayout(cfg), store.list.map((p) => [p.name, [...p.shape]]), `v${version}`);
  }
  // v7 LoRA widths follow train_temp's formula max(32, round(k·sqrt(C)/32)·32): C = 768 → 64, 64, 32, 128.
  const big = new Map(rwkvLmLayout(config("7", 768)));
  assert.deepEqual([big.get("blocks.0.att.w1"), big.get("blocks.0.att.a1"), big.get("blocks.0.att.v1"), big.get("blocks.0.att.g1")],
    [[768, 64], [768, 64], [768, 32], [768, 128]]);
});

test("magicPrime: RWKV-LM's demo value for MiniPile at ctx 512, and 0 when the data is too short", () => {
  assert.equal(magicPrime(1498226207, 512), 2926181); // demo-training-run.sh --magic_prime
  assert.equal(magicPrime(12_000, 64), 179);
  assert.equal(magicPrime(100, 64), 0);
});

test("binidx: Megatron MMapIndexedDataset bytes (uint16 ids; int32 past 65536 ids)", () => {
  const { bin, idx } = binidx(Uint16Array.from([1, 2, 300]), 512);
  assert.deepEqual([...bin], [1, 0, 2, 0, 44, 1]);
  const hex = Buffer.from(idx).toString("hex");
  const parts = ["4d4d494449445800" + "00", "0100000000000000", "08", "0100000000000000", "0200000000000000", // magic, version, uint16, 1 sequence, 2 doc_idx
    "03000000", "0000000000000000", "0000000000000000" + "0100000000000000"]; // sizes [3], pointers [0], doc_idx [0, 1]
  assert.equal(hex, parts.join(""));
  assert.equal(binidx(Uint32Array.from([70000]), 70001).bin.length, 4);
  assert.equal(binidx(Uint32Array.from([70000]), 70001).idx[17], 4);
});

test("train --export rwkv-lm writes bf16 weights in RWKV-LM's order, the data and train.sh; --init-from brings them back", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  const out = join(dir, "run");
  const trained = await cli(["train", "--data", data, "--out", out, "--version", "7", "--layers", "2", "--embd", "64", "--head-size", "64",
    "--ctx", "64", "--batch", "2", "--steps", "3", "--val-every", "0", "--lr", "2e-3", "--warmup", "1"]);
  assert.equal(trained.code, 0, trained.err);
  const r = await cli(["train", "--out", out, "--export", "rwkv-lm"]);
  assert.equal(r.code, 0, r.err);
  const exp = join(out, "rwkv-lm");
  for (const f of ["rwkv-init.pth", "data/train.bin", "data/train.idx", "train.sh"]) assert.ok(existsSync(join(exp, f)), f);
  const script = readFileSync(join(exp, "train.sh"), "utf8");
  assert.equal(r.out.slice(r.out.indexOf("#!/bin/sh")), script);
  for (const flag of ["--my_testing x070", "--train_stage 3", "--magic_prime 167", "--my_exit_tokens 10688", "--n_layer 2 --n_embd 64",
    "--vocab_size 256", "--ctx_len 64", "--strategy deepspeed_stage_2", "--precision bf16", "--data_type binidx"]) {
    assert.ok(script.includes(flag), `${flag} in\n${script}`);
  }
  // 90% of 12,000 bytes train (10,800 tokens, 168 windows of 64: the prime is 167), as one binidx document of uint16.
  assert.equal(readFileSync(join(exp, "data", "train.bin")).length, 2 * 10_800);

  const { checkpoint: exported, close } = loadCheckpoint(join(exp, "rwkv-init.pth"));
  const { checkpoint: f32, close: close2 } = loadCheckpoint(join(out, "model.safetensors"));
  try {
    const cfg = { ...config("7", 64), nHead: 1 };
    assert.deepEqual([...exported.tensors.keys()], rwkvLmLayout(cfg).map(([n]) => n));
    for (const e of exported.tensors.values()) {
      assert.equal(e.dtype, "bf16", e.name);
      const want = f32.tensors.get(e.name)!.toFloat32(), got = e.toFloat32();
      for (let i = 0; i < want.length; i++) {
        // bf16 keeps 8 significant bits: round-to-nearest is within half a unit of the last place.
        assert.ok(Math.abs(got[i] - want[i]) <= Math.abs(want[i]) * 2 ** -8, `${e.name}[${i}] ${got[i]} vs ${want[i]}`);
      }
    }
  } finally { close(); close2(); }

  // Back: a run started from the file keeps its weights exactly at learning rate 0.
  const back = join(dir, "back");
  const b = await cli(["train", "--data", data, "--out", back, "--init-from", join(exp, "rwkv-init.pth"), "--ctx", "64", "--batch", "2",
    "--steps", "1", "--val-every", "0", "--lr", "0", "--lr-final", "0"]);
  assert.equal(b.code, 0, b.err);
  const { checkpoint: again, close: close3 } = loadCheckpoint(join(back, "model.safetensors"));
  const { checkpoint: src, close: close4 } = loadCheckpoint(join(exp, "rwkv-init.pth"));
  try {
    for (const e of src.tensors.values()) assert.deepEqual(again.tensors.get(e.name)!.toFloat32(), e.toFloat32(), e.name);
  } finally { close3(); close4(); }
});

test("--export / --init-from refuse what RWKV-LM cannot take, naming the problem", async (t) => {
  const dir = tmp();
  const data = textFile(t, dir);
  const out = join(dir, "h32");
  const trained = await cli(["train", "--data", data, "--out", out, "--version", "7", "--layers", "1", "--embd", "64", "--head-size", "32",
    "--ctx", "32", "--batch", "2", "--steps", "1", "--val-every", "0"]);
  assert.equal(trained.code, 0, trained.err);
  const cases: Array<[string[], number, RegExp]> = [
    [["train", "--out", out, "--export", "rwkv-lm"], 1, /head size 32: RWKV-LM's RWKV-7 kernels are built for 64/],
    [["train", "--out", out, "--export", "gguf"], 2, /--export must be rwkv-lm, got "gguf"/],
    [["train", "--out", out, "--export", "rwkv-lm", "--steps", "5"], 2, /--steps does not apply/],
    [["train", "--out", join(dir, "nothing"), "--export", "rwkv-lm"], 1, /no training checkpoint here/],
    [["train", "--data", data, "--out", join(dir, "x"), "--model", "a.pth", "--init-from", "b.pth"], 2, /--model FILE or --init-from FILE, not both/],
    [["train", "--data", data, "--out", join(dir, "y"), "--init-from", join(out, "model.pth")], 1, /not an RWKV-LM checkpoint this trainer can continue: head size 32/],
  ];
  const golden = sharedPath(t, "golden", "v7", "model.pth");
  // The golden model's LoRA widths (32, 24, 16, 40) are not the ones RWKV-LM's trainer creates.
  if (golden) cases.push([["train", "--data", data, "--out", join(dir, "z"), "--init-from", golden], 1, /blocks\.0\.att\.a1 is \[128,24\], RWKV-LM has \[128,32\]/]);
  for (const [argv, code, want] of cases) {
    const r = await cli(argv);
    assert.equal(r.code, code, `${argv.join(" ")}: ${r.err}`);
    assert.match(r.err.split("\n")[0], want);
  }
});
