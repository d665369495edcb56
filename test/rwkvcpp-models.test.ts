import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { availableBackends } from "../src/core/backend/registry.js";
import type { State } from "../src/core/model/state.js";
import { loadModel } from "../src/node/load.js";
import { compare, sharedPath } from "./shared.js";

// rwkv.cpp's own test vector: the bytes `"in` from a zero state.
const TOKENS = [34, 105, 110];
const MODELS = ["4v0-660K", "5v1-730K", "5v2-730K", "6v0-1m", "7v0-834K"];
// shared/rwkv.cpp/reference has rwkv.cpp's full state for these (none was recorded for 6v0).
const WITH_STATE = new Set(["4v0-660K", "5v1-730K", "5v2-730K", "7v0-834K"]);
// Every check runs with every available backend (loading load.js registers Node's threaded wasm).
const BACKENDS = availableBackends();

const f32 = (path: string) => {
  const b = readFileSync(path);
  return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
};

/** Our state in rwkv.cpp's layout: per layer v4 [ffn_xx, att_xx, aa, bb, pp], v5+ [ffn_xx, att_xx, wkv]. */
function toRwkvCppLayout(s: State): Float32Array {
  const parts = s.layers.flatMap((l) => (s.version === "4"
    ? [l.ffn_xx, l.att_xx, l.att_aa, l.att_bb, l.att_pp]
    : [l.ffn_x_prev, l.att_x_prev, l.att_kv]));
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

for (const backend of BACKENDS) {
for (const m of MODELS) {
  test(`rwkv.cpp ${m} FP32 [${backend}]: logits after "in match expected-logits, state matches rwkv.cpp's`, async (t) => {
    const file = sharedPath(t, "rwkv.cpp", `tiny-rwkv-${m}-FP32.bin`);
    if (!file) return;
    const model = await loadModel(file, { backend });
    const state = model.initState();
    const logits = await model.forward(TOKENS, state);
    const c = compare(logits, f32(sharedPath(t, "rwkv.cpp", `expected-logits-${m}.bin`)!), 1e-4, 0);
    assert.ok(c.ok, `logits max |diff| ${c.maxAbs}`);
    // The same tokens one at a time (the recurrent form) land on the same logits.
    const s2 = model.initState();
    let last: Float32Array = new Float32Array(0);
    for (const tok of TOKENS) last = await model.step(tok, s2);
    const cs = compare(last, logits, 1e-5, 1e-5);
    assert.ok(cs.ok, `step vs sequence max |diff| ${cs.maxAbs}`);
    const refState = WITH_STATE.has(m) ? sharedPath(t, "rwkv.cpp", "reference", `tiny-rwkv-${m}-FP32.p1.state.f32`) : null;
    let stateDiff = NaN;
    if (refState) {
      const ref = f32(refState);
      const ours = toRwkvCppLayout(state);
      assert.equal(ours.length, ref.length, "state size");
      const st = compare(ours, ref, 1e-4, 1e-4);
      assert.ok(st.ok, `state max |diff| ${st.maxAbs}`);
      stateDiff = st.maxAbs;
    }
    t.diagnostic(`${m} FP32 [${backend}] logits max|diff| ${c.maxAbs} step-vs-seq ${cs.maxAbs} state ${stateDiff}`);
  });
}
}

/*
 * FP16 and quantized files. rwkv.cpp rounds the activations fed to those matmuls (to f16, or to
 * 8-bit blocks for quantized weights) while we dequantize the weights and compute in f32, so the
 * two differ by roughly the size of the quantization effect itself. Two checks:
 *  1. where rwkv.cpp's own logits for that file exist (5v2, every format), ours must be closer to
 *     them than they are to the FP32 logits: the disagreement is smaller than quantization itself;
 *  2. every file stays within a per-format bound of the FP32 logits. Measured max |diff| over the
 *     five models: FP16 4.5e-3, Q8_0 0.081, Q5_1 0.37, Q5_0 1.74 (5v1; 5-bit rounding of a 64-wide
 *     model), Q4_1 0.96, Q4_0 1.84 — the bounds below leave ~10-100% headroom over those.
 * The dequantization itself is checked block by block in formats.test.ts.
 */
const FORMAT_BOUND: Record<string, number> = { FP16: 1e-2, Q8_0: 0.2, Q5_1: 0.6, Q5_0: 2.0, Q4_1: 1.5, Q4_0: 2.5 };
const QUANTIZED = [
  ...MODELS.flatMap((m) => ["FP16", "Q5_0", "Q5_1"].map((q) => ({ m, q, file: `tiny-rwkv-${m}-${q}.bin`, ref: m === "5v2-730K" ? `tiny-rwkv-${m}-FP32-to-${q}` : null }))),
  ...["Q4_0", "Q4_1", "Q8_0"].map((q) => ({ m: "5v2-730K", q, file: `tiny-rwkv-5v2-730K-FP32-to-${q}.bin`, ref: `tiny-rwkv-5v2-730K-FP32-to-${q}` })),
].map((x) => ({ ...x, ref: x.q === "FP16" ? null : x.ref }));

for (const backend of BACKENDS) {
for (const { m, q, file, ref } of QUANTIZED) {
  test(`rwkv.cpp ${file} [${backend}]: logits within the ${q} bound${ref ? " and closer to rwkv.cpp's own than quantization moves them" : ""}`, async (t) => {
    const path = sharedPath(t, "rwkv.cpp", file);
    if (!path) return;
    const model = await loadModel(path, { backend });
    const logits = await model.forward(TOKENS, model.initState());
    const fp32 = f32(sharedPath(t, "rwkv.cpp", `expected-logits-${m}.bin`)!);
    const vsFp32 = compare(logits, fp32, FORMAT_BOUND[q], 0);
    assert.ok(vsFp32.ok, `vs FP32 max |diff| ${vsFp32.maxAbs} > ${FORMAT_BOUND[q]}`);
    let note = "";
    if (ref) {
      const theirs = f32(sharedPath(t, "rwkv.cpp", "reference", `${ref}.p1.logits.f32`)!);
      const quantEffect = compare(theirs, fp32, 0, 0).maxAbs;
      const vsTheirs = compare(logits, theirs, quantEffect, 0);
      assert.ok(vsTheirs.ok, `vs rwkv.cpp ${vsTheirs.maxAbs} not below rwkv.cpp's own quantization effect ${quantEffect}`);
      note = `, vs rwkv.cpp ${vsTheirs.maxAbs.toExponential(2)} (rwkv.cpp vs FP32 ${quantEffect.toExponential(2)})`;
    }
    t.diagnostic(`${file} [${backend}]: vs FP32 ${vsFp32.maxAbs.toExponential(2)}${note}`);
  });
}
}

/*
 * Block-quantized weights on the wasm backend go through integer kernels that also quantize the
 * activations per block of 32 to int8 (as rwkv.cpp does), so there compact and f32-upcast differ
 * by that effect: measured max |diff| 0.029 (4v0 Q5_0) ... 0.141 (5v2 Q4_0). f16/bf16 stay exact.
 */
const INT_ACTIVATION_BOUND = 0.3;

for (const backend of BACKENDS) {
test(`compact matrices (f16, bf16, block-quantized kept as stored) give the f32-upcast logits [${backend}]`, async (t) => {
  const files = [
    ["rwkv.cpp", "tiny-rwkv-7v0-834K-FP16.bin"], ["rwkv.cpp", "tiny-rwkv-6v0-1m-Q5_1.bin"],
    ["rwkv.cpp", "tiny-rwkv-5v2-730K-FP32-to-Q4_0.bin"], ["rwkv.cpp", "tiny-rwkv-5v2-730K-FP32-to-Q8_0.bin"],
    ["rwkv.cpp", "tiny-rwkv-4v0-660K-Q5_0.bin"], ["golden", "v7", "model_bf16.pth"], ["golden", "v5", "model_bf16.safetensors"],
  ];
  for (const parts of files) {
    const p = sharedPath(t, ...parts);
    if (!p) return;
    const compact = await loadModel(p, { backend }), upcast = await loadModel(p, { backend, matrices: "f32" });
    const toks = [34, 105, 110, 32, 116, 104, 101];
    const got = await compact.forward(toks, compact.initState(), { allLogits: true });
    const want = await upcast.forward(toks, upcast.initState(), { allLogits: true });
    if (backend === "reference" || !/Q\d_\d/.test(p)) assert.deepEqual(got, want, parts.join("/"));
    else assert.ok(compare(got, want, INT_ACTIVATION_BOUND, 0).ok, `${parts.join("/")}: max |diff| ${compare(got, want, 0, 0).maxAbs}`);
    assert.equal(compact.fingerprint, upcast.fingerprint);
  }
});
}
