import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { mergeAdapters } from "../src/core/adapters/merge.js";
import { safetensorsF16, safetensorsF32 } from "../src/core/adapters/write.js";
import { loadAdapterUnmerged, openAdapter } from "../src/node/adapters.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { runCaptured } from "./run-cli.js";
import { compare, sharedPath } from "./shared.js";

/*
 * ai00/web-rwkv LoRA files. test/fixtures/adapters/<v>/ai00_lora.st is what tools/ai00_check.py (a
 * re-implementation of ai00's convert_safetensors.py) made of lora.safetensors there: f16, lora.0 =
 * Aᵀ (in, r), lora.1 = B (out, r), plus ln_out.weight. Loaded by us, it must merge to RWKV-PEFT's
 * merge of the original (expected.safetensors, tools/adapter_golden.py) within the f16 rounding of
 * its values, bounded per element: a LoRA delta s·Σ_k B_ok A_ki by s·Σ_k |B_ok||A_ki|·(2u + u²)
 * (each factor rounded once, u = 2⁻¹¹; a subnormal adds at most 2⁻²⁵ absolute per factor value);
 * a replaced vector by |v|·u.
 */

const FIXTURES = join(import.meta.dirname, "..", "..", "test", "fixtures", "adapters");
const LORA_ALPHA = 24;
/** f16 unit roundoff (11 significant bits), and the largest absolute error of a subnormal f16. */
const U = 2 ** -11, SUBNORMAL = 2 ** -25;
/** f32 rounding of the sums and of the stored result, relative to the values involved. */
const F32_SLACK = 4 * 2 ** -23;
const TOKENS = [1, 17, 300, 42, 5, 511, 0, 99];

function tensorsOf(path: string): Map<string, { shape: readonly number[]; data: Float32Array; dtype: string }> {
  const { checkpoint, close } = loadCheckpoint(path);
  try {
    return new Map([...checkpoint.tensors].map(([n, t]) => [n, { shape: t.shape, data: t.toFloat32(), dtype: t.dtype }]));
  } finally {
    close();
  }
}

/** Per-element bound of the ai00 merge's difference from the exact one (see the header). */
function loraBound(A: Float32Array, B: Float32Array, r: number, out: number, inp: number, w: Float32Array): Float64Array {
  const s = LORA_ALPHA / r, bound = new Float64Array(out * inp);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inp; i++) {
      let mag = 0, sumA = 0, sumB = 0;
      for (let k = 0; k < r; k++) {
        mag += Math.abs(B[o * r + k] * A[k * inp + i]);
        sumA += Math.abs(A[k * inp + i]);
        sumB += Math.abs(B[o * r + k]);
      }
      bound[o * inp + i] = s * mag * (2 * U + U * U) + s * SUBNORMAL * (sumA + sumB) + (Math.abs(w[o * inp + i]) + s * mag) * F32_SLACK;
    }
  }
  return bound;
}

for (const version of ["v6", "v7"]) {
  test(`ai00 ${version}: ai00's f16 LoRA file merges as RWKV-PEFT's merge of the original, within f16 rounding`, (t) => {
    const modelPath = sharedPath(t, "golden", version, "model.safetensors");
    if (!modelPath) return;
    const dir = join(FIXTURES, version);
    const file = tensorsOf(join(dir, "ai00_lora.st"));
    // The fixture really is in ai00's form: f16, lora.0/lora.1, lora.0 transposed (in, r).
    assert.deepEqual([...file.keys()].sort(), ["blocks.0.att.receptance.lora.0", "blocks.0.att.receptance.lora.1", "blocks.2.att.output.lora.0", "blocks.2.att.output.lora.1", "ln_out.weight"]);
    for (const [n, e] of file) assert.equal(e.dtype, "f16", n);
    const original = tensorsOf(join(dir, "lora.safetensors"));
    const expected = tensorsOf(join(dir, "expected.safetensors"));
    const base = loadCheckpoint(modelPath);
    const a = openAdapter({ path: join(dir, "ai00_lora.st"), kind: "lora", alpha: LORA_ALPHA });
    try {
      const { checkpoint } = mergeAdapters(base.checkpoint, [a.adapter]);
      let adapted = 0;
      for (const [name, t2] of checkpoint.tensors) {
        const got = t2.toFloat32(), w = base.checkpoint.tensors.get(name)!.toFloat32();
        const want = expected.get("lora/" + name)?.data;
        if (!want) {
          assert.deepEqual(got, w, `${name} changed, which the adapter does not adapt`);
          continue;
        }
        adapted++;
        let bound: Float64Array;
        if (name.endsWith(".weight") && t2.shape.length === 2) {
          const prefix = name.slice(0, -".weight".length);
          const A = original.get(prefix + ".lora_A")!, B = original.get(prefix + ".lora_B")!;
          bound = loraBound(A.data, B.data, A.shape[0], t2.shape[0], t2.shape[1], w);
        } else {
          bound = Float64Array.from(want, (v) => Math.abs(v) * U + SUBNORMAL);
        }
        let worst = 0, maxDiff = 0;
        for (let i = 0; i < got.length; i++) {
          const d = Math.abs(got[i] - want[i]);
          maxDiff = Math.max(maxDiff, d);
          worst = Math.max(worst, d / bound[i]);
        }
        assert.ok(worst <= 1, `${version} ${name}: |diff| up to ${maxDiff}, ${worst.toFixed(3)}× the f16 bound`);
        // f16 rounding did happen (the fixture is not the f32 file under another name), yet far below the delta.
        assert.ok(maxDiff > 0, `${name}: no rounding at all`);
        assert.ok(compare(got, w, 1e-3, 0).maxAbs > 1e-2, `${name} did not change`);
      }
      assert.equal(adapted, 3);
    } finally {
      a.close();
      base.close();
    }
  });
}

test("ai00: kept unmerged (server hot-swap), an ai00 LoRA gives the logits of the same file merged at load", async (t) => {
  const modelPath = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!modelPath) return;
  const spec = { path: join(FIXTURES, "v7", "ai00_lora.st"), alpha: LORA_ALPHA };
  const model = await loadModel(modelPath, { backend: "reference" });
  loadAdapterUnmerged(model, "ai00", spec);
  const merged = await loadModel(modelPath, { backend: "reference", adapters: [spec] });
  const s = model.initState();
  s.adapter = "ai00";
  const got = await model.forward(TOKENS, s, { allLogits: true });
  const want = await merged.forward(TOKENS, merged.initState(), { allLogits: true });
  const c = compare(got, want, 1e-5, 0);
  assert.ok(c.ok, `unmerged vs merged: ${c.maxAbs}`);
  assert.ok(compare(got, await model.forward(TOKENS, model.initState(), { allLogits: true }), 1e-2, 0).maxAbs > 1e-2, "the adapter left the logits unchanged");
});

/** safetensors header and data of a file, for byte comparisons. */
function rawTensors(path: string): { meta: unknown; tensors: Map<string, { dtype: string; shape: number[]; bytes: Buffer }> } {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const tensors = new Map<string, { dtype: string; shape: number[]; bytes: Buffer }>();
  let meta: unknown;
  for (const [k, v] of Object.entries(header)) {
    if (k === "__metadata__") { meta = v; continue; }
    tensors.set(k, { dtype: v.dtype, shape: v.shape, bytes: buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]) });
  }
  return { meta, tensors };
}

test("rwkv convert-adapter --to ai00 writes exactly what ai00's convert_safetensors.py makes of the adapter", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-ai00-"));
  try {
    for (const version of ["v6", "v7"]) {
      const out = join(dir, `${version}.st`);
      const r = await runCaptured(["convert-adapter", join(FIXTURES, version, "lora.safetensors"), out, "--to", "ai00"]);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /ai00 LoRA, f16, 5 tensors/);
      assert.match(r.out, /alpha it was trained with/);
      const ours = rawTensors(out), script = rawTensors(join(FIXTURES, version, "ai00_lora.st"));
      assert.deepEqual(ours.meta, { format: "pt" });
      assert.deepEqual([...ours.tensors.keys()], [...script.tensors.keys()], "names, in the script's (sorted) order");
      for (const [name, want] of script.tensors) {
        const got = ours.tensors.get(name)!;
        assert.equal(got.dtype, want.dtype, name);
        assert.deepEqual(got.shape, want.shape, name);
        assert.ok(got.bytes.equals(want.bytes), `${name}: f16 bytes differ from the script's`);
      }
    }
    // A peft directory carries its alpha: the command says what to give ai00.
    const p = await runCaptured(["convert-adapter", join(FIXTURES, "v7", "peft"), join(dir, "peft.st"), "--to", "ai00"]);
    assert.equal(p.code, 0, p.err);
    assert.match(p.out, /alpha = 8 /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("rwkv convert-adapter refuses what ai00 cannot apply, one clear line each", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-ai00-"));
  try {
    const fx = join(FIXTURES, "v7");
    const out = join(dir, "out.st");
    const file = (name: string, tensors: Parameters<typeof safetensorsF32>[0]) => {
      const path = join(dir, name);
      writeFileSync(path, safetensorsF32(tensors));
      return path;
    };
    const cases: Array<[string[], number, RegExp]> = [
      [[join(fx, "disha_bat.safetensors"), out, "--to", "ai00"], 1, /disha is a DiSHA tensor, which ai00\/web-rwkv cannot apply/],
      [[file("r6.safetensors", [{ name: "blocks.0.att.key.lora_A", shape: [6, 2], data: new Float32Array(12) }, { name: "blocks.0.att.key.lora_B", shape: [2, 6], data: new Float32Array(12) }]), out, "--to", "ai00"],
        1, /lora_A has rank 6: web-rwkv's LoRA kernel needs a rank that is a multiple of 4/],
      [[file("head.safetensors", [{ name: "head.weight", shape: [4, 2], data: new Float32Array(8) }]), out, "--to", "ai00"], 1, /head\.weight \[4, 2\] is a full matrix: web-rwkv would add it/],
      [[join(fx, "lora.safetensors"), out], 2, /--to is required/],
      [[join(fx, "lora.safetensors"), out, "--to", "gguf"], 2, /--to must be one of ai00, got "gguf"/],
    ];
    for (const [args, code, re] of cases) {
      const r = await runCaptured(["convert-adapter", ...args]);
      assert.equal(r.code, code, `${args.join(" ")}: ${r.out}${r.err}`);
      assert.match(r.err, re);
      assert.equal(r.err.trim().split("\n").length <= 2, true, r.err);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("ai00 files: renamed and transposed tensors map back; bad factors are refused naming both tensors", async (t) => {
  const v6 = sharedPath(t, "golden", "v6", "model.safetensors");
  if (!v6) return;
  const dir = mkdtempSync(join(tmpdir(), "rwkv-ai00-"));
  const base = loadCheckpoint(v6);
  try {
    const file = (name: string, tensors: Parameters<typeof safetensorsF16>[0]) => {
      const path = join(dir, name);
      writeFileSync(path, safetensorsF16(tensors, { format: "pt" }));
      return path;
    };
    const shape = (n: string) => base.checkpoint.tensors.get(n)!.shape;
    const [H, N] = shape("blocks.0.att.time_faaaa"), C = H * N;
    const first = Float32Array.from({ length: C }, (_, i) => i / 64);
    const mixK = Float32Array.from({ length: C }, (_, i) => 1 - i / 128);
    const state = Float32Array.from({ length: H * N * N }, (_, i) => (i % 97) / 32);
    const [O, I] = shape("blocks.1.att.key.weight");
    const path = file("v6.st", [
      { name: "blocks.0.att.time_first", shape: [H, N], data: first },
      { name: "blocks.1.ffn.time_mix_k", shape: shape("blocks.1.ffn.time_maa_k"), data: mixK },
      { name: "blocks.0.att.time_state", shape: [H, N, N], data: state },
      { name: "blocks.1.att.key.lora.0", shape: [I, 4], data: new Float32Array(I * 4).fill(0.25) },
      { name: "blocks.1.att.key.lora.1", shape: [O, 4], data: new Float32Array(O * 4).fill(0.5) },
    ]);
    const a = openAdapter({ path, alpha: 8 });
    try {
      const m = mergeAdapters(base.checkpoint, [a.adapter]).checkpoint.tensors;
      assert.deepEqual(m.get("blocks.0.att.time_faaaa")!.toFloat32(), first, "time_first is v6's time_faaaa");
      assert.deepEqual(m.get("blocks.1.ffn.time_maa_k")!.toFloat32(), mixK, "time_mix_k is v6's time_maa_k");
      assert.ok(!m.has("blocks.0.att.time_first"));
      // time_state was stored transposed (the converter swaps its last two axes): swapped back.
      const s = m.get("blocks.0.att.time_state")!.toFloat32();
      for (const [h, i, j] of [[0, 1, 2], [H - 1, N - 1, 0], [1, 5, 7]]) assert.equal(s[(h * N + i) * N + j], state[(h * N + j) * N + i]);
      // W += (8 / 4) · Σ_k 0.5 · 0.25 over 4 ranks = 1 everywhere.
      const w0 = base.checkpoint.tensors.get("blocks.1.att.key.weight")!.toFloat32(), w = m.get("blocks.1.att.key.weight")!.toFloat32();
      for (const i of [0, 17, w.length - 1]) assert.ok(Math.abs(w[i] - w0[i] - 1) < 1e-6, `delta ${w[i] - w0[i]}`);
    } finally {
      a.close();
    }
    const cases: Array<[string, RegExp]> = [
      [file("rank.st", [{ name: "blocks.1.att.key.lora.0", shape: [I, 4], data: new Float32Array(I * 4) }, { name: "blocks.1.att.key.lora.1", shape: [O, 8], data: new Float32Array(O * 8) }]),
        /blocks\.1\.att\.key\.lora\.0 \[\d+, 4\] has rank 4 but blocks\.1\.att\.key\.lora\.1 \[\d+, 8\] has rank 8/],
      [file("lonely.st", [{ name: "blocks.1.att.key.lora.1", shape: [O, 4], data: new Float32Array(O * 4) }]), /lora\.1 has no matching blocks\.1\.att\.key\.lora\.0/],
      [file("wide.st", [{ name: "blocks.1.att.key.lora.0", shape: [I + 4, 4], data: new Float32Array((I + 4) * 4) }, { name: "blocks.1.att.key.lora.1", shape: [O, 4], data: new Float32Array(O * 4) }]),
        /lora_A \(blocks\.1\.att\.key\.lora\.0 \(transposed\)\) has shape \[4, \d+\] but blocks\.1\.att\.key\.weight is .*model .*v6\/model\.safetensors/],
      [file("full.st", [{ name: "blocks.1.att.key.lora.0", shape: [I, 4], data: new Float32Array(I * 4) }, { name: "blocks.1.att.key.lora.1", shape: [O, 4], data: new Float32Array(O * 4) },
        { name: "blocks.1.att.key.weight", shape: [O, I], data: new Float32Array(O * I) }]), /blocks\.1\.att\.key\.weight \[\d+, \d+\] is a full matrix, which web-rwkv adds/],
    ];
    for (const [p, re] of cases) await assert.rejects(() => loadModel(v6, { backend: "reference", adapters: [{ path: p, kind: "lora" }] }), re);
  } finally {
    base.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
