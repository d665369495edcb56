import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { MemorySource } from "../src/core/bytes.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { GGML_TYPES, type GgmlType } from "../src/core/formats/ggml-quants.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { detectVersion } from "../src/core/model/detect.js";
import { decodeRecord, readRwkvCppRecords, type RwkvCppRecord } from "../src/core/formats/rwkvcpp.js";
import { f16ToF32, f32ToBf16, f32ToF16, numel } from "../src/core/tensor.js";
import { FileSource } from "../src/node/file-source.js";
import { f32Bytes, statePickle, type TensorSpec, torchZip } from "./pth-builder.js";
import { readJson, sharedPath } from "./shared.js";

/** Opens a file, runs `fn` on its checkpoint, closes it. */
function withCheckpoint<T>(path: string, fn: (c: Checkpoint) => T): T {
  const src = new FileSource(path);
  try { return fn(openCheckpoint(src)); } finally { src.close(); }
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length), y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

// ---------------------------------------------------------------- .pth vs safetensors (golden)

for (const ver of ["v4", "v5", "v6", "v7"]) {
  for (const [pth, st] of [["model.pth", "model.safetensors"], ["model_bf16.pth", "model_bf16.safetensors"]]) {
    test(`golden ${ver}: ${pth} equals ${st} exactly (names, order, shapes, dtypes, values)`, (t) => {
      const a = sharedPath(t, "golden", ver, pth), b = sharedPath(t, "golden", ver, st);
      if (!a || !b) return;
      withCheckpoint(a, (p) => withCheckpoint(b, (s) => {
        assert.equal(p.format, "pth");
        assert.deepEqual([...p.tensors.keys()], [...s.tensors.keys()]);
        for (const [name, want] of s.tensors) {
          const got = p.tensors.get(name)!;
          assert.deepEqual(got.shape, want.shape, name);
          assert.equal(got.dtype, want.dtype, name);
          assert.ok(bitsEqual(got.toFloat32(), want.toFloat32()), `${name}: values differ`);
        }
        t.diagnostic(`${p.tensors.size} tensors, metadata ${JSON.stringify(p.metadata)}`);
      }));
    });
  }
}

// ---------------------------------------------------------------- hand-built .pth

const STORAGE_NUMEL = 60;
const storageValues = Array.from({ length: STORAGE_NUMEL }, (_, i) => i * 0.5 - 7.25);
const VIEWS: Array<Omit<TensorSpec, "storageClass" | "key" | "storageNumel">> = [
  { name: "transposed", offset: 2, size: [3, 4], stride: [1, 5] },
  { name: "strided3d", offset: 7, size: [2, 3, 2], stride: [20, 6, 2] },
  { name: "contiguous_with_offset", offset: 50, size: [2, 5], stride: [5, 1] },
  { name: "expanded", offset: 0, size: [2, 3], stride: [0, 1] },
  { name: "empty", offset: 0, size: [0, 3], stride: [3, 1] },
  { name: "scalar", offset: 9, size: [], stride: [] },
];

/** Independent reference: element at multi-index idx is storage[offset + Σ idx·stride]. */
function expectedView(storage: ArrayLike<number>, v: { offset: number; size: readonly number[]; stride: readonly number[] }): number[] {
  const out: number[] = [];
  const n = numel(v.size);
  for (let flat = 0; flat < n; flat++) {
    let rem = flat, off = v.offset;
    for (let d = v.size.length - 1; d >= 0; d--) { off += (rem % v.size[d]) * v.stride[d]; rem = Math.floor(rem / v.size[d]); }
    out.push(storage[off]);
  }
  return out;
}

function handBuilt(opts: Parameters<typeof statePickle>[1] & { zip64?: boolean } = {}): { bytes: Uint8Array; specs: TensorSpec[] } {
  const specs: TensorSpec[] = VIEWS.map((v) => ({ ...v, storageClass: "FloatStorage", key: "0", storageNumel: STORAGE_NUMEL }));
  // Other dtypes, each in its own storage (keys 1..3), values exactly representable.
  const small = storageValues.slice(0, 12);
  specs.push({ name: "half", storageClass: "HalfStorage", key: "1", storageNumel: 12, offset: 1, size: [2, 3], stride: [1, 2] });
  specs.push({ name: "bf16", storageClass: "BFloat16Storage", key: "2", storageNumel: 12, offset: 0, size: [3, 4], stride: [4, 1] });
  specs.push({ name: "double", storageClass: "DoubleStorage", key: "3", storageNumel: 12, offset: 0, size: [4, 3], stride: [1, 4] });
  const storages = new Map<string, Uint8Array>([
    ["0", f32Bytes(storageValues)],
    ["1", new Uint8Array(Uint16Array.from(small, f32ToF16).buffer)],
    ["2", new Uint8Array(Uint16Array.from(small, f32ToBf16).buffer)],
    ["3", new Uint8Array(Float64Array.from(small).buffer)],
  ]);
  return { bytes: torchZip("archive", statePickle(specs, opts), storages, { zip64: opts.zip64 }), specs };
}

const VARIANTS: Array<[string, Parameters<typeof handBuilt>[0]]> = [
  ["protocol 2", {}],
  ["protocol 4 opcodes (FRAME, STACK_GLOBAL, SHORT_BINUNICODE, MEMOIZE), nn.Parameter, _metadata BUILD", { protocol4: true, parameter: true, stateMetadata: true }],
  ["ZIP64 archive", { zip64: true }],
  ["state dict nested under \"state_dict\"", { nestUnder: "state_dict" }],
];

for (const [label, opts] of VARIANTS) {
  test(`hand-built .pth (${label}): strided, transposed, offset, expanded, empty views and f16/bf16/f64 storages decode correctly`, () => {
    const { bytes, specs } = handBuilt(opts);
    const ckpt = openCheckpoint(new MemorySource("hand.pth", bytes));
    assert.equal(ckpt.format, "pth");
    assert.equal(ckpt.metadata["pth.archive"], "archive");
    assert.deepEqual([...ckpt.tensors.keys()], specs.map((s) => s.name));
    const small = storageValues.slice(0, 12);
    for (const s of specs) {
      const e = ckpt.tensors.get(s.name)!;
      assert.deepEqual(e.shape, s.size, s.name);
      const base = s.key === "0" ? storageValues : s.key === "1" ? small.map((x) => f16ToF32(f32ToF16(x))) : small;
      assert.deepEqual([...e.toFloat32()], expectedView(base, s), s.name);
    }
    assert.equal(ckpt.tensors.get("half")!.dtype, "f16");
    assert.equal(ckpt.tensors.get("bf16")!.dtype, "bf16");
    assert.equal(ckpt.tensors.get("double")!.dtype, "f64");
  });
}

// ---------------------------------------------------------------- rwkv.cpp

const RWKVCPP_MODELS: Record<string, { golden?: string; version: string }> = {
  "4v0-660K": { golden: "v4", version: "4" },
  "5v1-730K": { version: "5.1" },
  "5v2-730K": { golden: "v5", version: "5.2" },
  "6v0-1m": { golden: "v6", version: "6" },
  "7v0-834K": { golden: "v7", version: "7" },
};

interface Manifest { config: { n_embd: number; vocab_size: number }; checkpoint: { tensors: Array<{ name: string; shape: number[] }> } }

/** Raw records and the presented checkpoint of one .bin file. */
function openBin(path: string): { records: Map<string, RwkvCppRecord>; raw: (n: string) => Float32Array; ckpt: Checkpoint; close(): void } {
  const src = new FileSource(path);
  const records = new Map(readRwkvCppRecords(src).records.map((r) => [r.name, r]));
  return { records, raw: (n) => decodeRecord(src, records.get(n)!), ckpt: openCheckpoint(src), close: () => src.close() };
}

function transposed(m: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(m.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = m[r * cols + c];
  return out;
}

for (const [model, info] of Object.entries(RWKVCPP_MODELS)) {
  test(`rwkv.cpp ${model} FP32: official names and shape orientation (as the golden checkpoint of that version)`, (t) => {
    const path = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${model}-FP32.bin`);
    if (!path) return;
    const f = openBin(path);
    try {
      const { ckpt } = f;
      assert.equal(ckpt.format, "rwkv.cpp");
      assert.equal(detectVersion(ckpt), info.version);
      // rwkv.cpp's graph fixes v5's ln_x eps at torch's default; other versions keep their own.
      assert.equal(ckpt.numerics?.groupNormEps, info.version.startsWith("5.") ? 1e-5 : undefined);
      const C = Number(ckpt.metadata.n_embed), V = Number(ckpt.metadata.n_vocab), L = Number(ckpt.metadata.n_layer);
      assert.deepEqual(ckpt.tensors.get("emb.weight")!.shape, [V, C]);
      assert.deepEqual(ckpt.tensors.get("head.weight")!.shape, [V, C]);
      for (const e of ckpt.tensors.values()) assert.ok(!e.name.includes("x_rwkvag"), "x_rwkvag must be split");
      if (!info.golden) return;
      const gpath = sharedPath(t, "golden", info.golden, "golden.json");
      if (!gpath) return;
      const g = readJson<Manifest>(gpath);
      const gC = g.config.n_embd, gV = g.config.vocab_size;
      const layerNames = (names: Iterable<string>, i: number) => new Set([...names].filter((n) => n.startsWith(`blocks.${i}.`)).map((n) => n.slice(`blocks.${i}.`.length)));
      const gNames = g.checkpoint.tensors.map((x) => x.name);
      // Every layer has the golden layer-1 set (v7 layer 0's unused v0/v1/v2 may be absent); globals match.
      for (let i = 1; i < L; i++) assert.deepEqual(layerNames(ckpt.tensors.keys(), i), layerNames(gNames, 1), `layer ${i} names`);
      const missing0 = [...layerNames(gNames, 0)].filter((n) => !layerNames(ckpt.tensors.keys(), 0).has(n));
      assert.ok(missing0.every((n) => /^att\.v[012]$/.test(n)), `layer 0 lacks ${missing0}`);
      const globals = (names: Iterable<string>) => [...names].filter((n) => !n.startsWith("blocks.") || n.startsWith("blocks.0.ln0")).sort();
      assert.deepEqual(globals(ckpt.tensors.keys()), globals(gNames));
      // Orientation: an axis that is C (or V) in the golden checkpoint is C (or V) here, rank for rank.
      for (const gt of g.checkpoint.tensors) {
        const ours = ckpt.tensors.get(gt.name);
        if (!ours) continue;
        assert.equal(ours.shape.length, gt.shape.length, `${gt.name}: [${ours.shape}] vs golden [${gt.shape}]`);
        gt.shape.forEach((d, ax) => {
          if (d === gC) assert.equal(ours.shape[ax], C, `${gt.name} axis ${ax}: [${ours.shape}] vs golden [${gt.shape}]`);
          if (d === gV) assert.equal(ours.shape[ax], V, `${gt.name} axis ${ax}: [${ours.shape}] vs golden [${gt.shape}]`);
        });
      }
    } finally { f.close(); }
  });
}

test("rwkv.cpp v7 FP32: x_rwkvag split into x_r..x_g (1,1,C), LoRA matrices transposed back, r_k (H,N), w0 (1,1,C)", (t) => {
  const path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!path) return;
  const f = openBin(path);
  try {
    const { ckpt, raw } = f;
    const C = 64;
    for (let l = 0; l < 12; l++) {
      const packed = raw(`blocks.${l}.att.x_rwkvag`);
      assert.deepEqual(f.records.get(`blocks.${l}.att.x_rwkvag`)!.ne, [C, 1, 6]);
      ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"].forEach((part, i) => {
        const e = ckpt.tensors.get(`blocks.${l}.att.${part}`)!;
        assert.deepEqual(e.shape, [1, 1, C]);
        assert.ok(bitsEqual(e.toFloat32(), packed.slice(i * C, (i + 1) * C)), `${part} of layer ${l}`);
      });
      for (const m of ["w", "a", "g", ...(l > 0 ? ["v"] : [])]) {
        const stored = f.records.get(`blocks.${l}.att.${m}1`)!;
        const [D] = stored.shape; // stored (D, C): the converter's transpose of the official (C, D)
        const e1 = ckpt.tensors.get(`blocks.${l}.att.${m}1`)!, e2 = ckpt.tensors.get(`blocks.${l}.att.${m}2`)!;
        assert.deepEqual(e1.shape, [C, D]);
        assert.deepEqual(e2.shape, [D, C]);
        assert.ok(bitsEqual(e1.toFloat32(), transposed(raw(`blocks.${l}.att.${m}1`), D, C)));
        assert.ok(bitsEqual(e2.toFloat32(), transposed(raw(`blocks.${l}.att.${m}2`), C, D)));
      }
    }
    assert.deepEqual(ckpt.tensors.get("blocks.0.att.r_k")!.shape, [1, 64]);
    assert.deepEqual(ckpt.tensors.get("blocks.3.att.w0")!.shape, [1, 1, C]);
    assert.deepEqual(ckpt.tensors.get("blocks.3.ffn.x_k")!.shape, [1, 1, C]);
    // Spot value: x_k of layer 2, channel 5, straight from the file (ne0 = C contiguous, x_k is part 2).
    assert.equal(ckpt.tensors.get("blocks.2.att.x_k")!.toFloat32()[5], raw("blocks.2.att.x_rwkvag")[2 * C + 5]);
  } finally { f.close(); }
});

test("rwkv.cpp v6 FP32: time_maa_w1/time_decay_w1/w2 transposed back, time_maa_w2 (5,Dm,C), decay (1,1,C), faaaa (H,N)", (t) => {
  const path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-6v0-1m-FP32.bin");
  if (!path) return;
  const f = openBin(path);
  try {
    const { ckpt, raw } = f;
    const C = 64;
    const maaW1 = ckpt.tensors.get("blocks.4.att.time_maa_w1")!;
    assert.deepEqual(maaW1.shape, [C, 160]);
    assert.ok(bitsEqual(maaW1.toFloat32(), transposed(raw("blocks.4.att.time_maa_w1"), 160, C)));
    for (const n of ["time_decay_w1", "time_decay_w2"]) {
      const e = ckpt.tensors.get(`blocks.4.att.${n}`)!;
      assert.deepEqual(e.shape, [64, 64]);
      assert.ok(bitsEqual(e.toFloat32(), transposed(raw(`blocks.4.att.${n}`), 64, 64)), n);
    }
    const w2 = ckpt.tensors.get("blocks.4.att.time_maa_w2")!;
    assert.deepEqual(f.records.get("blocks.4.att.time_maa_w2")!.shape, [5, C, 32]);
    assert.deepEqual(w2.shape, [5, 32, C]);
    const got = w2.toFloat32(), stored = raw("blocks.4.att.time_maa_w2");
    for (const [s, d, c] of [[0, 0, 0], [1, 3, 17], [4, 31, 63], [2, 10, 40]]) {
      assert.equal(got[(s * 32 + d) * C + c], stored[(s * C + c) * 32 + d], `time_maa_w2[${s}][${d}][${c}]`);
    }
    const decay = ckpt.tensors.get("blocks.4.att.time_decay")!;
    assert.deepEqual(decay.shape, [1, 1, C]);
    assert.ok(bitsEqual(decay.toFloat32(), raw("blocks.4.att.time_decay")), "v6 time_decay is stored raw");
    assert.deepEqual(ckpt.tensors.get("blocks.4.att.time_faaaa")!.shape, [8, 8]);
    assert.deepEqual(ckpt.tensors.get("blocks.4.att.time_maa_x")!.shape, [1, 1, C]);
    assert.deepEqual(ckpt.tensors.get("blocks.4.ffn.time_maa_k")!.shape, [1, 1, C]);
  } finally { f.close(); }
});

test("rwkv.cpp v4/v5 FP32: decay and bonus re-parameterisations are undone in float64", (t) => {
  const cases: Array<[string, string, number[], (x: number) => number, (w: number) => number]> = [
    // [file, tensor, official shape, inverse, forward transform the converter applied]
    ["4v0-660K", "time_decay", [128], (x) => Math.log(-x), (w) => -Math.exp(w)],
    ["5v1-730K", "time_decay", [8], (x) => Math.log(-Math.log(x)), (w) => Math.exp(-Math.exp(w))],
    ["5v1-730K", "time_first", [8], Math.log, Math.exp],
    ["5v2-730K", "time_decay", [8, 8], (x) => Math.log(-Math.log(x)), (w) => Math.exp(-Math.exp(w))],
    ["5v2-730K", "time_faaaa", [8, 8], (x) => x, (w) => w],
  ];
  for (const [model, tensor, shape, inverse, forward] of cases) {
    const path = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${model}-FP32.bin`);
    if (!path) return;
    const f = openBin(path);
    try {
      for (const layer of [0, 3]) {
        const name = `blocks.${layer}.att.${tensor}`;
        const e = f.ckpt.tensors.get(name)!;
        assert.deepEqual(e.shape, shape, name);
        const got = e.toFloat32(), stored = f.raw(name);
        got.forEach((w, i) => {
          assert.equal(w, Math.fround(inverse(stored[i])), `${model} ${name}[${i}]`);
          assert.ok(Math.abs(forward(w) - stored[i]) <= 1e-6 * Math.abs(stored[i]) + 1e-12, `${model} ${name}[${i}] round trip`);
        });
      }
      const mix = f.ckpt.tensors.get("blocks.1.att.time_mix_k")!;
      assert.deepEqual(mix.shape, [1, 1, Number(f.ckpt.metadata.n_embed)], "time_mix vectors get their (1,1,C) shape back");
    } finally { f.close(); }
  }
});

// ---------------------------------------------------------------- FP16 / quantized vs FP32

const F16_REL = 2 ** -11, F16_ABS = 2 ** -25;
/** Worst-case error of one block relative to its max |x| (QK = 32 elements along ne0). */
const QUANT_ERROR: Record<string, number> = {
  Q4_0: 1 / 8, // d = amax/8, the largest positive value clamps to 7·d
  Q4_1: 1 / 15, // d = (max - min)/15 <= 2·amax/15, error <= d/2
  Q5_0: 1 / 16,
  Q5_1: 1 / 31,
  Q8_0: 1 / 254, // d = amax/127, error <= d/2
};
// Allowances for d and m being stored as f16 (relative, and absolute where they are subnormal),
// and for files quantized from an FP16 conversion rather than from FP32.
const QUANT_REL_SLACK = 2 ** -10, QUANT_ABS_SLACK = 32 * 2 ** -24;

function blockBound(type: GgmlType, amax: number): number {
  return amax * (QUANT_ERROR[type.name] + QUANT_REL_SLACK) + QUANT_ABS_SLACK;
}

test("rwkv.cpp FP16 and quantized files dequantize to within the format's error of the FP32 file", (t) => {
  const dir = sharedPath(t, "rwkv.cpp");
  if (!dir) return;
  const files = readdirSync(dir).filter((f) => /^tiny-rwkv-.*\.bin$/.test(f) && !f.endsWith("-FP32.bin"));
  assert.ok(files.length >= 18, `found ${files.length} non-FP32 files`);
  for (const file of files) {
    const fam = file.replace(/-(FP16|Q\d_\d|FP32-to-Q\d_\d)\.bin$/, "");
    const ref = openBin(join(dir, `${fam}-FP32.bin`)), q = openBin(join(dir, file));
    try {
      const worst: Record<string, number> = {};
      assert.deepEqual([...q.records.keys()], [...ref.records.keys()], file);
      // Stored records, block by block along ne0.
      for (const [name, rec] of q.records) {
        const a = q.raw(name), b = ref.raw(name);
        assert.deepEqual(rec.ne, ref.records.get(name)!.ne, name);
        if (rec.type.name === "FP32") { assert.ok(bitsEqual(a, b), `${file} ${name}: FP32 tensor differs`); continue; }
        let ratio = 0;
        if (rec.type.name === "FP16") {
          for (let i = 0; i < a.length; i++) {
            const err = Math.abs(a[i] - b[i]);
            assert.ok(err <= Math.abs(b[i]) * F16_REL + F16_ABS, `${file} ${name}[${i}]: ${a[i]} vs ${b[i]}`);
            if (Math.abs(b[i]) > 2 ** -14) ratio = Math.max(ratio, err / Math.abs(b[i]));
          }
        } else {
          for (let o = 0; o < a.length; o += 32) {
            let amax = 0, err = 0;
            for (let j = o; j < o + 32; j++) { amax = Math.max(amax, Math.abs(b[j])); err = Math.max(err, Math.abs(a[j] - b[j])); }
            assert.ok(err <= blockBound(rec.type, amax), `${file} ${name} block ${o / 32}: error ${err}, block max ${amax}`);
            if (amax > 1e-3) ratio = Math.max(ratio, err / amax);
          }
        }
        worst[rec.type.name] = Math.max(worst[rec.type.name] ?? 0, ratio);
      }
      // The presented (official-layout) tensors agree too: same names/shapes, f32 ones bit-exact.
      assert.deepEqual([...q.ckpt.tensors.keys()], [...ref.ckpt.tensors.keys()]);
      for (const [name, e] of q.ckpt.tensors) {
        const r = ref.ckpt.tensors.get(name)!;
        assert.deepEqual(e.shape, r.shape, name);
        const a = e.toFloat32(), b = r.toFloat32();
        if (e.dtype === "f32") { assert.ok(bitsEqual(a, b), `${file} ${name}`); continue; }
        const type = [...GGML_TYPES.values()].find((g) => g.dtype === e.dtype)!;
        const amax = b.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        const bound = type.name === "FP16" ? amax * F16_REL + F16_ABS : blockBound(type, amax);
        const err = a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);
        assert.ok(err <= bound, `${file} ${name}: max error ${err} > ${bound}`);
      }
      t.diagnostic(`${file}: worst error / block max |x| ${JSON.stringify(worst, (_k, v: unknown) => (typeof v === "number" ? Number(v.toPrecision(3)) : v))}`);
    } finally { ref.close(); q.close(); }
  }
});
