import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { selectBackend } from "../src/core/backend/registry.js";
import { MemorySource } from "../src/core/bytes.js";
import { FormatError } from "../src/core/errors.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { isGgufCheckpoint, readGguf } from "../src/core/formats/gguf.js";
import { type GgufDType, ggufFromCheckpoint } from "../src/core/formats/gguf-rwkv.js";
import { byteVocabMetadata, escapeRwkvToken, ggufVocab, unescapeRwkvToken, worldVocabMetadata } from "../src/core/formats/gguf-vocab.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { readRwkvCppRecords } from "../src/core/formats/rwkvcpp.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel, type Model } from "../src/core/model/model.js";
import type { TensorEntry } from "../src/core/tensor.js";
import { parseWorldVocab, WORLD_VOCAB_SIZE, WorldTokenizer } from "../src/core/tokenizer/world.js";
import { runCli } from "../src/node/cli.js";
import { FileSource } from "../src/node/file-source.js";
import { compare, readJson, sharedPath, bitsEqual, concat } from "./shared.js";

const TMP = mkdtempSync(join(tmpdir(), "rwkv-gguf-test-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

function open(path: string): Checkpoint {
  return openCheckpoint(new MemorySource(path, new Uint8Array(readFileSync(path))));
}

/** The GGUF bytes of a checkpoint (byte-level vocabulary unless given). */
function toGguf(ckpt: Checkpoint, dtype: GgufDType, tokenizer = byteVocabMetadata(ckpt.tensors.get("emb.weight")!.shape[0])): Uint8Array {
  return concat(ggufFromCheckpoint(ckpt, detectVersion(ckpt), { dtype, tokenizer }).chunks);
}

function model(ckpt: Checkpoint): Model {
  const v = detectVersion(ckpt);
  return buildModel(ckpt, architectureFor(v, ckpt.source), v, selectBackend());
}

interface Golden { tokens: number[]; rnn: { logits: number[][] } }

// ---------------------------------------------------------------- golden v6 / v7

for (const ver of ["v6", "v7"]) {
  test(`golden ${ver} -> GGUF F32 -> official tensors bit-identical and logits within 1e-4 of the golden ones`, async (t) => {
    const path = sharedPath(t, "golden", ver, "model.safetensors"), gj = sharedPath(t, "golden", ver, "golden.json");
    if (!path || !gj) return;
    const src = open(path);
    const back = openCheckpoint(new MemorySource(`${ver}.gguf`, toGguf(src, "f32")));
    assert.equal(back.format, "gguf");
    assert.ok(isGgufCheckpoint(back));
    // llama.cpp's layout drops only v7 layer 0's unused v0/v1/v2.
    const expected = [...src.tensors.keys()].filter((n) => !/^blocks\.0\.att\.v[012]$/.test(n)).sort();
    assert.deepEqual([...back.tensors.keys()].sort(), expected);
    for (const name of expected) {
      const before: TensorEntry = src.tensors.get(name)!;
      const after: TensorEntry = back.tensors.get(name)!;
      assert.deepEqual(after.shape, before.shape, name);
      assert.ok(bitsEqual(after.toFloat32(), before.toFloat32()), `${name} differs`);
    }
    const g = readJson<Golden>(gj);
    const m = model(back);
    const c = compare(await m.forward(g.tokens, m.initState(), { allLogits: true }), g.rnn.logits.flat(), 1e-4, 1e-4);
    assert.ok(c.ok, `max |diff| ${c.maxAbs}`);
    t.diagnostic(`F32 GGUF logits vs golden: max |diff| ${c.maxAbs.toExponential(2)}`);
  });

  test(`golden ${ver} -> GGUF Q8_0, F16, BF16: types follow llama.cpp's rules, models load and stay close`, async (t) => {
    const path = sharedPath(t, "golden", ver, "model.safetensors"), gj = sharedPath(t, "golden", ver, "golden.json");
    if (!path || !gj) return;
    const src = open(path);
    const g = readJson<Golden>(gj);
    const want = g.rnn.logits.flat();
    const scale = want.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    // Relative to the largest logit: random golden weights amplify quantization noise.
    // (4- and 5-bit types are checked on the trained rwkv.cpp models below, where noise is not amplified.)
    const bounds: Record<string, number> = { q8_0: 0.05, f16: 0.005, bf16: 0.02 };
    for (const [dtype, bound] of Object.entries(bounds)) {
      const bytes = toGguf(src, dtype as GgufDType);
      const file = readGguf(new MemorySource("q.gguf", bytes));
      const type = (n: string) => file.tensors.find((x) => x.name === n)!.type.name;
      const big = dtype.toUpperCase();
      assert.equal(type("blk.1.time_mix_key.weight"), big, dtype);
      assert.equal(type("blk.1.channel_mix_value.weight"), big, dtype);
      assert.equal(type("token_embd.weight"), big, dtype);
      assert.equal(type("output.weight"), dtype.startsWith("q") ? "Q8_0" : big, dtype);
      for (const n of ["blk.1.time_mix_lerp_fused.weight", "blk.1.time_mix_w1.weight", "blk.1.time_mix_w2.weight", "blk.1.attn_norm.weight"]) assert.equal(type(n), "F32", `${dtype} ${n}`);
      const m = model(openCheckpoint(new MemorySource("q.gguf", bytes)));
      const c = compare(await m.forward(g.tokens, m.initState(), { allLogits: true }), want, bound * scale, 0);
      assert.ok(c.ok, `${dtype}: max |diff| ${c.maxAbs} (largest logit ${scale})`);
      t.diagnostic(`${dtype}: ${bytes.length} bytes, max |logit diff| vs golden ${c.maxAbs.toFixed(4)} (largest logit ${scale.toFixed(2)})`);
    }
  });
}

test("v6 GGUF with rescale_every_n_layers: the divided att.output / ffn.value weights are scaled back", (t) => {
  const path = sharedPath(t, "golden", "v6", "model.safetensors");
  if (!path) return;
  const src = open(path);
  const EVERY = 2;
  // What llama.cpp's converter does for rescale_every = 2: divide layer i's weights by 2^floor(i/2).
  const tensors = new Map<string, TensorEntry>([...src.tensors].map(([n, e]) => {
    const m = /^blocks\.(\d+)\.(att\.output|ffn\.value)\.weight$/.exec(n);
    if (!m) return [n, e];
    const f = 2 ** Math.floor(Number(m[1]) / EVERY);
    return [n, { ...e, raw: undefined, rawInto: undefined, toFloat32: () => e.toFloat32().map((x) => x / f) }]; // new values: no stored bytes
  }));
  const bytes = toGguf({ ...src, tensors }, "f32");
  // Patch the u32 value of v6's rescale key (written as 0) to EVERY.
  const key = new TextEncoder().encode("rwkv6.rescale_every_n_layers");
  const at = findBytes(bytes, key) + key.length + 4;
  new DataView(bytes.buffer).setUint32(at, EVERY, true);
  const back = openCheckpoint(new MemorySource("r.gguf", bytes));
  assert.equal(back.metadata["rwkv6.rescale_every_n_layers"], String(EVERY));
  for (const [n, e] of src.tensors) assert.ok(bitsEqual(back.tensors.get(n)!.toFloat32(), e.toFloat32()), n);
});

// ---------------------------------------------------------------- rwkv.cpp models (trained, byte vocabulary)

const f32 = (path: string) => { const b = readFileSync(path); return new Float32Array(b.buffer, b.byteOffset, b.length / 4); };

for (const m of ["6v0-1m", "7v0-834K"]) {
  test(`rwkv.cpp ${m} FP32 -> GGUF: same tensors, rwkv.cpp's expected logits, byte vocabulary`, async (t) => {
    const path = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${m}-FP32.bin`), exp = sharedPath(t, "rwkv.cpp", `expected-logits-${m}.bin`);
    if (!path || !exp) return;
    const src = open(path);
    const back = openCheckpoint(new MemorySource("m.gguf", toGguf(src, "f32")));
    for (const [n, e] of back.tensors) assert.ok(bitsEqual(e.toFloat32(), src.tensors.get(n)!.toFloat32()), n);
    const logits = await model(back).forward([34, 105, 110], model(back).initState());
    const c = compare(logits, f32(exp), 1e-4, 0);
    assert.ok(c.ok, `max |diff| ${c.maxAbs}`);
    const vocab = ggufVocab(back)!;
    assert.equal(vocab.model, "rwkv");
    assert.equal(vocab.tokens.length, 256);
    vocab.tokens.forEach((b, i) => assert.deepEqual([...b!], [i]));
  });
}

test("rwkv.cpp 6v0/7v0 -> GGUF in every type: loads, and logits stay close to the FP32 model's", async (t) => {
  // Bounds relative to the largest logit (measured: q8_0 <= 0.8%, q5 <= 6%, q4 <= 8.4% on 6v0, whose
  // logits reach 16; these weights are bf16-exact, so f16/bf16 change nothing).
  const bounds: Record<string, number> = { f16: 0.001, bf16: 0.001, q8_0: 0.02, q5_1: 0.1, q5_0: 0.1, q4_1: 0.15, q4_0: 0.15 };
  const tokens = [...new TextEncoder().encode("\"in the beginning was")];
  for (const m of ["6v0-1m", "7v0-834K"]) {
    const path = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${m}-FP32.bin`);
    if (!path) return;
    const src = open(path);
    const ref = await model(src).forward(tokens, model(src).initState(), { allLogits: true });
    const scale = ref.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
    for (const [dtype, bound] of Object.entries(bounds)) {
      const back = openCheckpoint(new MemorySource("q.gguf", toGguf(src, dtype as GgufDType)));
      const mm = model(back);
      const c = compare(await mm.forward(tokens, mm.initState(), { allLogits: true }), ref, bound * scale, 0);
      assert.ok(c.ok, `${m} ${dtype}: max |diff| ${c.maxAbs} (largest logit ${scale})`);
      t.diagnostic(`${m} ${dtype}: max |logit diff| vs FP32 ${c.maxAbs.toFixed(4)} (largest logit ${scale.toFixed(2)})`);
    }
  }
});

test("GGUF quantized tensors have ggml's block layout: rwkv.cpp's Q5_0/Q5_1 records and GGUF tensors of the same matrix are the same bytes", (t) => {
  for (const [m, suffix, dtype] of [["7v0-834K", "Q5_0", "q5_0"], ["7v0-834K", "Q5_1", "q5_1"], ["6v0-1m", "Q5_1", "q5_1"]] as const) {
    const path = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${m}-FP32.bin`), qpath = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${m}-${suffix}.bin`);
    if (!path || !qpath) return;
    const bytes = toGguf(open(path), dtype);
    const gsrc = new MemorySource("q.gguf", bytes);
    const file = readGguf(gsrc);
    const qsrc = new MemorySource(qpath, new Uint8Array(readFileSync(qpath)));
    const records = new Map(readRwkvCppRecords(qsrc).records.map((r) => [r.name, r]));
    for (const [gg, official] of [["blk.3.time_mix_key.weight", "blocks.3.att.key.weight"], ["blk.5.channel_mix_value.weight", "blocks.5.ffn.value.weight"]]) {
      const a = file.tensors.find((x) => x.name === gg)!, r = records.get(official)!;
      assert.equal(a.type.name, suffix);
      assert.deepEqual(gsrc.read(a.dataOffset, a.byteLength), qsrc.read(r.dataOffset, r.byteLength), `${m} ${gg}`);
    }
  }
});

// ---------------------------------------------------------------- tokenizer

test("World tokenizer stored in a GGUF: llama.cpp's escaping round-trips every token and encodes like the vocab file", (t) => {
  const vocabPath = sharedPath(t, "tokenizers", "rwkv_vocab_v20230424.txt"), gpath = sharedPath(t, "golden", "v7", "model.safetensors");
  const cases = sharedPath(t, "golden", "tokenizer", "world_tokenizer_golden.json");
  if (!vocabPath || !gpath || !cases) return;
  const vocab = parseWorldVocab(readFileSync(vocabPath, "utf8"));
  for (const b of vocab) if (b) assert.deepEqual(unescapeRwkvToken(escapeRwkvToken(b)), b);
  assert.deepEqual(unescapeRwkvToken("\\xC3\\xbf\\q\\\\"), Uint8Array.from([0xc3, 0xbf, 0x71, 0x5c]));
  assert.throws(() => unescapeRwkvToken("ab\\", () => "m.gguf: token 7"), /^FormatError: m\.gguf: token 7: dangling backslash in "ab\\\\"$/);
  assert.throws(() => unescapeRwkvToken("\\x4g", "t"), /^FormatError: t: bad \\x escape in "\\\\x4g"$/);
  assert.equal(escapeRwkvToken(new TextEncoder().encode("a'b\\\n\x00\xff")), "a'b\\\\\\n\\x00\\xc3\\xbf");
  assert.equal(escapeRwkvToken(Uint8Array.from([0x27, 0x41])), "'A"); // Python switches to double quotes
  // A 65536-row v7 (the golden v7 with zero-padded embedding and head) carrying the World vocab.
  const src = open(gpath);
  const C = src.tensors.get("emb.weight")!.shape[1];
  const wide = (name: string): TensorEntry => ({ name, dtype: "f32", shape: [WORLD_VOCAB_SIZE, C], toFloat32: () => new Float32Array(WORLD_VOCAB_SIZE * C) });
  const tensors = new Map(src.tensors);
  tensors.set("emb.weight", wide("emb.weight"));
  tensors.set("head.weight", wide("head.weight"));
  const written = worldVocabMetadata(vocab, WORLD_VOCAB_SIZE);
  const bytes = toGguf({ ...src, tensors }, "f32", written);
  const back = openCheckpoint(new MemorySource("world.gguf", bytes));
  assert.equal(back.metadata["tokenizer.ggml.model"], "rwkv");
  // Described without decoding (the strings are decoded on first use), then decoded as written.
  assert.equal(back.metadata["tokenizer.ggml.tokens"], `[${WORLD_VOCAB_SIZE} x string]`);
  assert.ok(isGgufCheckpoint(back));
  assert.deepEqual(back.gguf.metadata.get("tokenizer.ggml.tokens")!.value, written.get("tokenizer.ggml.tokens")!.value);
  assert.equal(back.metadata["tokenizer.ggml.eot_token_id"], "261");
  const fromGguf = new WorldTokenizer(ggufVocab(back)!.tokens);
  const fromFile = new WorldTokenizer(vocab);
  const golden = readJson<{ cases: Array<{ text: string; ids: number[] }> }>(cases);
  for (const c of golden.cases) assert.deepEqual(fromGguf.encode(c.text), c.ids, c.text);
  assert.deepEqual(fromGguf.encode("Hello world\n\n"), fromFile.encode("Hello world\n\n"));
});

// ---------------------------------------------------------------- CLI

test("rwkv convert writes GGUF (also from GGUF, keeping its tokenizer) and rwkv info shows the GGUF metadata", async (t) => {
  const path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!path) return;
  const out = join(TMP, "m.gguf"), again = join(TMP, "m-q8.gguf"), bin = join(TMP, "m.bin");
  let log = "";
  const io = { stdout: (s: string) => { log += s; }, stderr: (s: string) => { log += s; } };
  assert.equal(await runCli(["convert", path, out], io), 0, log);
  assert.equal(await runCli(["convert", out, again, "--dtype", "q8_0"], io), 0, log);
  assert.equal(await runCli(["convert", again, bin], io), 0, log);
  log = "";
  assert.equal(await runCli(["info", again], io), 0, log);
  for (const want of [/format\s+gguf/, /version\s+RWKV-7/, /general\.architecture = rwkv7/, /general\.file_type = 7/, /tokenizer\.ggml\.tokens = \[256 x string\]/, /rwkv7\.attention\.layer_norm_epsilon = 0\.00001$/m]) {
    assert.match(log, want);
  }
  const src = new FileSource(again);
  try {
    const c = openCheckpoint(src);
    assert.equal(ggufVocab(c)!.tokens.length, 256);
    assert.equal(c.tensors.get("blocks.2.att.key.weight")!.dtype, "q8_0");
  } finally { src.close(); }
});

// ---------------------------------------------------------------- malformed files

function findBytes(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  outer: for (let i = from; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  throw new Error("not found");
}

test("malformed GGUF: every corruption is a FormatError naming the file and the problem", (t) => {
  const path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!path) return;
  const good = toGguf(open(path), "f32");
  const file = readGguf(new MemorySource("good.gguf", good));
  const enc = new TextEncoder();
  const tensorName = enc.encode("token_embd.weight");
  const infoAt = findBytes(good, tensorName, findBytes(good, enc.encode("tokenizer.ggml.token_type"))) + tensorName.length; // n_dims, ne[2], type, offset
  const tokensKey = enc.encode("tokenizer.ggml.tokens");
  const tokensArrayLen = findBytes(good, tokensKey) + tokensKey.length + 4 + 4;
  const patch = (edit: (dv: DataView, b: Uint8Array) => void): Uint8Array => { const b = good.slice(); edit(new DataView(b.buffer), b); return b; };
  const cases: Array<[string, Uint8Array, RegExp]> = [
    ["bad magic", patch((_, b) => { b[3] = 0x58; }), /unknown file format/],
    ["version 2", patch((dv) => dv.setUint32(4, 2, true)), /unsupported GGUF version 2/],
    ["version 4", patch((dv) => dv.setUint32(4, 4, true)), /unsupported GGUF version 4/],
    ["big-endian", patch((dv) => dv.setUint32(4, 3, false)), /big-endian/],
    ["absurd tensor count", patch((dv) => dv.setBigUint64(8, 1n << 40n, true)), /tensor count .* cannot fit/],
    ["absurd metadata count", patch((dv) => dv.setBigUint64(16, 1n << 40n, true)), /metadata count .* cannot fit/],
    ["count past 2^53", patch((dv) => dv.setBigUint64(8, 1n << 62n, true)), /tensor count is absurd/],
    ["absurd key length", patch((dv) => dv.setBigUint64(24, 1n << 50n, true)), /absurd length/],
    ["unknown value type", patch((dv) => dv.setUint32(24 + 8 + "general.architecture".length, 99, true)), /unknown GGUF value type 99/],
    ["absurd array length", patch((dv) => dv.setBigUint64(tokensArrayLen, 1n << 40n, true)), /array of \d+ string values cannot fit/],
    // The vocabulary's strings are decoded on first use, but every length is checked while indexing.
    ["absurd token length", patch((dv) => dv.setBigUint64(tokensArrayLen + 8, 1n << 40n, true)), /truncated: metadata tokenizer\.ggml\.tokens\[0\] at offset/],
    ["token length past 2^53", patch((dv) => dv.setBigUint64(tokensArrayLen + 8, 1n << 60n, true)), /length of metadata tokenizer\.ggml\.tokens\[0\] is absurd/],
    ["5 dimensions", patch((dv) => dv.setUint32(infoAt, 5, true)), /5 dimensions/],
    ["unknown tensor type", patch((dv) => dv.setUint32(infoAt + 4 + 16, 99, true)), /unknown ggml type 99/],
    ["unsupported tensor type", patch((dv) => dv.setUint32(infoAt + 4 + 16, 12, true)), /Q4_K \(12\) is not supported/],
    ["misaligned offset", patch((dv) => dv.setBigUint64(infoAt + 4 + 16 + 4, 4n, true)), /not a multiple of the alignment 32/],
    ["data past the end", patch((dv) => dv.setBigUint64(infoAt + 4 + 16 + 4, 1n << 40n, true)), /truncated: tensor token_embd\.weight data/],
    ["truncated in the header", good.slice(0, 20), /truncated/],
    ["truncated in the metadata", good.slice(0, 3000), /truncated/],
    ["truncated in the tensor infos", good.slice(0, infoAt + 10), /truncated/],
    ["truncated in the data", good.slice(0, good.length - 100), /truncated: tensor .* data/],
  ];
  assert.ok(file.tensors.length > 0);
  for (const [what, bytes, re] of cases) {
    let err: unknown;
    try { openCheckpoint(new MemorySource("bad.gguf", bytes)); } catch (e) { err = e; }
    assert.ok(err instanceof FormatError, `${what}: ${String(err)}`);
    assert.match(err.message, /^bad\.gguf: /, what);
    assert.match(err.message, re, what);
  }
  // And through the CLI: one line, exit 1.
  const badPath = join(TMP, "bad.gguf");
  writeFileSync(badPath, cases[4][1]);
  let errText = "";
  return runCli(["info", badPath], { stdout: () => undefined, stderr: (s) => { errText += s; } }).then((code) => {
    assert.equal(code, 1);
    assert.match(errText, /bad\.gguf: tensor count .* cannot fit/);
  });
});
