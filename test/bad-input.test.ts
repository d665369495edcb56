import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { MemorySource } from "../src/core/bytes.js";
import { FormatError } from "../src/core/errors.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { unpickle } from "../src/core/formats/pickle.js";
import { readRwkvCpp } from "../src/core/formats/rwkvcpp.js";
import { writeSafetensors } from "../src/core/formats/safetensors.js";
import { FileSource } from "../src/node/file-source.js";
import { f32Bytes, PickleWriter, statePickle, storedZip, type TensorSpec, torchZip } from "./pth-builder.js";
import { sharedPath } from "./shared.js";

const tmp = mkdtempSync(join(tmpdir(), "rwkv-bad-input-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Opens the bytes (as a real file in a temp dir) and reads every tensor. */
function openAll(name: string, bytes: Uint8Array): void {
  const path = join(tmp, name);
  writeFileSync(path, bytes);
  const src = new FileSource(path);
  try {
    for (const e of openCheckpoint(src).tensors.values()) e.toFloat32();
  } finally { src.close(); }
}

/** Asserts a FormatError whose message names the file and matches every pattern. */
function rejects(fn: () => unknown, file: string, ...patterns: RegExp[]): string {
  let err: unknown;
  try { fn(); } catch (e) { err = e; }
  assert.ok(err instanceof FormatError, `expected a FormatError, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
  assert.ok(err.message.includes(file), `message does not name ${file}: ${err.message}`);
  for (const p of patterns) assert.match(err.message, p);
  return err.message;
}

function rejectsFile(name: string, bytes: Uint8Array, ...patterns: RegExp[]): string {
  return rejects(() => openAll(name, bytes), name, ...patterns);
}

const cut = (b: Uint8Array, n: number) => b.slice(0, n);

// A small valid .pth and .bin to damage.
const VALUES = Array.from({ length: 64 }, (_, i) => Math.sin(i));
const spec = (over: Partial<TensorSpec> = {}): TensorSpec =>
  ({ name: "w", storageClass: "FloatStorage", key: "0", storageNumel: 64, offset: 0, size: [8, 8], stride: [8, 1], ...over });
const pth = (specs: TensorSpec[], storage = f32Bytes(VALUES)) => torchZip("archive", statePickle(specs), new Map([["0", storage]]));

function binFile(records: Array<{ name: string; type: number; ne: number[]; data: Uint8Array }>, header = [0x67676d66, 101, 256, 32, 1, 0]): Uint8Array {
  const parts: Uint8Array[] = [new Uint8Array(Uint32Array.from(header).buffer)];
  for (const r of records) {
    const key = new TextEncoder().encode(r.name);
    parts.push(new Uint8Array(Uint32Array.from([r.ne.length, key.length, r.type, ...r.ne]).buffer), key, r.data);
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
const goodBin = () => binFile([
  { name: "emb.weight", type: 0, ne: [32, 2], data: f32Bytes(VALUES) },
  { name: "blocks.0.att.time_decay", type: 0, ne: [32], data: f32Bytes(VALUES.slice(0, 32).map((x) => -1 - x * x)) },
]);

// ---------------------------------------------------------------- truncation

test("truncated .pth files (golden and hand-built) are reported as truncated, naming the file", (t) => {
  const golden = sharedPath(t, "golden", "v4", "model.pth");
  const whole = golden ? new Uint8Array(readFileSync(golden)) : pth([spec()]);
  for (const n of [3, 9, 100, 30_000, Math.floor(whole.length / 2), whole.length - 23, whole.length - 1]) {
    rejectsFile(`cut-${n}.pth`, cut(whole, n), /truncated/);
  }
  // Central directory intact but the storage entry shorter than the announced element count.
  rejectsFile("short-storage.pth", pth([spec()], f32Bytes(VALUES.slice(0, 40))), /storage archive\/data\/0 has 160 bytes but 64 f32 elements/);
  // EOCD pointing the central directory past the end of the file.
  const moved = pth([spec()]);
  new DataView(moved.buffer).setUint32(moved.length - 6, moved.length + 1000, true);
  rejectsFile("cd-past-end.pth", moved, /truncated: zip central directory needs bytes/);
});

test("truncated safetensors files are reported, naming the file", (t) => {
  const golden = sharedPath(t, "golden", "v4", "model.safetensors");
  const whole = golden ? new Uint8Array(readFileSync(golden)) : concat(writeSafetensors([{ name: "a", dtype: "f32", shape: [64], data: f32Bytes(VALUES) }]));
  const headerEnd = 8 + new DataView(whole.buffer).getUint32(0, true);
  rejectsFile("st-cut-4.safetensors", cut(whole, 4), /truncated/);
  rejectsFile("st-cut-12.safetensors", cut(whole, 12), /truncated: safetensors header needs bytes 8\.\./);
  rejectsFile("st-cut-header.safetensors", cut(whole, headerEnd - 1), /truncated: safetensors header/);
  for (const n of [headerEnd + 100, whole.length - 1]) {
    rejectsFile(`st-cut-${n}.safetensors`, cut(whole, n), /data_offsets point past the end of the file/);
  }
});

test("truncated rwkv.cpp .bin files are reported at every kind of cut point, naming the file", (t) => {
  const golden = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-Q5_1.bin");
  const whole = golden ? new Uint8Array(readFileSync(golden)) : goodBin();
  const dv = new DataView(whole.buffer);
  const nameLen = dv.getUint32(28, true), dims = dv.getUint32(24, true);
  const cases: Array<[number, RegExp]> = [
    [5, /truncated: 5 bytes is too short/],
    [20, /truncated: rwkv\.cpp header needs bytes 0\.\.24/],
    [24 + 7, /truncated: tensor record header at offset 24/],
    [24 + 12 + 4 * dims + 2, /truncated: tensor record at offset 24 \(dimensions and name\)/],
    [24 + 12 + 4 * dims + nameLen + 10, /truncated: tensor emb\.weight data needs bytes/],
    [Math.floor(whole.length / 2), /truncated/],
    [whole.length - 1, /truncated: tensor head\.weight data/],
  ];
  for (const [n, p] of cases) rejectsFile(`bin-cut-${n}.bin`, cut(whole, n), p);
});

// ---------------------------------------------------------------- wrong magic / not a model

test("wrong magic, unknown versions, random bytes and a bare pickle give clear errors", () => {
  const bin = goodBin();
  const wrong = bin.slice();
  wrong[0] ^= 0xff;
  rejectsFile("wrong-magic.bin", wrong, /unknown file format/);
  rejects(() => readRwkvCpp(new MemorySource("direct.bin", wrong)), "direct.bin", /bad magic 0x/);
  const v = bin.slice();
  new DataView(v.buffer).setUint32(4, 99, true);
  rejectsFile("version-99.bin", v, /unsupported rwkv\.cpp file version 99/);

  // Deterministic "random" bytes (xorshift), also behind each format's magic.
  let s = 0x9e3779b9;
  const random = (n: number) => Uint8Array.from({ length: n }, () => { s ^= s << 13; s ^= s >>> 17; s ^= s << 5; return s & 0xff; });
  rejectsFile("random.bin", random(65536), /unknown file format/);
  for (const [label, magic] of [["zip", [0x50, 0x4b, 3, 4]], ["ggmf", [0x66, 0x6d, 0x67, 0x67]], ["pickle", [0x80, 2]]] as const) {
    const b = random(4096);
    b.set(magic);
    rejectsFile(`random-${label}.bin`, b);
  }
  const bare = statePickle([spec()]);
  rejectsFile("legacy.pth", bare, /bare pickle/);
});

test("a zip without data.pkl, and a compressed entry, are refused by name", () => {
  const zip = storedZip([["weights/readme.txt", new TextEncoder().encode("hello, not a checkpoint")]]);
  rejectsFile("no-pickle.pth", zip, /zip archive without <name>\/data\.pkl/);
  const deflated = torchZip("archive", statePickle([spec()]), new Map([["0", f32Bytes(VALUES)]]), { method: 8 });
  rejectsFile("deflated.pth", deflated, /zip entry archive\/data\.pkl is compressed \(deflate\)/);
});

// ---------------------------------------------------------------- unsafe pickles

/** The classic exploit: callable(*('echo pwned',)) via GLOBAL or STACK_GLOBAL. */
function exploit(module: string, name: string, protocol4 = false): Uint8Array {
  const p = new PickleWriter().proto(protocol4 ? 4 : 2);
  (protocol4 ? p.stackGlobal(module, name) : p.global(module, name)).str("echo pwned").op(0x85).reduce().stop();
  return p.bytes();
}

test("pickles referencing os.system, builtins.eval, posix.system or any non-allow-listed global are refused, naming it", () => {
  for (const [module, name] of [["os", "system"], ["builtins", "eval"], ["posix", "system"], ["subprocess", "Popen"], ["torch", "load"], ["collections", "Counter"]]) {
    for (const protocol4 of [false, true]) {
      const file = `evil-${module}-${name}${protocol4 ? "-p4" : ""}.pth`;
      rejectsFile(file, torchZip("archive", exploit(module, name, protocol4), new Map()), new RegExp(`refusing to load global ${module}\\.${name}`), /archive\/data\.pkl/);
    }
  }
  // Hidden as the value of an entry inside an otherwise valid state dict.
  const p = new PickleWriter().proto(2).global("collections", "OrderedDict").emptyTuple().reduce().mark();
  p.str("ok").global("builtins", "eval").str("1+1").op(0x85).reduce().setitems().stop();
  rejectsFile("evil-nested.pth", torchZip("archive", p.bytes(), new Map()), /refusing to load global builtins\.eval/);
});

test("malformed pickles: unknown opcodes, missing STOP, bad memo, absurd lengths", () => {
  const run = (name: string, b: Uint8Array, ...patterns: RegExp[]) => rejects(() => unpickle(b, name, "data.pkl"), name, /data\.pkl/, ...patterns);
  run("op-ff.pth", Uint8Array.from([0x80, 2, 0xff]), /unsupported pickle opcode \(unknown\) 0xff at byte 2/);
  run("op-inst.pth", Uint8Array.from([0x80, 2, 0x69, ...new TextEncoder().encode("os\nsystem\n")]), /unsupported pickle opcode INST/);
  run("op-ext1.pth", Uint8Array.from([0x80, 2, 0x82, 1]), /unsupported pickle opcode EXT1/);
  run("no-stop.pth", Uint8Array.from([0x80, 2, 0x4e]), /no STOP opcode/);
  run("memo.pth", Uint8Array.from([0x80, 2, 0x68, 7, 0x2e]), /memo key 7 was never stored/);
  run("long-str.pth", Uint8Array.from([0x80, 2, 0x58, 0xf0, 0xff, 0xff, 0xff, 0x61]), /truncated BINUNICODE \(4294967280 bytes announced, 1 left\)/);
  run("huge-str8.pth", Uint8Array.from([0x80, 4, 0x8d, 0, 0, 0, 0, 0, 0, 0, 0x7f]), /BINUNICODE8 is too large/);
  run("empty-stack.pth", Uint8Array.from([0x80, 2, 0x52]), /REDUCE on an empty stack/);
  run("proto-9.pth", Uint8Array.from([0x80, 9]), /unsupported pickle protocol 9/);
  const deep = new Uint8Array(200_000).fill(0x28); // MARK × 200000
  run("deep-marks.pth", deep, /MARKs nested deeper than/);
});

// ---------------------------------------------------------------- out of bounds / absurd sizes

test("tensors that point outside their storage or the file, or have absurd shapes, are refused without allocating", () => {
  rejectsFile("oob.pth", pth([spec({ offset: 60, size: [8], stride: [1] })]), /tensor w: storage out of bounds/);
  rejectsFile("oob-stride.pth", pth([spec({ size: [8, 8], stride: [9, 1] })]), /storage out of bounds/);
  rejectsFile("absurd.pth", pth([spec({ size: [65536, 65536, 65536], stride: [0, 0, 0] })]), /tensor w: absurd shape \[65536,65536,65536\]/);
  rejectsFile("expanded.pth", pth([spec({ size: [4096, 4096], stride: [0, 0] })]), /larger than its storage of 64/);
  rejectsFile("negative.pth", pth([spec({ size: [-1, 8], stride: [8, 1] })]), /negative size/);
  rejectsFile("missing-storage.pth", pth([spec({ key: "7" })]), /storage archive\/data\/7 is missing/);
  rejectsFile("int-tensor.pth", pth([spec({ storageClass: "LongStorage" })]), /unsupported dtype \(torch\.LongStorage\)/);

  const st = (header: object, dataBytes: number) => {
    const json = new TextEncoder().encode(JSON.stringify(header));
    const b = new Uint8Array(8 + json.length + dataBytes);
    new DataView(b.buffer).setUint32(0, json.length, true);
    b.set(json, 8);
    return b;
  };
  rejectsFile("past-end.safetensors", st({ a: { dtype: "F32", shape: [100], data_offsets: [0, 400] } }, 100), /tensor a: data_offsets point past the end of the file \(needs \d+ bytes, file has \d+\)/);
  rejectsFile("absurd.safetensors", st({ a: { dtype: "F32", shape: [100000, 100000, 100000], data_offsets: [0, 4] } }, 4), /tensor a: absurd shape/);
  const hugeHeader = new Uint8Array(16);
  new DataView(hugeHeader.buffer).setUint32(0, 0xfffffff0, true);
  hugeHeader[8] = 0x7b;
  rejectsFile("huge-header.safetensors", hugeHeader, /header length \d+ is absurd/);

  const rec = (over: Partial<{ name: string; type: number; ne: number[]; data: Uint8Array }>) => binFile([{ name: "emb.weight", type: 0, ne: [32, 2], data: f32Bytes(VALUES), ...over }]);
  rejectsFile("absurd.bin", rec({ ne: [65536, 65536, 65536] }), /tensor emb\.weight: absurd dimensions \[65536,65536,65536\]/);
  rejectsFile("past-end.bin", rec({ ne: [32, 1000] }), /truncated: tensor emb\.weight data needs bytes/);
  rejectsFile("dims.bin", rec({ ne: [1, 1, 1, 1, 2] }), /tensor record at offset 24: 5 dimensions \(must be 1\.\.3\)/);
  const longKey = rec({});
  new DataView(longKey.buffer).setUint32(28, 0xffffffff, true);
  rejectsFile("key-length.bin", longKey, /name length 4294967295 is absurd/);
  rejectsFile("q-unaligned.bin", rec({ type: 9, ne: [24], data: new Uint8Array(34) }), /Q8_0 needs ne\[0\] to be a multiple of 32, got 24/);
});

test("obsolete ggml types, unknown types and quantized tensors in a version-100 file are refused", () => {
  const rec = (type: number, header?: number[]) => binFile([{ name: "blocks.0.att.key.weight", type, ne: [32, 2], data: new Uint8Array(64 * 4) }], header);
  rejectsFile("q4_2.bin", rec(4), /tensor blocks\.0\.att\.key\.weight: obsolete ggml type 4 \(Q4_2\)/);
  rejectsFile("q4_3.bin", rec(5), /obsolete ggml type 5 \(Q4_3\)/);
  rejectsFile("q4_1_o.bin", rec(6), /obsolete ggml type 6 \(Q4_1_O\)/);
  rejectsFile("type-42.bin", rec(42), /unknown ggml type 42/);
  rejectsFile("header-type-4.bin", rec(0, [0x67676d66, 101, 256, 32, 1, 4]), /obsolete data type 4 \(Q4_2\) in the header/);
  rejectsFile("v100-q8.bin", rec(9, [0x67676d66, 100, 256, 32, 1, 9]), /quantized type Q8_0 needs file version 101, this file is version 100/);
});

// ---------------------------------------------------------------- fuzz

test("randomly corrupted .pth and .bin files either load or fail with a FormatError (never another error)", () => {
  let s = 12345;
  const rnd = (n: number) => { s ^= s << 13; s ^= s >>> 17; s ^= s << 5; return (s >>> 0) % n; };
  const seeds: Array<[string, Uint8Array]> = [
    ["fuzz.pth", pth([spec(), spec({ name: "t", size: [4, 8], stride: [1, 8], offset: 3, storageNumel: 64 })])],
    ["fuzz.bin", goodBin()],
  ];
  let loaded = 0, refused = 0;
  for (const [name, good] of seeds) {
    for (let i = 0; i < 400; i++) {
      const b = good.slice();
      for (let k = 1 + rnd(4); k > 0; k--) b[rnd(b.length)] = rnd(256);
      try {
        const ckpt = openCheckpoint(new MemorySource(name, b));
        for (const e of ckpt.tensors.values()) e.toFloat32();
        loaded++;
      } catch (e) {
        assert.ok(e instanceof FormatError, `${name} mutation ${i}: ${e instanceof Error ? e.stack : String(e)}`);
        assert.ok(e.message.startsWith(`${name}: `), e.message);
        refused++;
      }
    }
  }
  assert.ok(refused > 0 && loaded > 0, `loaded ${loaded}, refused ${refused}`);
});

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
