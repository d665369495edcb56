import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { MemorySource } from "../src/core/bytes.js";
import { referenceBackend } from "../src/core/backend/reference.js";
import { crc32, crc32Portable, useNativeCrc32 } from "../src/core/crc32.js";
import "../src/node/file-source.js"; // registers zlib's CRC-32 where Node has it
import { FormatError } from "../src/core/errors.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { readGguf } from "../src/core/formats/gguf.js";
import { ggufFromCheckpoint } from "../src/core/formats/gguf-rwkv.js";
import { byteVocabMetadata } from "../src/core/formats/gguf-vocab.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { PTH_SHARED_SLACK_BYTES } from "../src/core/formats/pth.js";
import { readSafetensors, writeSafetensors } from "../src/core/formats/safetensors.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
import type { TensorEntry } from "../src/core/tensor.js";
import { loadModel } from "../src/node/load.js";
import { f32Bytes, statePickle, type TensorSpec, torchZip } from "./pth-builder.js";
import { runCaptured } from "./run-cli.js";
import { concat, sharedPath } from "./shared.js";

// The five ways a hostile or damaged file used to load with wrong weights or unbounded memory
// (issue 18), each refused now, plus the checks that ride along: CRC-32, non-finite weights.

const open = (name: string, bytes: Uint8Array, verifyChecksums = true): Checkpoint => openCheckpoint(new MemorySource(name, bytes), { verifyChecksums });
const refused = (f: () => unknown, pattern: RegExp) => assert.throws(f, (e: unknown) => e instanceof FormatError && pattern.test(e.message), `expected a FormatError matching ${pattern}`);
const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

test("crc32: the standard check value, incremental use, and a 1-byte change", () => {
  const digits = new TextEncoder().encode("123456789");
  assert.equal(crc32(digits), 0xcbf43926); // the CRC-32/ISO-HDLC check value
  assert.equal(crc32(new Uint8Array(0)), 0);
  const data = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7919) & 0xff);
  for (const cut of [0, 1, 7, 8, 9, 500, 999]) assert.equal(crc32(data.subarray(cut), crc32(data.subarray(0, cut))), crc32(data));
  // Slice-by-8 against the byte-at-a-time definition.
  let c = 0xffffffff;
  for (const b of data) { c ^= b; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; }
  assert.equal(crc32(data), (c ^ 0xffffffff) >>> 0);
  assert.equal(crc32Portable(data), (c ^ 0xffffffff) >>> 0);
});

test("crc32: the native CRC (zlib, registered by the Node layer) equals the portable one; a wrong one is refused", () => {
  const data = Uint8Array.from({ length: 70_001 }, (_, i) => (i * 2654435761) >>> 13 & 0xff);
  for (const [from, to, prev] of [[0, 70_001, 0], [1, 65_538, 0], [3, 4, 0xdeadbeef], [17, 40_000, 0x7fffffff]] as const) {
    assert.equal(crc32(data.subarray(from, to), prev), crc32Portable(data.subarray(from, to), prev));
  }
  assert.equal(useNativeCrc32(() => 0), false);
  assert.equal(useNativeCrc32((d, p) => crc32Portable(d, p) ^ (d.length === 9 ? 1 : 0)), false); // wrong on one length only
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926); // still the good implementation
});

// --- 1. shared storages -----------------------------------------------------------------------

function sharedPth(views: number, elements: number): Uint8Array {
  const specs: TensorSpec[] = Array.from({ length: views }, (_, i) => ({
    name: `blocks.${i}.att.key.weight`, storageClass: "FloatStorage", key: "0", storageNumel: elements, offset: 0, size: [elements], stride: [1],
  }));
  return torchZip("archive", statePickle(specs), new Map([["0", f32Bytes(Array.from({ length: elements }, (_, i) => i))]]));
}

test("pth: thousands of tensors viewing one storage are refused before anything is allocated", () => {
  const bytes = sharedPth(4000, 1024); // 4 KiB storage, 16 MB of views
  assert.ok(bytes.length < 1024 * 1024);
  refused(() => open("shared.pth", bytes), /views share storages \(storage 0 is used by blocks\.0\.att\.key\.weight, .* and 3997 more\)/);
});

test("pth: views of one storage that fit the file's size (plus the slack) load, each with its own values", () => {
  const n = 1024;
  // Two disjoint halves of one storage and one view of the whole: 2 x the storage in all, within the slack.
  const specs: TensorSpec[] = [
    { name: "a", storageClass: "FloatStorage", key: "0", storageNumel: n, offset: 0, size: [n / 2], stride: [1] },
    { name: "b", storageClass: "FloatStorage", key: "0", storageNumel: n, offset: n / 2, size: [n / 2], stride: [1] },
    { name: "all", storageClass: "FloatStorage", key: "0", storageNumel: n, offset: 0, size: [n / 4, 4], stride: [4, 1] },
  ];
  const values = Array.from({ length: n }, (_, i) => i - 100);
  const ckpt = open("views.pth", torchZip("archive", statePickle(specs), new Map([["0", f32Bytes(values)]])));
  assert.deepEqual([...ckpt.tensors.get("b")!.toFloat32().subarray(0, 3)], [412, 413, 414]);
  assert.equal(ckpt.tensors.get("all")!.toFloat32()[n - 1], n - 101);
  // The bound is the file plus the slack: a little past it is refused.
  const big = 16384;
  const over = Math.ceil(PTH_SHARED_SLACK_BYTES / (big * 4)) + 2;
  refused(() => open("over.pth", sharedPth(over, big)), /tensors would take \d+ bytes from a file of/);
});

test("pth: a storage whose byte size does not match its element count and type is refused", () => {
  const spec: TensorSpec = { name: "w", storageClass: "HalfStorage", key: "0", storageNumel: 4, offset: 0, size: [4], stride: [1] };
  refused(() => open("retyped.pth", torchZip("archive", statePickle([spec]), new Map([["0", f32Bytes([1, 2, 3, 4])]]))), /storage archive\/data\/0 has 16 bytes but 4 f16 elements \(8 bytes\)/);
});

// --- 2. safetensors offsets -------------------------------------------------------------------

function smallSafetensors(): Uint8Array {
  return concat(writeSafetensors([
    { name: "x", dtype: "f32", shape: [3], data: f32Bytes([1, 2, 3]) },
    { name: "y", dtype: "f32", shape: [2], data: f32Bytes([4, 5]) },
  ]));
}

/** Re-writes the JSON header (padded with spaces to `length` bytes when given). */
type StHeader = Record<string, { data_offsets: number[]; shape: number[] }>;
function withHeader(bytes: Uint8Array, edit: (h: StHeader) => void, length?: number): Uint8Array {
  const n = Number(dv(bytes).getBigUint64(0, true));
  const h = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as StHeader;
  edit(h);
  const json = new TextEncoder().encode(JSON.stringify(h).padEnd(length ?? n, " "));
  const out = new Uint8Array(8 + json.length + bytes.length - 8 - n);
  dv(out).setUint32(0, json.length, true);
  out.set(json, 8);
  out.set(bytes.subarray(8 + n), 8 + json.length);
  return out;
}

test("safetensors: the tensors must tile the data section exactly", () => {
  const good = smallSafetensors();
  assert.deepEqual([...readSafetensors(new MemorySource("ok", good)).tensors.get("y")!.toFloat32()], [4, 5]);
  // A header length one shorter (its last padding space becomes data): every tensor would read one byte off.
  const n = Number(dv(good).getBigUint64(0, true));
  assert.equal(good[8 + n - 1], 0x20, "the writer pads the header with spaces");
  const shorter = good.slice();
  dv(shorter).setUint32(0, n - 1, true);
  refused(() => readSafetensors(new MemorySource("short.safetensors", shorter)), /data section holds 21 bytes but the tensors cover 20/);
  refused(() => readSafetensors(new MemorySource("overlap.safetensors", withHeader(good, (h) => { h.y.data_offsets = [4, 12]; }))), /tensor y: data_offsets \[4, 12\] overlap tensor x/);
  refused(() => readSafetensors(new MemorySource("gap.safetensors", withHeader(good, (h) => { h.x.data_offsets = [0, 8]; h.x.shape = [2]; }))), /tensor y: data_offsets \[12, 20\] leave a gap of 4 bytes after tensor x/);
  const tail = new Uint8Array(good.length + 4);
  tail.set(good);
  refused(() => readSafetensors(new MemorySource("tail.safetensors", tail)), /holds 24 bytes but the tensors cover 20/);
});

// --- 3. GGUF offsets and types ----------------------------------------------------------------

/** Byte position of a tensor info's type field (its offset follows) in a GGUF header. */
function tensorInfoAt(bytes: Uint8Array, name: string, dims: number): number {
  const key = new TextEncoder().encode(name);
  for (let p = 0; p < bytes.length - key.length; p++) {
    if (dv(bytes).getUint32(p, true) === key.length && key.every((c, i) => bytes[p + 8 + i] === c)) return p + 8 + key.length + 4 + 8 * dims;
  }
  throw new Error(`no tensor info ${name}`);
}

test("GGUF: an offset pointing into another tensor, or an f32 tensor relabelled f16, is refused", (t) => {
  const path = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!path) return;
  const ckpt = open(path, new Uint8Array(readFileSync(path)));
  const bytes = concat(ggufFromCheckpoint(ckpt, "7", { dtype: "f32", tokenizer: byteVocabMetadata(512) }).chunks);
  const file = readGguf(new MemorySource("ok.gguf", bytes));
  const target = file.tensors.find((x) => x.name === "blk.0.attn_norm.weight")!;
  assert.equal(target.type.name, "F32");
  const at = tensorInfoAt(bytes, target.name, target.ne.length);
  assert.equal(dv(bytes).getUint32(at, true), 0, "type FP32 before the offset");

  const zeroOffset = bytes.slice();
  dv(zeroOffset).setBigUint64(at + 4, 0n, true);
  refused(() => open("offset0.gguf", zeroOffset), /tensor (blk\.0\.attn_norm\.weight|token_embd\.weight): data at offset 0 overlaps/);

  const relabelled = bytes.slice();
  dv(relabelled).setUint32(at, 1, true); // FP16: half the bytes
  refused(() => open("f16.gguf", relabelled), /leaves a gap of \d+ bytes after tensor blk\.0\.attn_norm\.weight \(F16/);
});

// --- 4. .pth zip entries -----------------------------------------------------------------------

function entryLocal(bytes: Uint8Array, name: string): { local: number; dataStart: number; size: number } {
  const b = dv(bytes);
  let eocd = bytes.length - 22;
  while (b.getUint32(eocd, true) !== 0x06054b50) eocd--;
  for (let p = b.getUint32(eocd + 16, true); b.getUint32(p, true) === 0x02014b50;) {
    const nameLen = b.getUint16(p + 28, true), extra = b.getUint16(p + 30, true), comment = b.getUint16(p + 32, true);
    if (new TextDecoder().decode(bytes.subarray(p + 46, p + 46 + nameLen)) === name) {
      const local = b.getUint32(p + 42, true);
      return { local, dataStart: local + 30 + b.getUint16(local + 26, true) + b.getUint16(local + 28, true), size: b.getUint32(p + 24, true) };
    }
    p += 46 + nameLen + extra + comment;
  }
  throw new Error(`no entry ${name}`);
}

test("pth (torch.save's own file, with data descriptors): local headers are cross-checked and CRC-32s verified", (t) => {
  const path = sharedPath(t, "golden", "v7", "model.pth");
  if (!path) return;
  const good = new Uint8Array(readFileSync(path));
  const e = entryLocal(good, "model/data/1");

  // Local extra field 4 bytes longer: the entry's data would start 4 bytes late.
  const shifted = good.slice();
  dv(shifted).setUint16(e.local + 28, dv(good).getUint16(e.local + 28, true) + 4, true);
  refused(() => open("shifted.pth", shifted), /zip entry model\/data\/1: local extra field record 0x[0-9a-f]+ of \d+ bytes runs past the field's 10 bytes/);
  // Were the stray bytes a well-formed empty record, the CRC (and the data descriptor) still catch it.
  const disguised = shifted.slice();
  disguised.set([0x99, 0x99, 0, 0], e.dataStart);
  const read = () => { for (const x of open("disguised.pth", disguised).tensors.values()) x.toFloat32(); };
  refused(read, /zip entry model\/data\/1: (CRC-32 mismatch|no data descriptor)/);

  const renamed = good.slice();
  renamed[e.local + 30 + "model/data/".length] = "7".charCodeAt(0);
  refused(() => open("renamed.pth", renamed), /zip entry model\/data\/1: the local header names it "model\/data\/7"/);

  // A flipped byte inside a storage: caught when that tensor is read, unless checks are off.
  const flipped = good.slice();
  flipped[e.dataStart + 5] ^= 0x10;
  const ckpt = open("flipped.pth", flipped);
  const victim = [...ckpt.tensors.values()].find((x) => { try { x.toFloat32(); return false; } catch { return true; } });
  if (!victim) throw new Error("one tensor must fail its read");
  refused(() => victim.toFloat32(), /zip entry model\/data\/1: CRC-32 mismatch \(computed 0x[0-9a-f]{8}, the directory says 0x[0-9a-f]{8}\): the file is corrupt/);
  const unchecked = open("flipped.pth", flipped, false).tensors.get(victim.name)!.toFloat32();
  const original = open("good.pth", good).tensors.get(victim.name)!.toFloat32();
  assert.notDeepEqual(unchecked, original);
});

test("pth (no data descriptor): local crc, sizes and overlapping entries are checked", () => {
  const pickle = statePickle([{ name: "w", storageClass: "FloatStorage", key: "0", storageNumel: 4, offset: 0, size: [4], stride: [1] }]);
  const good = torchZip("archive", pickle, new Map([["0", f32Bytes([1, 2, 3, 4])]]));
  assert.deepEqual([...open("ok.pth", good).tensors.get("w")!.toFloat32()], [1, 2, 3, 4]);
  const e = entryLocal(good, "archive/data/0");
  const badCrc = good.slice();
  dv(badCrc).setUint32(e.local + 14, 0x12345678, true);
  refused(() => open("crc.pth", badCrc), /zip entry archive\/data\/0: CRC-32 0x12345678 in the local header, 0x[0-9a-f]{8} in the directory/);
  const badSize = good.slice();
  dv(badSize).setUint32(e.local + 18, 12, true);
  refused(() => open("size.pth", badSize), /sizes 12\/16 in the local header, 16\/16 in the directory/);
  // Two directory entries pointing at the same bytes: the second name check fails first, so
  // point the version entry's directory record at data.pkl's local header with its own name.
  const b = dv(good);
  let eocd = good.length - 22;
  while (b.getUint32(eocd, true) !== 0x06054b50) eocd--;
  const cd = b.getUint32(eocd + 16, true);
  const firstLen = b.getUint16(cd + 28, true);
  const second = cd + 46 + firstLen;
  const overlapped = good.slice();
  dv(overlapped).setUint32(second + 42, b.getUint32(cd + 42, true) + 2, true); // inside the first entry
  refused(() => open("overlap.pth", overlapped), /zip entry archive\/data\/0: no local file header|overlap/);
});

// --- 5. unknown tensors -------------------------------------------------------------------------

function withExtra(ckpt: Checkpoint, names: readonly string[]): Checkpoint {
  const tensors = new Map<string, TensorEntry>(ckpt.tensors);
  for (const name of names) tensors.set(name, { name, dtype: "f32", shape: [4], toFloat32: () => new Float32Array(4) });
  return { ...ckpt, tensors };
}

test("tensors no supported version uses are refused by name; a file that looks like 7a but is malformed is refused by shape; training leftovers only warned", (t) => {
  const path = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!path) return;
  const ckpt = open(path, new Uint8Array(readFileSync(path)));
  const build = (c: Checkpoint, onWarning?: (m: string) => void) => buildModel(c, architectureFor(detectVersion(c), path), detectVersion(c), referenceBackend, { onWarning });
  const warnings: string[] = [];
  build(ckpt, (m) => warnings.push(m)); // blocks.0.att.v0/v1/v2 are part of the released layout
  assert.equal(warnings.length, 0);
  // DeepEmbed's tensors make it RWKV-7a (test/next-gen.test.ts): these stand-ins have the wrong shapes.
  refused(() => build(withExtra(ckpt, ["blocks.0.ffn.s_emb.weight", "blocks.0.ffn.s_emb_x.weight", "blocks.0.ffn.s0", "blocks.0.ffn.s1", "blocks.0.ffn.s2"])),
    /tensor blocks\.0\.ffn\.s1 has shape \[4\] but RWKV-7a needs \[128,32\]/);
  // Attention tensors without 7b's blocks.0.qkv.k_emb.weight: no version reads them.
  refused(() => build(withExtra(ckpt, ["blocks.1.qkv.k1", "blocks.1.qkv.qq.weight"])), /2 unknown tensors \(blocks\.1\.qkv\.k1, blocks\.1\.qkv\.qq\.weight\): no supported RWKV version \(detected 7\) uses them/);
  refused(() => build(withExtra(ckpt, ["blocks.0.att.mystery"])), /1 unknown tensor \(blocks\.0\.att\.mystery\): no supported RWKV version \(detected 7\) uses them/);
  build(withExtra(ckpt, ["optimizer.step", "blocks.0.att.key.weight.exp_avg"]), (m) => warnings.push(m));
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /ignoring 2 tensor\(s\) left over from training: optimizer\.step, blocks\.0\.att\.key\.weight\.exp_avg/);
});

// --- non-finite weights -------------------------------------------------------------------------

test("a NaN or infinity in a weight is refused at load, naming the tensor; --no-verify loads anyway", async (t) => {
  const path = sharedPath(t, "golden", "v7", "model.safetensors");
  const bf16Path = sharedPath(t, "golden", "v7", "model_bf16.safetensors");
  if (!path || !bf16Path) return;
  const dir = mkdtempSync(join(tmpdir(), "rwkv-finite-"));
  try {
    let files = 0;
    /** A copy of `src` with `bytes` written at byte `at` of `tensor`'s data. */
    const poison = (src: string, tensor: string, at: number, bytes: number[]): string => {
      const b = new Uint8Array(readFileSync(src));
      const e = readSafetensors(new MemorySource(src, b));
      const n = Number(dv(b).getBigUint64(0, true));
      const header = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + n))) as Record<string, { data_offsets: number[] }>;
      assert.ok(e.tensors.has(tensor));
      b.set(bytes, 8 + n + header[tensor].data_offsets[0] + at);
      const out = join(dir, `poisoned-${files++}.safetensors`);
      writeFileSync(out, b);
      return out;
    };
    const nan32 = poison(path, "blocks.1.att.w0", 3 * 4, [0, 0, 0xc0, 0x7f]);
    await assert.rejects(() => loadModel(nan32, { backend: "reference" }), /tensor blocks\.1\.att\.w0 holds a non-finite value \(NaN at element 3\): the file is corrupt/);
    assert.equal((await loadModel(nan32, { backend: "reference", verify: false })).config.nLayer > 0, true);
    // The CLI: one line, exit 1; --no-verify gets past the load (the sampler then meets the NaN logits).
    const argv = ["generate", nan32, "--prompt", "a", "--max-tokens", "1", "--tokenizer-kind", "bytes", "--backend", "reference"];
    const cli = await runCaptured(argv);
    assert.equal(cli.code, 1);
    assert.match(cli.err, /^rwkv: .*tensor blocks\.1\.att\.w0 holds a non-finite value \(NaN at element 3\)[^\n]*\n$/);
    const unchecked = await runCaptured([...argv, "--no-verify"]);
    assert.doesNotMatch(unchecked.err, /holds a non-finite value/);
    // A bf16 matrix kept compact is checked on its raw bytes: +Inf is 0x7f80.
    const inf16 = poison(bf16Path, "blocks.0.ffn.key.weight", 10 * 2, [0x80, 0x7f]);
    await assert.rejects(() => loadModel(inf16, { backend: "reference" }), /tensor blocks\.0\.ffn\.key\.weight holds a non-finite value \(NaN or infinity at element 10\)/);
    // Finite but extreme (3.4e38 as every output-norm weight): the logits overflow; the first step catches it.
    const huge = poison(path, "ln_out.weight", 0, Array.from({ length: 32 }).flatMap(() => [0xff, 0xff, 0x7f, 0x7f]));
    await assert.rejects(() => loadModel(huge, { backend: "reference" }), /logits are non-finite .* after one step although every weight is finite/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
