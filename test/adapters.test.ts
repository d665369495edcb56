import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { mergeAdapters } from "../src/core/adapters/merge.js";
import { safetensorsF32 } from "../src/core/adapters/write.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { retypeMatrices } from "../src/core/formats/retype.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
import { selectBackend } from "../src/core/backend/registry.js";
import type { TensorEntry } from "../src/core/tensor.js";
import { type AdapterSpec, openAdapter } from "../src/node/adapters.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { runCaptured } from "./run-cli.js";
import { compare, sharedPath } from "./shared.js";

/*
 * Golden: test/fixtures/adapters/<v>/ holds random adapters of every kind for the golden v6/v7
 * models and the merged tensors computed by tools/adapter_golden.py, a NumPy re-implementation of
 * RWKV-PEFT's merge scripts (run once). Alphas there: 24 for the slim LoRA file, 8 in the peft config.
 */
const FIXTURES = join(import.meta.dirname, "..", "..", "test", "fixtures", "adapters");
const LORA_ALPHA = 24;
// f32 storage of a float64 reference result: a few ulps of weights of magnitude ~1.
const ATOL = 1e-6, RTOL = 1e-6;
const TOKENS = [1, 17, 300, 42, 5, 511, 0, 99];

const KINDS: ReadonlyArray<readonly [string, (dir: string) => AdapterSpec]> = [
  ["lora", (d) => ({ path: join(d, "lora.safetensors"), kind: "lora", alpha: LORA_ALPHA })],
  ["pissa", (d) => ({ path: join(d, "pissa.safetensors"), kind: "pissa", init: join(d, "pissa_init.safetensors") })],
  ["bone", (d) => ({ path: join(d, "disha_bone.safetensors"), kind: "disha" })],
  ["bat", (d) => ({ path: join(d, "disha_bat.safetensors"), kind: "disha" })],
  ["peft", (d) => ({ path: join(d, "peft") })],
];

function expectedFor(version: string, kind: string): Map<string, Float32Array> {
  const { checkpoint, close } = loadCheckpoint(join(FIXTURES, version, "expected.safetensors"));
  try {
    const out = new Map<string, Float32Array>();
    for (const [name, t] of checkpoint.tensors) if (name.startsWith(kind + "/")) out.set(name.slice(kind.length + 1), t.toFloat32());
    assert.ok(out.size > 0, `no expected tensors for ${kind}`);
    return out;
  } finally {
    close();
  }
}

function withOverrides(base: Checkpoint, values: Map<string, Float32Array>): Checkpoint {
  const tensors = new Map<string, TensorEntry>(base.tensors);
  for (const [name, v] of values) {
    const t = base.tensors.get(name)!;
    tensors.set(name, { name, dtype: "f32", shape: t.shape, toFloat32: () => v.slice() });
  }
  return { ...base, tensors };
}

for (const version of ["v6", "v7"]) {
  test(`adapters ${version}: every kind merges as RWKV-PEFT's merge scripts do (NumPy golden)`, (t) => {
    const modelPath = sharedPath(t, "golden", version, "model.safetensors");
    if (!modelPath) return;
    const base = loadCheckpoint(modelPath);
    try {
      for (const [kind, spec] of KINDS) {
        const a = openAdapter(spec(join(FIXTURES, version)));
        try {
          const { checkpoint } = mergeAdapters(base.checkpoint, [a.adapter]);
          const want = expectedFor(version, kind);
          for (const [name, t2] of checkpoint.tensors) {
            const got = t2.toFloat32();
            const w = want.get(name);
            if (w) {
              const c = compare(got, w, ATOL, RTOL);
              assert.ok(c.ok, `${version} ${kind} ${name}: max |diff| ${c.maxAbs}`);
              assert.ok(compare(got, base.checkpoint.tensors.get(name)!.toFloat32(), 1e-4, 0).maxAbs > 1e-3, `${kind} ${name} did not change`);
            } else {
              assert.deepEqual(got, base.checkpoint.tensors.get(name)!.toFloat32(), `${kind} changed ${name}, which it does not adapt`);
            }
          }
        } finally {
          a.close();
        }
      }
    } finally {
      base.close();
    }
  });

  test(`adapters ${version}: loadModel with adapters gives the logits of the golden merged weights`, async (t) => {
    const modelPath = sharedPath(t, "golden", version, "model.safetensors");
    if (!modelPath) return;
    const dir = join(FIXTURES, version);
    const specs = KINDS.map(([, s]) => s(dir));
    const merged = await loadModel(modelPath, { backend: "reference", adapters: specs });
    const want = new Map<string, Float32Array>();
    for (const [kind] of KINDS) for (const [k, v] of expectedFor(version, kind)) want.set(k, v);
    const base = loadCheckpoint(modelPath);
    try {
      const ref = withOverrides(base.checkpoint, want);
      const v = detectVersion(ref);
      const golden = buildModel(ref, architectureFor(v, modelPath), v, selectBackend("reference"));
      const plain = await loadModel(modelPath, { backend: "reference" });
      const a = await merged.forward(TOKENS, merged.initState(), { allLogits: true });
      const b = await golden.forward(TOKENS, golden.initState(), { allLogits: true });
      const c = compare(a, b, 1e-5, 1e-5);
      assert.ok(c.ok, `logits differ by ${c.maxAbs}`);
      assert.ok(compare(a, await plain.forward(TOKENS, plain.initState(), { allLogits: true }), 1e-3, 0).maxAbs > 1e-3, "adapters left the logits unchanged");
    } finally {
      base.close();
    }
  });
}

test("adapters: a v6 adapter on the v7 model is refused, naming the adapter, the tensor and the model", async (t) => {
  const v7 = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!v7) return;
  for (const [kind, spec] of KINDS) {
    const s = spec(join(FIXTURES, "v6"));
    await assert.rejects(() => loadModel(v7, { backend: "reference", adapters: [s] }), (e: Error) => {
      assert.match(e.message, new RegExp(s.path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")), `${kind}: ${e.message}`);
      assert.match(e.message, /v7\/model\.safetensors/, `${kind}: ${e.message}`);
      assert.match(e.message, /shape|does not have/, `${kind}: ${e.message}`);
      return true;
    });
  }
});

test("adapters: bad adapter files get one clear error each", async (t) => {
  const v6 = sharedPath(t, "golden", "v6", "model.safetensors");
  if (!v6) return;
  const dir = mkdtempSync(join(tmpdir(), "rwkv-adapters-"));
  try {
    const file = (name: string, tensors: Parameters<typeof safetensorsF32>[0]) => {
      const p = join(dir, name);
      writeFileSync(p, safetensorsF32(tensors));
      return p;
    };
    const cases: Array<[AdapterSpec, RegExp]> = [
      // a state-tuning file for another model shape (v7's 2 heads of 64 on v6's 3 heads of 32)
      [{ path: file("state.safetensors", [{ name: "blocks.0.att.time_state", shape: [2, 64, 64], data: new Float32Array(2 * 64 * 64) }]) },
        /time_state has shape \[2, 64, 64\] but the model's state for blocks\.0 is \[3, 32, 32\]/],
      [{ path: file("noB.safetensors", [{ name: "blocks.0.att.key.lora_A", shape: [2, 96], data: new Float32Array(192) }]) },
        /lora_A has no matching blocks\.0\.att\.key\.lora_B/],
      [{ path: file("unknown.safetensors", [{ name: "blocks.0.att.nothing", shape: [1], data: [1] }]) },
        /blocks\.0\.att\.nothing is neither a model tensor/],
      [{ path: file("badbat.safetensors", [{ name: "blocks.0.att.key.disha", shape: [12, 7, 7], data: new Float32Array(12 * 49) }]) },
        /Bat-form DiSHA must be \[in\/r, r, r\]/],
      [{ path: file("onlyln.safetensors", [{ name: "ln_out.weight", shape: [96], data: new Float32Array(96) }]), kind: "lora" },
        /not a LoRA adapter/],
      [{ path: join(dir, "onlyln.safetensors"), kind: "pissa" }, /needs its init file/],
      [{ path: join(dir, "missing.pth") }, /missing\.pth: no such file/],
      [{ path: dir }, /adapter_config\.json/],
    ];
    for (const [spec, re] of cases) await assert.rejects(() => loadModel(v6, { backend: "reference", adapters: [spec] }), re);
    mkdirSync(join(dir, "peft"));
    writeFileSync(join(dir, "peft", "adapter_config.json"), JSON.stringify({ peft_type: "LORA", r: 0, lora_alpha: 8 }));
    writeFileSync(join(dir, "peft", "adapter_model.safetensors"), safetensorsF32([]));
    await assert.rejects(() => loadModel(v6, { adapters: [{ path: join(dir, "peft") }] }), /"r" must be a positive integer, got 0/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("adapters: merged into a quantized base, matrices are re-quantized in the base's type (and it is said)", (t) => {
  const v6 = sharedPath(t, "golden", "v6", "model.safetensors");
  if (!v6) return;
  const base = loadCheckpoint(v6);
  const a = openAdapter({ path: join(FIXTURES, "v6", "lora.safetensors"), alpha: LORA_ALPHA });
  try {
    const q = retypeMatrices(base.checkpoint, "q8_0");
    const { checkpoint, notes } = mergeAdapters(q, [a.adapter]);
    const name = "blocks.0.att.receptance.weight";
    assert.equal(checkpoint.tensors.get(name)!.dtype, "q8_0");
    assert.match(notes.join("\n"), /2 matrices merged and re-quantized to q8_0/);
    // q8_0 keeps ~1/254 of each block's max: the merged values within that of the golden f32 merge
    const c = compare(checkpoint.tensors.get(name)!.toFloat32(), expectedFor("v6", "lora").get(name)!, 0.01, 0);
    assert.ok(c.ok, `q8_0 merge off by ${c.maxAbs}`);
  } finally {
    a.close();
    base.close();
  }
});

test("rwkv merge writes a checkpoint equal to loading with the adapters; bad usage is one line", async (t) => {
  const v7 = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!v7) return;
  const dir = mkdtempSync(join(tmpdir(), "rwkv-merge-"));
  try {
    const fx = join(FIXTURES, "v7");
    const out = join(dir, "merged.safetensors");
    const r = await runCaptured(["merge", v7, join(fx, "lora.safetensors"), join(fx, "disha_bat.safetensors"), out, "--alpha", String(LORA_ALPHA),
      "--pissa", `${join(fx, "pissa.safetensors")}:${join(fx, "pissa_init.safetensors")}`]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /merged .*lora\.safetensors \(LoRA, full tensors\).*disha_bat\.safetensors \(DiSHA\).*pissa\.safetensors \(PiSSA\)/);
    const merged = await loadModel(out, { backend: "reference" });
    const loaded = await loadModel(v7, { backend: "reference", adapters: [
      { path: join(fx, "lora.safetensors"), alpha: LORA_ALPHA }, { path: join(fx, "disha_bat.safetensors") },
      { path: join(fx, "pissa.safetensors"), kind: "pissa", init: join(fx, "pissa_init.safetensors") }] });
    const c = compare(await merged.forward(TOKENS, merged.initState()), await loaded.forward(TOKENS, loaded.initState()), 1e-6, 0);
    assert.ok(c.ok, `merged file vs merged at load: ${c.maxAbs}`);
    const bad = await runCaptured(["merge", v7, join(FIXTURES, "v6", "lora.safetensors"), join(dir, "x.safetensors")]);
    assert.equal(bad.code, 1);
    assert.equal(bad.err.trim().split("\n").length, 1, bad.err);
    assert.match(bad.err, /v6\/lora\.safetensors: tensor blocks\.0\.att\.receptance\.lora_A has shape \[4, 96\] but blocks\.0\.att\.receptance\.weight is \[128, 128\]/);
    const usage = await runCaptured(["merge", v7, join(dir, "x.safetensors")]);
    assert.equal(usage.code, 2);
    assert.match(usage.err, /expected BASE ADAPTER\.\.\. OUT/);
    // A PiSSA adapter alone: BASE OUT --pissa P:I (no positional ADAPTER).
    const pissaOut = join(dir, "pissa.safetensors");
    const pissaSpec = { path: join(fx, "pissa.safetensors"), kind: "pissa" as const, init: join(fx, "pissa_init.safetensors") };
    const p = await runCaptured(["merge", v7, pissaOut, "--pissa", `${pissaSpec.path}:${pissaSpec.init}`]);
    assert.equal(p.code, 0, p.err);
    const pm = await loadModel(pissaOut, { backend: "reference" }), pl = await loadModel(v7, { backend: "reference", adapters: [pissaSpec] });
    const pc = compare(await pm.forward(TOKENS, pm.initState()), await pl.forward(TOKENS, pl.initState()), 1e-6, 0);
    assert.ok(pc.ok, `PiSSA-only merged file vs merged at load: ${pc.maxAbs}`);
    const dtype = await runCaptured(["merge", v7, join(fx, "lora.safetensors"), join(dir, "x.safetensors"), "--dtype", "q3"]);
    assert.match(dtype.err, /--dtype must be one of/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("--lora PATH:ALPHA on generate merges at load (CLI)", async (t) => {
  const v6 = sharedPath(t, "golden", "v6", "model.safetensors");
  if (!v6) return;
  const fx = join(FIXTURES, "v6");
  const args = ["generate", v6, "--prompt", "ab", "--max-tokens", "8", "--greedy", "--tokenizer-kind", "bytes"];
  const plain = await runCaptured(args);
  const lora = await runCaptured([...args, "--lora", `${join(fx, "lora.safetensors")}:${LORA_ALPHA}`]);
  const again = await runCaptured([...args, "--lora", `${join(fx, "lora.safetensors")}:${LORA_ALPHA}`]);
  assert.equal(plain.code, 0, plain.err);
  assert.equal(lora.code, 0, lora.err);
  assert.equal(lora.out, again.out);
  assert.notEqual(lora.out, plain.out, "the LoRA did not change the greedy continuation");
  const bad = await runCaptured([...args, "--lora", join(FIXTURES, "v7", "lora.safetensors")]);
  assert.equal(bad.code, 1);
  assert.match(bad.err, /v7\/lora\.safetensors: tensor .* has shape/);
});
