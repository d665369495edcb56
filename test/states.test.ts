import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { type TensorToWrite, writeSafetensors } from "../src/core/formats/safetensors.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { State, type StateDevice } from "../src/core/model/state.js";
import { sharedPath } from "./shared.js";

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");
const tmp = mkdtempSync(join(tmpdir(), "rwkv-states-"));

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test("state file round trip across processes: generate, save, continue = one uninterrupted run", (t) => {
  const m = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!m) return;
  const s1 = join(tmp, "s1.state");
  // These tiny test models are barely trained (flat distributions): top-k 3 keeps the text ASCII.
  const opts = ["--seed", "3", "--top-k", "3"];
  const a = cli("generate", m, "--prompt", "The king ", "--max-tokens", "20", ...opts, "--state-out", s1);
  assert.equal(a.code, 0, a.err);
  const b = cli("generate", m, "--state-in", s1, "--max-tokens", "25", "--top-k", "3");
  assert.equal(b.code, 0, b.err);
  const whole = cli("generate", m, "--prompt", "The king ", "--max-tokens", "45", ...opts);
  assert.equal(whole.code, 0, whole.err);
  assert.equal(a.out.slice(0, -1) + b.out.slice(0, -1), whole.out.slice(0, -1));
  assert.ok(/^[\x20-\x7e\n]*$/.test(whole.out), "ASCII output: no character split across the save");

  // A quantization of the same model keeps emb and head (rwkv.cpp leaves them unquantized), so it
  // has the same fingerprint and accepts the state; a model with other weights of the same shape
  // and version is refused.
  const quant = cli("generate", sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-Q5_1.bin")!, "--state-in", s1, "--max-tokens", "5");
  assert.equal(quant.code, 0, quant.err);
  const other = join(tmp, "other.safetensors");
  const { checkpoint, close } = loadCheckpoint(m);
  writeFileSync(other, Buffer.concat(writeSafetensors([...checkpoint.tensors.values()].map((e) => {
    const f = e.toFloat32();
    if (e.name === "head.weight") for (let i = 0; i < f.length; i += 7) f[i] *= 1.01;
    return { name: e.name, dtype: "f32" as const, shape: e.shape, data: new Uint8Array(f.buffer) };
  }))));
  close();
  const wrong = cli("generate", other, "--state-in", s1, "--max-tokens", "5");
  assert.equal(wrong.code, 1);
  assert.match(wrong.err, /s1\.state: state belongs to another model \(fingerprint/);
  const v6 = cli("generate", sharedPath(t, "rwkv.cpp", "tiny-rwkv-6v0-1m-FP32.bin")!, "--state-in", s1, "--max-tokens", "5");
  assert.equal(v6.code, 1);
  assert.match(v6.err, /state belongs to another model \(version 7, this model has 6\)/);

  // A truncated state file: one line, no stack trace.
  const bytes = readFileSync(s1);
  for (const cut of [4, 30, bytes.length - 7]) {
    const p = join(tmp, `cut${cut}.state`);
    writeFileSync(p, bytes.subarray(0, cut));
    const r = cli("generate", m, "--state-in", p, "--max-tokens", "5");
    assert.equal(r.code, 1, `cut at ${cut}: ${r.err}`);
    assert.match(r.err, new RegExp(`cut${cut}\\.state: .*(truncated|not an RWKV state file|unknown file format)`));
    assert.doesNotMatch(r.err, /\n\s+at /);
  }
});

test("generate: bad input gives one line and a non-zero exit", (t) => {
  const m = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!m) return;
  const bad = join(tmp, "bad.txt");
  writeFileSync(bad, Buffer.from([0x48, 0x69, 0xff, 0xfe, 0x0a]));
  const empty = join(tmp, "empty.txt");
  writeFileSync(empty, "");
  const cases: Array<[string[], number, RegExp]> = [
    [["generate", m, "--prompt-file", bad], 1, /bad\.txt: is not valid UTF-8 text/],
    [["generate", m, "--prompt-file", empty], 2, /--prompt-file .*empty\.txt is empty/],
    [["generate", m, "--prompt-file", join(tmp, "nope.txt")], 1, /nope\.txt: no such file/],
    [["generate", m, "--prompt", "x", "--prompt-file", bad], 2, /not both/],
    [["generate", m, "--prompt", "x", "--temperature=-1"], 2, /--temperature must be a number in \[0, 100\]/],
    [["generate", m, "--prompt", "x", "--top-p", "2"], 2, /--top-p must be a number in \[0, 1\]/],
    [["generate", m, "--prompt", "x", "--seed", "abc"], 2, /--seed must be an integer/],
    [["generate", m, "--prompt", "x", "--logit-bias", "5"], 2, /--logit-bias must be ID:BIAS/],
    [["generate", m, "--prompt", "x", "--state-out", join(tmp, "no", "such", "dir", "s")], 1, /cannot write state file/],
    [["generate", join(tmp, "missing.bin"), "--prompt", "x"], 1, /missing\.bin: no such file/],
  ];
  for (const [argv, code, re] of cases) {
    const r = cli(...argv);
    assert.equal(r.code, code, `${argv.join(" ")}: ${r.err}`);
    assert.match(r.err, re, argv.join(" "));
    assert.doesNotMatch(r.err, /\n\s+at /);
  }
});

/** A state-tuning file as RWKV-PEFT writes one: only blocks.i.att.time_state (H, N, N). */
function stateTuningFile(name: string, L: number, H: number, N: number, seed: number, scale = 0.2): { path: string; tensors: Float32Array[] } {
  const tensors: Float32Array[] = [];
  const out: TensorToWrite[] = [];
  let x = seed;
  for (let i = 0; i < L; i++) {
    const ts = new Float32Array(H * N * N).map(() => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * scale);
    tensors.push(ts);
    out.push({ name: `blocks.${i}.att.time_state`, dtype: "f32", shape: [H, N, N], data: new Uint8Array(ts.buffer) });
  }
  const path = join(tmp, name);
  writeFileSync(path, Buffer.concat(writeSafetensors(out)));
  return { path, tensors };
}

test("state-tuned time_state becomes the initial state (v7 as is, v6 transposed to [h][key][value])", async (t) => {
  for (const ver of ["v6", "v7"]) {
    const p = sharedPath(t, "golden", ver, "model.safetensors");
    if (!p) return;
    const model = await loadModel(p);
    const { nLayer: L, nHead: H, headSize: N } = model.config;
    const { path, tensors } = stateTuningFile(`${ver}-tuned.safetensors`, L, H, N, 42);
    const plain = await loadModel(p);
    const manual = plain.initState();
    for (let i = 0; i < L; i++) {
      const kv = manual.layers[i].att_kv;
      for (let h = 0; h < H; h++) for (let a = 0; a < N; a++) for (let b = 0; b < N; b++) {
        // File layout is [h][value][key]; v7 keeps it, v6's pip layout is [h][key][value].
        kv[(h * N + (ver === "v7" ? a : b)) * N + (ver === "v7" ? b : a)] = tensors[i][(h * N + a) * N + b];
      }
    }
    const { checkpoint, close } = loadCheckpoint(path);
    model.useTimeState(checkpoint);
    close();
    assert.deepEqual(model.initState().layers.map((l) => l.att_kv), manual.layers.map((l) => l.att_kv));
    const toks = [1, 2, 3, 4, 5];
    assert.deepEqual(await model.forward(toks, model.initState()), await plain.forward(toks, manual));
    assert.notDeepEqual(await model.forward(toks, model.initState()), await plain.forward(toks, plain.initState()));
  }
});

test("--state-in accepts a state-tuning checkpoint; a file without time_state is refused", async (t) => {
  const p = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!p) return;
  const { nLayer: L, nHead: H, headSize: N } = (await loadModel(p)).config;
  const { path } = stateTuningFile("v7-cli-tuned.safetensors", L, H, N, 7, 20);
  const base = ["generate", p, "--prompt", "The ", "--max-tokens", "12", "--seed", "1", "--top-k", "3"];
  const tuned = cli(...base, "--state-in", path);
  const plain = cli(...base);
  assert.equal(tuned.code, 0, tuned.err);
  assert.notEqual(tuned.out, plain.out);
  const notTuning = cli(...base, "--state-in", p);
  assert.equal(notTuning.code, 1);
  assert.match(notTuning.err, /no blocks\.i\.att\.time_state tensors: not a state-tuning file/);
});


test("a state held by a backend (a GPU's StateDevice): stale until sync(), cloned on the device, never serialized stale", async () => {
  const s = new State("7", [{ att_kv: Float32Array.of(1, 2), ffn_x_prev: Float32Array.of(3) }]);
  assert.equal(s.stale, false);
  const device = new Map<Float32Array, Float32Array>(); // array -> the "GPU's" newer values
  const calls: string[] = [];
  const fake: StateDevice = {
    async sync(arrays) { calls.push("sync"); for (const a of arrays) { const v = device.get(a); if (v) a.set(v); } },
    copy(from, to) { calls.push("copy"); from.forEach((a, i) => { const v = device.get(a); if (v) device.set(to[i], v.slice()); }); },
  };
  device.set(s.layers[0].att_kv, Float32Array.of(10, 20));
  s.heldBy(fake);
  assert.equal(s.stale, true);
  assert.throws(() => s.serialize(), /state: its values are still on the GPU: await state\.sync\(\) before serializing it/);
  const c = s.clone();
  assert.equal(c.stale, true, "a clone of a stale state is stale too, its values copied on the device");
  assert.deepEqual(calls, ["copy"]);
  assert.equal(await s.sync(), s);
  assert.equal(s.stale, false);
  assert.deepEqual([...s.layers[0].att_kv], [10, 20]);
  await c.sync();
  assert.deepEqual([...c.layers[0].att_kv], [10, 20], "the clone read its own device copy");
  assert.deepEqual([...State.deserialize(s.serialize()).layers[0].att_kv], [10, 20]);
});
