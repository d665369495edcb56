import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { Adapter } from "../src/core/adapters/adapter.js";
import { UnmergedUnsupportedError } from "../src/core/adapters/unmerged.js";
import type { Model } from "../src/core/model/model.js";
import type { TensorEntry } from "../src/core/tensor.js";
import { State } from "../src/core/model/state.js";
import { type AdapterSpec, loadAdapterUnmerged, openAdapter } from "../src/node/adapters.js";
import { safetensorsF32 } from "../src/core/adapters/write.js";
import { loadModel } from "../src/node/load.js";
import { compare, sharedPath } from "./shared.js";

/*
 * Adapters kept unmerged (Model.loadAdapter): one base model, each adapter only its low-rank
 * factors, chosen per State. Their logits must equal the model with the same adapter merged at
 * load (the fixtures of adapters.test.ts: random RWKV-PEFT LoRA/PiSSA adapters and a peft
 * directory for the golden v6/v7 models), and a batch mixing adapters must equal separate runs.
 */

const FIXTURES = join(import.meta.dirname, "..", "..", "test", "fixtures", "adapters");
const LORA_ALPHA = 24;
/** The issue's bound: W x + B'(A' x) against (W + B'A') x differ only by f32 rounding. */
const TOL = 1e-5;
const TOKENS = [1, 17, 300, 42, 5, 511, 0, 99];

const KINDS: ReadonlyArray<readonly [string, (dir: string) => AdapterSpec]> = [
  ["lora", (d) => ({ path: join(d, "lora.safetensors"), kind: "lora", alpha: LORA_ALPHA })],
  ["pissa", (d) => ({ path: join(d, "pissa.safetensors"), kind: "pissa", init: join(d, "pissa_init.safetensors") })],
  ["peft", (d) => ({ path: join(d, "peft") })],
];

const loadUnmerged = loadAdapterUnmerged;

function close(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  const c = compare(got, want, TOL, 0);
  assert.ok(c.ok, `${what}: max |diff| ${c.maxAbs} at ${c.worst}`);
}

for (const version of ["v6", "v7"]) {
  for (const backend of ["reference", "wasm"]) {
    test(`unmerged adapters ${version} ${backend}: logits equal the merged model's (step and sequence)`, async (t) => {
      const modelPath = sharedPath(t, "golden", version, "model.safetensors");
      if (!modelPath) return;
      const base = await loadModel(modelPath, { backend });
      for (const [kind, spec] of KINDS) loadUnmerged(base, kind, spec(join(FIXTURES, version)));
      const plain = base.initState();
      const baseLogits = await base.forward(TOKENS, plain, { allLogits: true });
      for (const [kind, spec] of KINDS) {
        const merged = await loadModel(modelPath, { backend, adapters: [spec(join(FIXTURES, version))] });
        // Sequence: every position's logits.
        const s = base.initState();
        s.adapter = kind;
        const want = await merged.forward(TOKENS, merged.initState(), { allLogits: true });
        const got = await base.forward(TOKENS, s, { allLogits: true });
        close(got, want, `${version} ${backend} ${kind} forward`);
        // The adapter matters: its logits are far from the base's.
        assert.ok(compare(got, baseLogits, 1e-2, 0).maxAbs > 1e-2, `${kind} did not change the logits`);
        // Step by step, states carried.
        const sm = merged.initState(), su = base.initState();
        su.adapter = kind;
        for (const tok of TOKENS) close(await base.step(tok, su), await merged.step(tok, sm), `${version} ${backend} ${kind} step ${tok}`);
        close(su.layers[1].att_kv, sm.layers[1].att_kv, `${version} ${backend} ${kind} state`);
      }
      // The base itself is untouched by the adapters loaded next to it.
      const fresh = await loadModel(modelPath, { backend });
      assert.deepEqual(baseLogits, await fresh.forward(TOKENS, fresh.initState(), { allLogits: true }));
    });

    test(`unmerged adapters ${version} ${backend}: stepBatch over states of different adapters equals separate runs`, async (t) => {
      const modelPath = sharedPath(t, "golden", version, "model.safetensors");
      if (!modelPath) return;
      const model = await loadModel(modelPath, { backend });
      for (const [kind, spec] of KINDS) loadUnmerged(model, kind, spec(join(FIXTURES, version)));
      // Runs of equal adapters, the base in between, and one adapter twice apart.
      const which = ["lora", "lora", undefined, "pissa", "peft", undefined, "lora"];
      const prompts = which.map((_, b) => [3 + b, 40 + 7 * b, 200 - b]);
      const start = async () => Promise.all(which.map(async (a, b) => {
        const s = model.initState();
        s.adapter = a;
        await model.forward(prompts[b], s);
        return s;
      }));
      const batched = await start(), alone = await start();
      // And each row against the model with its adapter merged (the base for undefined).
      const mergedFor = new Map<string | undefined, Model>([[undefined, await loadModel(modelPath, { backend })]]);
      for (const [kind, spec] of KINDS) mergedFor.set(kind, await loadModel(modelPath, { backend, adapters: [spec(join(FIXTURES, version))] }));
      const merged = await Promise.all(which.map(async (a, b) => {
        const s = mergedFor.get(a)!.initState();
        await mergedFor.get(a)!.forward(prompts[b], s);
        return s;
      }));
      const V = model.config.vocabSize;
      for (let i = 0; i < 4; i++) {
        const toks = which.map((_, b) => (11 * i + 5 * b) % V);
        const out = await model.stepBatch(toks, batched);
        for (let b = 0; b < which.length; b++) {
          const row = out.subarray(b * V, (b + 1) * V), what = `step ${i}, row ${b} (${which[b] ?? "base"})`;
          assert.deepEqual(row, await model.step(toks[b], alone[b]), what);
          close(row, await mergedFor.get(which[b])!.step(toks[b], merged[b]), `${what} vs merged`);
        }
      }
    });
  }
}

for (const version of ["v6", "v7"]) {
  test(`unmerged adapters ${version}: a state-tuning adapter (with a LoRA) starts its states from its time_state, equal to merging it`, async (t) => {
    const modelPath = sharedPath(t, "golden", version, "model.safetensors");
    if (!modelPath) return;
    const model = await loadModel(modelPath, { backend: "reference" });
    const { nLayer: L, nHead: H, headSize: N } = model.config;
    // Random time_state for every layer (seeded LCG), written as RWKV-PEFT's state file, plus the LoRA fixture.
    let seed = 12345;
    const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32 - 0.5);
    const dir = mkdtempSync(join(tmpdir(), "rwkv-unmerged-state-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, "state.safetensors");
    writeFileSync(file, safetensorsF32(Array.from({ length: L }, (_, i) => ({ name: `blocks.${i}.att.time_state`, shape: [H, N, N], data: Array.from({ length: H * N * N }, rand) }))));
    const lora = { path: join(FIXTURES, version, "lora.safetensors"), kind: "lora" as const, alpha: LORA_ALPHA };
    loadAdapterUnmerged(model, "state", { path: file });
    const both = openAdapter(lora), st = openAdapter({ path: file });
    model.loadAdapter!("both", { ...both.adapter, tensors: new Map([...both.adapter.tensors, ...st.adapter.tensors]) });
    both.close();
    st.close();
    const plain = await loadModel(modelPath, { backend: "reference" });
    const cases: Array<[string | undefined, Model]> = [
      [undefined, plain],
      ["state", await loadModel(modelPath, { backend: "reference", adapters: [{ path: file }] })],
      ["both", await loadModel(modelPath, { backend: "reference", adapters: [lora, { path: file }] })],
    ];
    const results: Float32Array[] = [];
    for (const [name, merged] of cases) {
      const s = model.initState(name);
      assert.equal(s.adapter, name);
      const got = await model.forward(TOKENS, s, { allLogits: true });
      close(got, await merged.forward(TOKENS, merged.initState(), { allLogits: true }), `${version} ${name ?? "base"}`);
      results.push(got);
    }
    assert.ok(compare(results[1], results[0], 1e-2, 0).maxAbs > 1e-2, "the time_state did not change the logits");
    // Batched together from their own starting states, each row as its own run.
    const states = cases.map(([name]) => model.initState(name)), V = model.config.vocabSize;
    const out = await model.stepBatch([7, 7, 7], states);
    for (const [b, [name]] of cases.entries()) assert.deepEqual(out.subarray(b * V, (b + 1) * V), await model.step(7, model.initState(name)), `row ${b}`);
    assert.throws(() => model.initState("nope"), /initState: adapter "nope" is not loaded/);
  });
}

test("unmerged adapters: refused clearly for DiSHA, another model's shape, unknown names; states keep their adapter", async (t) => {
  const v6 = sharedPath(t, "golden", "v6", "model.safetensors"), v7 = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!v6 || !v7) return;
  const model = await loadModel(v7, { backend: "reference" });
  assert.throws(() => loadUnmerged(model, "bat", { path: join(FIXTURES, "v7", "disha_bat.safetensors"), kind: "disha" }),
    /disha_bat\.safetensors: blocks\.\d+\.\S+ is a DiSHA tensor; adapters kept unmerged may hold only LoRA\/PiSSA factors, ln1\/ln2\/ln_out vectors and time_state/);
  assert.throws(() => loadUnmerged(model, "v6", { path: join(FIXTURES, "v6", "lora.safetensors"), kind: "lora" }),
    /v6\/lora\.safetensors: tensor blocks\.0\.att\.receptance\.lora_A has shape \[4, 96\] but blocks\.0\.att\.receptance\.weight is \[\d+, \d+\].*\(model .*v7\/model\.safetensors\)/);
  // A LoRA of the embedding (a lookup table, not a Linear) is for merging; so is a replaced ln0 (baked into it).
  const C = model.config.nEmbd, V = model.config.vocabSize;
  const entry = (name: string, shape: number[]): TensorEntry => ({ name, dtype: "f32", shape, toFloat32: () => new Float32Array(shape.reduce((p, d) => p * d, 1)) });
  const embLora: Adapter = { source: "emb-lora", tensors: new Map([["emb.lora_A", entry("emb.lora_A", [2, C])], ["emb.lora_B", entry("emb.lora_B", [V, 2])]]) };
  assert.throws(() => model.loadAdapter!("emb", embLora), (e: Error) => e instanceof UnmergedUnsupportedError && /emb-lora: emb\.lora_A adapts emb\.weight, which is not a Linear weight/.test(e.message));
  const ln0: Adapter = { source: "ln0", tensors: new Map([["blocks.0.ln0.weight", entry("blocks.0.ln0.weight", [C])]]) };
  assert.throws(() => model.loadAdapter!("ln0", ln0), (e: Error) => e instanceof UnmergedUnsupportedError && /blocks\.0\.ln0\.weight is a full-tensor tensor/.test(e.message));
  assert.throws(() => model.loadAdapter!("ln", { source: "ln", tensors: new Map([["ln_out.weight", entry("ln_out.weight", [C + 1])]]) }),
    /ln: tensor ln_out\.weight has shape \[\d+\] but the model's is \[\d+\]/);
  loadUnmerged(model, "lora", { path: join(FIXTURES, "v7", "lora.safetensors"), kind: "lora" });
  assert.throws(() => loadUnmerged(model, "lora", { path: join(FIXTURES, "v7", "lora.safetensors"), kind: "lora" }), /an adapter named "lora" is already loaded/);
  const s = model.initState();
  s.adapter = "nope";
  await assert.rejects(() => model.step(1, s), /state: uses adapter "nope", which this model has not loaded \(loaded: lora\)/);
  s.adapter = "lora";
  const round = State.deserialize(s.serialize());
  assert.equal(round.adapter, "lora");
  assert.equal(s.clone().adapter, "lora");
  assert.equal(State.deserialize(model.initState().serialize()).adapter, undefined);
});
