import assert from "node:assert/strict";
import { test } from "node:test";
import { wasmAvailable } from "../src/core/backend/wasm.js";
import { loadModel } from "../src/node/load.js";
import { compare, sharedPath } from "./shared.js";

/*
 * The integer kernels' prompt path on a real quantized model (kernels.ts intTile for groups of 4
 * prompt rows, intPair for the rest and for stepping): a prompt's logits equal stepping token by
 * token, bit for bit, and stay within activation rounding's effect of the float reference. The
 * kernels alone are checked against their specification in backend-conformance.test.ts.
 */

test("rwkv.cpp's 5v2 Q8_0 file on wasm: prompt logits equal stepping bit for bit, and are within activation rounding of the reference", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-5v2-730K-FP32-to-Q8_0.bin");
  if (!path) return;
  const toks = Array.from(Buffer.from("The quick brown fox jumps over the lazy dog, then naps under an old oak."));
  const [wasm, ref] = await Promise.all([loadModel(path, { backend: "wasm", threads: 1 }), loadModel(path, { backend: "reference" })]);
  const a = await wasm.forward(toks, wasm.initState(), { allLogits: true });
  const r = await ref.forward(toks, ref.initState(), { allLogits: true });
  const V = a.length / toks.length;
  // Activation rounding moves this file's logits by up to 0.25 from the float reference (docs/quantization.md).
  const rounding = compare(a, r, 0, 0).maxAbs;
  assert.ok(compare(a, r, 0.3, 0).ok, `wasm vs reference ${rounding}`);
  const st = wasm.initState();
  for (let i = 0; i < toks.length; i++) assert.deepEqual(await wasm.step(toks[i], st), a.subarray(i * V, (i + 1) * V), `row ${i} equals stepping`);
  t.diagnostic(`max |logit diff| wasm vs reference ${rounding.toFixed(3)} over ${toks.length} prompt tokens`);
});
