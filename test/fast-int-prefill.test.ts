import assert from "node:assert/strict";
import { test } from "node:test";
import { selectBackend } from "../src/core/backend/registry.js";
import { WasmBackend, wasmAvailable } from "../src/core/backend/wasm.js";
import { MODEL_OPTIONS, modelLoadOptions, parse } from "../src/node/cli-util.js";
import { loadModel } from "../src/node/load.js";
import { compare, sharedPath } from "./shared.js";

/*
 * The opt-in fast integer prefill (WasmBackendOptions.fastIntPrefill, docs/quantization.md): how
 * it is asked for (typed options, the CLI flag) and what it does to a real quantized model. The
 * kernels themselves are checked against their specification in backend-conformance.test.ts.
 */

test("--fast-int-prefill: parsed into LoadOptions only when given, and the backend it selects has it on", (t) => {
  const on = parse(["m.bin", "--fast-int-prefill"], MODEL_OPTIONS, ["MODEL"]).values;
  assert.equal(modelLoadOptions(on).fastIntPrefill, true);
  assert.equal("fastIntPrefill" in modelLoadOptions(parse(["m.bin"], MODEL_OPTIONS, ["MODEL"]).values), false);
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const fast = selectBackend("wasm", { threads: 1, fastIntPrefill: true }), plain = selectBackend("wasm", { threads: 1 });
  assert.ok(fast instanceof WasmBackend && fast.fastIntPrefill, "asked for: on");
  assert.ok(plain instanceof WasmBackend && !plain.fastIntPrefill, "by default: off");
});

test("fastIntPrefill on rwkv.cpp's 5v2 Q8_0 file: prompt logits move by the size of activation rounding at most, and the default still equals stepping", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-5v2-730K-FP32-to-Q8_0.bin");
  if (!path) return;
  const toks = Array.from(Buffer.from("The quick brown fox jumps over the lazy dog, then naps under an old oak."));
  const [plain, fast, ref] = await Promise.all([
    loadModel(path, { backend: "wasm", threads: 1 }), loadModel(path, { backend: "wasm", threads: 1, fastIntPrefill: true }), loadModel(path, { backend: "reference" }),
  ]);
  const a = await plain.forward(toks, plain.initState(), { allLogits: true });
  const b = await fast.forward(toks, fast.initState(), { allLogits: true });
  const r = await ref.forward(toks, ref.initState(), { allLogits: true });
  const V = a.length / toks.length;
  // The first 4-row group is the fast tiles' (rows 0..3 of the first layer's products): it changes bits.
  assert.notDeepEqual(b, a, "fastIntPrefill ran the default kernels");
  // Activation rounding itself moves this file's logits by up to 0.25 from the float reference (docs/quantization.md);
  // the fast order may flip roundings downstream but stays within that effect's bound (test/rwkvcpp-models).
  const rounding = compare(a, r, 0, 0).maxAbs;
  assert.ok(compare(b, r, 0.3, 0).ok, `fast vs reference ${compare(b, r, 0, 0).maxAbs} (default vs reference ${rounding})`);
  // The default's rows equal stepping token by token, bit for bit.
  const st = plain.initState();
  for (let i = 0; i < toks.length; i++) assert.deepEqual(await plain.step(toks[i], st), a.subarray(i * V, (i + 1) * V), `default: row ${i} equals stepping`);
  t.diagnostic(`max |logit diff|: fast vs default ${compare(b, a, 0, 0).maxAbs.toExponential(2)}, fast vs reference ${compare(b, r, 0, 0).maxAbs.toFixed(3)}, default vs reference ${rounding.toFixed(3)}`);
});
