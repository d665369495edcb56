import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { MemorySource } from "../src/core/bytes.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { pthChunks } from "../src/core/formats/pth-writer.js";
import { fmaf, quantize } from "../src/core/formats/quantize.js";
import { readRwkvCpp } from "../src/core/formats/rwkvcpp.js";
import { type RwkvCppDType, rwkvCppChunks, rwkvCppModelFromCheckpoint, rwkvCppModelFromFile } from "../src/core/formats/rwkvcpp-writer.js";
import { detectVersion } from "../src/core/model/detect.js";
import { f16ToF32, f32ToBf16, f32ToF16 } from "../src/core/tensor.js";
import { FileSource } from "../src/node/file-source.js";
import { loadModel } from "../src/node/load.js";
import { compare, readJson, sharedPath, bitsEqual, concat } from "./shared.js";
import { runCaptured as run } from "./run-cli.js";

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");
const TMP = mkdtempSync(join(tmpdir(), "rwkv-convert-test-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

function differingBytes(a: Uint8Array, b: Uint8Array): number {
  let n = Math.abs(a.length - b.length);
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) n++;
  return n;
}

function withFile<T>(path: string, fn: (c: Checkpoint) => T): T {
  const src = new FileSource(path);
  try { return fn(openCheckpoint(src)); } finally { src.close(); }
}

// ---------------------------------------------------------------- rwkv.cpp byte identity

/** [model, shared file suffix, dtype]: every FP32 -> X file the shared set has. */
const PAIRS: Array<[string, string, RwkvCppDType]> = [
  ["5v2-730K", "FP32-to-Q4_0", "q4_0"], ["5v2-730K", "FP32-to-Q4_1", "q4_1"], ["5v2-730K", "FP32-to-Q8_0", "q8_0"],
  ...["4v0-660K", "5v1-730K", "5v2-730K", "6v0-1m", "7v0-834K"].flatMap((m): Array<[string, string, RwkvCppDType]> =>
    [[m, "Q5_0", "q5_0"], [m, "Q5_1", "q5_1"], [m, "FP16", "f16"]]),
];
/**
 * The 6v0-1m files come from another rwkv.cpp build (shared/README: @edea0c2) whose compiler
 * contracted ggml's `x*id + 16.5f` into a fused multiply-add: its Q5_0 codes are reproduced
 * exactly with FMA and differ from the reference (two-rounding) semantics in 125 bytes, all of
 * them codes of values that land exactly on a rounding boundary (see the diagnostic below).
 */
const FMA_BUILD = new Set(["6v0-1m Q5_0"]);
const FMA_REFERENCE_DIFF_BYTES = 125;

for (const [model, suffix, dtype] of PAIRS) {
  test(`rwkv.cpp ${model}: FP32 -> ${dtype} is byte-identical to tiny-rwkv-${model}-${suffix}.bin`, (t) => {
    const src = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${model}-FP32.bin`);
    const want = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${model}-${suffix}.bin`);
    if (!src || !want) return;
    const input = new MemorySource(src, readFileSync(src));
    const expected = new Uint8Array(readFileSync(want));
    const fma = FMA_BUILD.has(`${model} ${suffix}`);
    const got = concat(rwkvCppChunks(rwkvCppModelFromFile(input), dtype, { fusedMultiplyAdd: fma }));
    assert.equal(got.length, expected.length, "size");
    assert.equal(differingBytes(got, expected), 0, `${differingBytes(got, expected)} bytes differ`);
    if (fma) {
      const reference = concat(rwkvCppChunks(rwkvCppModelFromFile(input), dtype));
      assert.equal(differingBytes(reference, expected), FMA_REFERENCE_DIFF_BYTES, "the reference (unfused) rounding differs exactly on the boundary codes");
      t.diagnostic(`matches with fused multiply-add; the reference rounding differs in ${FMA_REFERENCE_DIFF_BYTES} bytes`);
    }
  });
}

test("quantizers: fmaf rounds once (a*b + c exact, then to float), unlike float multiply then add", () => {
  // 0.02490234375 * fround(1/d) lands just beside -8.5; the product's rounding decides the code.
  const id = Math.fround(-341.3333435058594);
  const fused = fmaf(0.02490234375, id, 16.5), unfused = Math.fround(Math.fround(0.02490234375 * id) + 16.5);
  assert.ok(fused < unfused, `${fused} < ${unfused}`);
  assert.equal(Math.trunc(fused), 7);
  assert.equal(Math.trunc(unfused), 8);
  // Random operands agree with an exact BigInt-free check: |fused - exact| <= half an ulp.
  for (let i = 0; i < 1000; i++) {
    const a = Math.fround(Math.random() * 2 - 1), b = Math.fround(Math.random() * 100), c = Math.fround(Math.random() * 20);
    const r = fmaf(a, b, c), exact = a * b + c; // a*b exact in double; + c within 1 double ulp
    const ulp = Math.abs(Math.fround(r * (1 + 2 ** -23)) - r) || 2 ** -149;
    assert.ok(Math.abs(r - exact) <= ulp / 2 + Math.abs(exact) * 2 ** -52, `${a}*${b}+${c}`);
  }
});

test("quantizers: Q8_0 rounds half away from zero, Q4_0 keeps the signed extreme exactly, all-zero blocks stay zero", () => {
  const x = new Float32Array(32);
  x[0] = 127; x[1] = 2.5; x[2] = -2.5; x[3] = 0.5; x[4] = -0.5;
  const q8 = quantize("q8_0", x);
  assert.equal(f16ToF32(q8[0] | (q8[1] << 8)), 1);
  assert.deepEqual([...new Int8Array(q8.buffer, 2, 5)], [127, 3, -3, 1, -1]);
  const q4 = quantize("q4_0", Float32Array.from({ length: 32 }, (_, i) => (i === 7 ? -4 : i / 32)));
  assert.equal(f16ToF32(q4[0] | (q4[1] << 8)), 0.5); // d = max / -8 with max = -4
  assert.equal(q4[2 + 7] & 0xf, 0); // the extreme maps to code 0 -> (0 - 8) * d = -4
  assert.ok(quantize("q5_1", new Float32Array(64)).every((b) => b === 0));
});

test("f16/bf16 rounding: round to nearest even at the halfway points, subnormals and overflow", () => {
  const cases: Array<[number, number]> = [[1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [65520, 0x7c00], [65519, 0x7bff], [2 ** -25, 0], [3 * 2 ** -26, 1], [-0, 0x8000]];
  for (const [v, h] of cases) assert.equal(f32ToF16(v), h, String(v));
  assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80);
  assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82);
});

test("rwkv.cpp writer: an FP32 file read as an official checkpoint and written back is byte-identical (v6, v7) or within 1 ulp (v4, v5 decays)", (t) => {
  for (const m of ["4v0-660K", "5v1-730K", "5v2-730K", "6v0-1m", "7v0-834K"]) {
    const path = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${m}-FP32.bin`);
    if (!path) return;
    const bytes = new Uint8Array(readFileSync(path));
    const src = new MemorySource(path, bytes);
    const ckpt = readRwkvCpp(src);
    const model = rwkvCppModelFromCheckpoint(ckpt, detectVersion(ckpt));
    const got = concat(rwkvCppChunks({ ...model, fileVersion: Number(ckpt.metadata.file_version) }, "f32"));
    assert.equal(got.length, bytes.length, m);
    const direct = rwkvCppModelFromFile(src).records;
    model.records.forEach((r, i) => {
      assert.equal(r.name, direct[i].name, `${m}: record order`);
      assert.deepEqual(r.ne, direct[i].ne, `${m} ${r.name}`);
      const a = r.values(), b = direct[i].values();
      if (/^[67]/.test(m) || !/time_(decay|first)$/.test(r.name)) assert.ok(bitsEqual(a, b), `${m} ${r.name}`);
      else a.forEach((x, j) => assert.ok(Math.abs(x - b[j]) <= Math.abs(b[j]) * 2 ** -23, `${m} ${r.name}[${j}]`));
    });
    if (/^[67]/.test(m)) assert.equal(differingBytes(got, bytes), 0, m);
  }
});

// ---------------------------------------------------------------- official checkpoints -> rwkv.cpp

interface Golden { tokens: number[]; rnn: { logits: number[][] } }

for (const ver of ["v4", "v5", "v6", "v7"]) {
  test(`golden ${ver} safetensors -> rwkv.cpp .bin (FP32 and FP16): tensors round-trip; logits match the golden ones`, async (t) => {
    const src = sharedPath(t, "golden", ver, "model.safetensors"), gj = sharedPath(t, "golden", ver, "golden.json");
    if (!src || !gj) return;
    const g = readJson<Golden>(gj);
    for (const dtype of ["f32", "f16"]) {
      const out = join(TMP, `golden-${ver}-${dtype}.bin`);
      const r = await run(["convert", src, out, "--dtype", dtype]);
      assert.equal(r.code, 0, r.err);
      if (dtype === "f32") {
        // Every tensor comes back; only the re-parameterised decays move (f32 rounding of
        // -exp(w) / exp(-exp(w)), which log/exp cannot undo exactly).
        withFile(src, (a) => withFile(out, (b) => {
          assert.deepEqual([...b.tensors.keys()].sort(), [...a.tensors.keys()].sort());
          for (const [name, o] of b.tensors) {
            const e = a.tensors.get(name)!, x = e.toFloat32(), y = o.toFloat32();
            assert.deepEqual(o.shape, e.shape, name);
            if (/time_decay$/.test(name) && (ver === "v4" || ver === "v5")) x.forEach((v, i) => assert.ok(Math.abs(v - y[i]) <= 1e-4 * Math.abs(v) + 1e-6, `${name}[${i}] ${v} vs ${y[i]}`));
            else assert.ok(bitsEqual(x, y), name);
          }
        }));
      }
      // rwkv.cpp computes v5's GroupNorm with eps 1e-5 and the model follows it for .bin files
      // (model/v5.ts), while the golden (pip) logits use 64e-5: v5 logits are not comparable.
      if (ver === "v5") continue;
      const model = await loadModel(out);
      const logits = await model.forward(g.tokens, model.initState(), { allLogits: true });
      const c = compare(logits, g.rnn.logits.flat(), dtype === "f32" ? 1e-4 : 0.05, dtype === "f32" ? 1e-4 : 0.02);
      assert.ok(c.ok, `${dtype}: max |diff| ${c.maxAbs}`);
      t.diagnostic(`${dtype}: max |logit diff| vs golden ${c.maxAbs.toExponential(2)}`);
    }
  });
}

// ---------------------------------------------------------------- pth / safetensors round trips

for (const ver of ["v4", "v5", "v6", "v7"]) {
  test(`golden ${ver}: model.pth -> our .pth and .safetensors -> identical tensors and identical logits`, async (t) => {
    const src = sharedPath(t, "golden", ver, "model.pth");
    if (!src) return;
    const tokens = readJson<Golden>(sharedPath(t, "golden", ver, "golden.json")!).tokens;
    const ref = await (await loadModel(src)).forward(tokens, (await loadModel(src)).initState(), { allLogits: true });
    for (const ext of ["pth", "safetensors"]) {
      const out = join(TMP, `rt-${ver}.${ext}`);
      const r = await run(["convert", src, out]);
      assert.equal(r.code, 0, r.err);
      withFile(src, (a) => withFile(out, (b) => {
        assert.equal(b.format, ext);
        assert.deepEqual([...b.tensors.keys()], [...a.tensors.keys()]);
        for (const [name, e] of a.tensors) {
          const o = b.tensors.get(name)!;
          assert.deepEqual(o.shape, e.shape, name);
          assert.equal(o.dtype, "f32", name);
          assert.ok(bitsEqual(o.toFloat32(), e.toFloat32()), `${name} differs`);
        }
      }));
      const m = await loadModel(out);
      assert.ok(bitsEqual(await m.forward(tokens, m.initState(), { allLogits: true }), ref), `${ext}: logits differ`);
    }
  });
}

test("bf16 and f16 outputs hold the source rounded to nearest even; bf16 golden .pth round-trips bit-exactly", async (t) => {
  const src = sharedPath(t, "golden", "v7", "model.safetensors"), bf = sharedPath(t, "golden", "v7", "model_bf16.pth");
  if (!src || !bf) return;
  for (const [dtype, round] of [["f16", (x: number) => f16ToF32(f32ToF16(x))], ["bf16", (x: number) => { const b = f32ToBf16(x); return new Float32Array(new Uint32Array([b << 16]).buffer)[0]; }]] as const) {
    const out = join(TMP, `v7-${dtype}.pth`);
    assert.equal((await run(["convert", src, out, "--dtype", dtype])).code, 0);
    withFile(src, (a) => withFile(out, (b) => {
      for (const [name, e] of a.tensors) {
        const o = b.tensors.get(name)!;
        assert.equal(o.dtype, dtype);
        assert.ok(bitsEqual(o.toFloat32(), e.toFloat32().map(round)), name);
      }
    }));
  }
  const out = join(TMP, "bf16-again.safetensors");
  assert.equal((await run(["convert", bf, out, "--dtype", "bf16"])).code, 0);
  withFile(bf, (a) => withFile(out, (b) => {
    for (const [name, e] of a.tensors) assert.ok(bitsEqual(b.tensors.get(name)!.toFloat32(), e.toFloat32()), name);
  }));
});

test("pth writer: torch's layout (64-byte aligned data, data.pkl first, version last), ZIP64 when forced, CRC-32s valid", (t) => {
  const src = sharedPath(t, "golden", "v6", "model.pth");
  if (!src) return;
  withFile(src, (ckpt) => {
    const tensors = [...ckpt.tensors.values()].map((e) => ({ name: e.name, shape: e.shape, dtype: "f32" as const, data: () => new Uint8Array(e.toFloat32().buffer) }));
    for (const forceZip64 of [false, true]) {
      const bytes = concat(pthChunks(tensors, { archiveName: "model", forceZip64 }));
      const back = openCheckpoint(new MemorySource("w.pth", bytes));
      assert.equal(back.metadata["pth.archive"], "model");
      assert.equal(back.metadata["pth.version"], "3");
      assert.equal(back.metadata["pth.byteorder"], "little");
      for (const [name, e] of ckpt.tensors) assert.ok(bitsEqual(back.tensors.get(name)!.toFloat32(), e.toFloat32()), `${name} (zip64 ${forceZip64})`);
      // Every local header's data starts 64-byte aligned, and its stored CRC matches the data.
      const dv = new DataView(bytes.buffer);
      let pos = 0, entries = 0;
      while (dv.getUint32(pos, true) === 0x04034b50) {
        const nameLen = dv.getUint16(pos + 26, true), extraLen = dv.getUint16(pos + 28, true);
        let size = dv.getUint32(pos + 18, true);
        if (size === 0xffffffff) size = Number(dv.getBigUint64(pos + 30 + nameLen + 4, true));
        const data = pos + 30 + nameLen + extraLen;
        assert.equal(data % 64, 0, `entry ${entries} data offset ${data}`);
        pos = data + size;
        entries++;
      }
      assert.equal(entries, ckpt.tensors.size + 3);
    }
  });
});

// ---------------------------------------------------------------- errors

test("unsupported conversions are usage errors (exit 2) with a clear message; nothing is written", async (t) => {
  const src = sharedPath(t, "golden", "v7", "model.safetensors"), v5 = sharedPath(t, "golden", "v5", "model.safetensors");
  if (!src || !v5) return;
  const cases: Array<[string[], RegExp]> = [
    [[src, join(TMP, "q.pth"), "--dtype", "q4_0"], /q4_0 cannot be written as pth/],
    [[src, join(TMP, "q.safetensors"), "--dtype", "q8_0"], /q8_0 cannot be written as safetensors/],
    [[src, join(TMP, "b.bin"), "--dtype", "bf16"], /as rwkv\.cpp: its files have no bf16 type/],
    [[src, join(TMP, "x.gguf"), "--dtype", "q3_k"], /--dtype must be one of/],
    [[src, join(TMP, "x.onnx")], /cannot tell the output format/],
    [[src, join(TMP, "x.out"), "--format", "onnx"], /--format must be one of/],
    [[src, src], /overwrite the input/],
  ];
  for (const [args, re] of cases) {
    const r = await run(["convert", ...args]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
    assert.match(r.err, re);
  }
  const r = await run(["convert", v5, join(TMP, "v5.gguf")]);
  assert.equal(r.code, 1);
  assert.match(r.err, /llama\.cpp has no GGUF architecture for RWKV-5\.2/);
  for (const f of ["q.pth", "q.safetensors", "b.bin", "x.gguf", "v5.gguf"]) assert.ok(!existsSync(join(TMP, f)), f);
  assert.deepEqual(readdirSync(TMP).filter((f) => f.endsWith(".tmp")), []);
});

test("an output path that cannot be written is a clear error (exit 1), before any work", async (t) => {
  const src = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!src) return;
  const file = join(TMP, "plain-file");
  writeFileSync(file, "x");
  const dir = join(TMP, "a-directory.pth");
  mkdirSync(dir, { recursive: true });
  const cases: Array<[string, RegExp]> = [
    [join(TMP, "no", "such", "dir", "out.pth"), /directory .* does not exist/],
    [join(file, "out.pth"), /is not a directory/],
    [dir, /is a directory/],
  ];
  for (const [out, re] of cases) {
    const r = await run(["convert", src, out]);
    assert.equal(r.code, 1, `${out}: ${r.err}`);
    assert.match(r.err, re);
    assert.ok(r.err.includes(out), "the message names the path");
  }
});

// ---------------------------------------------------------------- interruption

/** A plain safetensors file of `count` f32 tensors of `elements` each (content irrelevant). */
function bigSafetensors(path: string, count: number, elements: number): void {
  const header: Record<string, unknown> = {};
  for (let i = 0; i < count; i++) header[`t${i}`] = { dtype: "F32", shape: [elements], data_offsets: [i * elements * 4, (i + 1) * elements * 4] };
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + json.length) % 8)) % 8);
  const fd = openSync(path, "w");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeSync(fd, len);
  writeSync(fd, json);
  const block = new Float32Array(elements).map((_, i) => Math.sin(i) * 0.1);
  for (let i = 0; i < count; i++) writeSync(fd, new Uint8Array(block.buffer));
  closeSync(fd);
}

const BIG_TENSORS = 24;
const BIG_ELEMENTS = 2 ** 21;
const POLL_MS = 2;
const KILL_TIMEOUT_MS = 20_000;

/** Spawns the CLI conversion, waits until its temporary file exists, sends `signal`, resolves the exit. */
async function interrupt(src: string, out: string, signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; sawTemp: boolean }> {
  const child = spawn(process.execPath, [BIN, "convert", src, out, "--dtype", "f16"], { stdio: ["ignore", "ignore", "pipe"] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on("exit", (code, sig) => res({ code, signal: sig })));
  const dir = join(out, "..");
  const started = Date.now();
  let sawTemp = false;
  let done = false;
  void exited.then(() => { done = true; });
  while (!done && Date.now() - started < KILL_TIMEOUT_MS) {
    if (readdirSync(dir).some((f) => f.endsWith(".tmp"))) { sawTemp = true; break; }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  child.kill(signal);
  return { ...(await exited), sawTemp };
}

test("interrupted conversions: SIGTERM/SIGINT remove the temporary file and leave no output; SIGKILL never leaves a partial target", async () => {
  const dir = join(TMP, "interrupt");
  mkdirSync(dir, { recursive: true });
  const src = join(dir, "big.safetensors");
  bigSafetensors(src, BIG_TENSORS, BIG_ELEMENTS);
  for (const [signal, exitCode] of [["SIGTERM", 143], ["SIGINT", 130]] as const) {
    const out = join(dir, `out-${signal}.pth`);
    const r = await interrupt(src, out, signal);
    assert.ok(r.sawTemp, "the conversion was caught while writing");
    assert.equal(r.code, exitCode, `${signal}: exit ${r.code} ${r.signal}`);
    assert.ok(!existsSync(out), `${signal}: no output`);
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith(".tmp")), [], `${signal}: temporary file removed`);
  }
  // SIGKILL cannot be handled: the temporary file may stay, but an existing target is untouched.
  const out = join(dir, "existing.pth");
  writeFileSync(out, "old intact content");
  const r = await interrupt(src, out, "SIGKILL");
  assert.ok(r.sawTemp);
  assert.equal(r.signal, "SIGKILL");
  assert.equal(readFileSync(out, "utf8"), "old intact content");
  for (const f of readdirSync(dir).filter((x) => x.endsWith(".tmp"))) rmSync(join(dir, f));
  // And an uninterrupted run replaces it atomically.
  const ok = await run(["convert", src, out, "--dtype", "bf16"]);
  assert.equal(ok.code, 0, ok.err);
  withFile(out, (c) => assert.equal(c.tensors.size, BIG_TENSORS));
});
