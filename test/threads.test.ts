import assert from "node:assert/strict";
import { test } from "node:test";
import { WasmBackend, wasmAvailable } from "../src/core/backend/wasm.js";
import { loadModel } from "../src/node/load.js";
import { sharedPath } from "./shared.js";

/*
 * Threads split every kernel by outputs (matmul rows, WKV heads), and each output is computed by
 * the same instructions whoever computes it, so 2 threads must give exactly the 1-thread results:
 * logits, states, through forward (prefill), step and stepBatch, on float and integer kernels.
 */

const FILES = [["golden", "v7", "model.safetensors"], ["golden", "v5", "model_bf16.pth"], ["golden", "v6", "model.safetensors"],
  ["golden", "v4", "model.safetensors"], ["rwkv.cpp", "tiny-rwkv-5v2-730K-FP32-to-Q8_0.bin"], ["rwkv.cpp", "tiny-rwkv-7v0-834K-Q5_1.bin"]];
const TOKENS = [34, 105, 110, 32, 116, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110, 32, 102, 111, 120];

for (const parts of FILES) {
  test(`2 threads equal 1 thread exactly: ${parts.join("/")} forward, step, stepBatch and states`, async (t) => {
    if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
    const path = sharedPath(t, ...parts);
    if (!path) return;
    const one = await loadModel(path, { backend: "wasm", threads: 1 });
    const two = await loadModel(path, { backend: "wasm", threads: 2 });
    const be2 = two.backend as WasmBackend;
    assert.equal((one.backend as WasmBackend).threads, 1);
    assert.equal(be2.threads, 2);
    const before = be2.calls.parallel;
    const run = async (m: typeof one) => {
      const s = m.initState();
      const all = await m.forward(TOKENS, s, { allLogits: true }); // prefill: matrix-matrix kernels
      const step = await m.step(7, s); // decode: matrix-vector kernels
      const batch = [m.initState(), s.clone(), s.clone()];
      const b = await m.stepBatch([1, 2, 3], batch);
      return { all, step, b, state: s.serialize(), batch: batch.map((x) => x.serialize()) };
    };
    const a = await run(one), b = await run(two);
    assert.ok(be2.calls.parallel > before, "the 2-thread backend never ran a kernel in parallel");
    assert.deepEqual(b.all, a.all, "forward logits");
    assert.deepEqual(b.step, a.step, "step logits");
    assert.deepEqual(b.b, a.b, "stepBatch logits");
    assert.deepEqual(b.state, a.state, "state");
    assert.deepEqual(b.batch, a.batch, "stepBatch states");
  });
}

test("the default wasm backend uses every core; --threads picks another count", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!path) return;
  const m = await loadModel(path);
  assert.equal(m.backend.name, "wasm");
  assert.ok((m.backend as WasmBackend).threads >= 1);
  await assert.rejects(() => loadModel(path, { threads: 0 }), /threads must be a positive integer/);
  assert.equal((await loadModel(path, { backend: "reference", threads: 2 })).backend.name, "reference");
});
