import assert from "node:assert/strict";
import { test } from "node:test";
import type { Backend } from "../src/core/backend/backend.js";
import { referenceBackend } from "../src/core/backend/reference.js";
import { WasmBackend, wasmAvailable } from "../src/core/backend/wasm.js";
import type { Version } from "../src/core/model/model.js";
import { benchModel } from "../src/node/bench/measure.js";
import { loadModel } from "../src/node/load.js";
import { fileURLToPath } from "node:url";

/*
 * The engine over backend-resident tensors (model.ts, backend.ts TensorKernels). Long prompts run
 * in chunks with the state carried and must equal token-by-token stepping bit for bit; states
 * the wasm backend cannot keep resident go through the arena and back.
 *
 * The allocation contract (backend.ts Arena): once the first tokens have shaped the arena, decoding allocates no JavaScript typed array per token except the logits it returns.
 * Counted by wrapping every typed-array constructor and every method that makes a new array or
 * view (slice, subarray, map, filter, from, of) while the tokens run.
 */

const TYPED = [Float32Array, Float64Array, Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array] as const;
const METHODS = ["slice", "subarray", "map", "filter"] as const;

/** Runs f (to its end, when it is asynchronous) with every typed-array creation counted; returns the count. */
async function countTypedArrays(f: () => void | Promise<void>): Promise<number> {
  let count = 0;
  const g = globalThis as unknown as Record<string, unknown>;
  const restore: Array<() => void> = [];
  for (const C of TYPED) {
    const name = C.name;
    const original = g[name];
    g[name] = new Proxy(C, {
      construct(target, args, newTarget) { count++; return Reflect.construct(target, args, newTarget === g[name] ? target : newTarget); },
    });
    restore.push(() => { g[name] = original; });
    const proto = C.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
    for (const m of METHODS) {
      const fn = proto[m];
      proto[m] = function (this: unknown, ...a: unknown[]) { count++; return fn.apply(this, a); };
      restore.push(() => { proto[m] = fn; });
    }
    for (const m of ["from", "of"] as const) {
      const stat = C as unknown as Record<string, (...a: unknown[]) => unknown>;
      const fn = stat[m];
      stat[m] = function (this: unknown, ...a: unknown[]) { count++; return fn.apply(this, a); };
      restore.push(() => { stat[m] = fn; });
    }
  }
  try {
    await f();
  } finally {
    for (const r of restore) r();
  }
  return count;
}

const TOKENS = 1000;

const backends: Array<[string, () => Backend | null]> = [
  ["reference", () => referenceBackend],
  ["wasm", () => (wasmAvailable() ? new WasmBackend() : null)],
];

for (const [label, make] of backends) {
  for (const version of ["7", "6", "5.2", "4"] as Version[]) {
    test(`decoding ${TOKENS} tokens allocates one typed array per token, the logits [RWKV-${version}, ${label}]`, async (t) => {
      const be = make();
      if (!be) return t.skip("no WebAssembly SIMD here");
      const V = 97;
      const model = benchModel({ random: { version, nLayer: 2, nEmbd: 64, vocabSize: V, seed: 3 } }, "f32", be);
      const state = model.initState();
      for (let i = 0; i < 3; i++) await model.step(i, state); // the arena takes its shapes
      const kept: Float32Array[] = [];
      const n = await countTypedArrays(async () => {
        for (let i = 0; i < TOKENS; i++) kept.push(await model.step((i * 31) % V, state));
      });
      assert.equal(kept.length, TOKENS);
      assert.ok(kept.every((l) => l.length === V && Number.isFinite(l[0])), "real logits");
      assert.equal(n, TOKENS, `${n} typed arrays for ${TOKENS} tokens: only the returned logits may be new`);
      // A counter that counts: one extra array in the loop shows.
      assert.equal(await countTypedArrays(() => { new Float32Array(1).subarray(0); }), 2);
    });
  }
}

// A file whose embedding is stored in a compact type keeps it so (each token's row widened and
// ln0-normed as it is read): that path must not allocate per token either. The committed RWKV-7a
// golden model is stored in f16.
for (const backend of ["reference", "wasm"]) {
  test(`decoding ${TOKENS} tokens with an f16 embedding allocates only the logits [RWKV-7a file, ${backend}]`, async (t) => {
    if (backend === "wasm" && !wasmAvailable()) return t.skip("no WebAssembly SIMD here");
    const model = await loadModel(fileURLToPath(new URL("../../test/fixtures/golden/v7a/head64/model.safetensors", import.meta.url)), { backend, threads: 1 });
    const V = model.config.vocabSize;
    const state = model.initState();
    for (let i = 0; i < 3; i++) await model.step(i, state);
    const n = await countTypedArrays(async () => {
      for (let i = 0; i < TOKENS; i++) await model.step((i * 7) % V, state);
    });
    assert.equal(n, TOKENS, `${n} typed arrays for ${TOKENS} tokens: only the returned logits may be new`);
  });
}

for (const [label, make] of backends) {
  test(`a prompt longer than one chunk (600 tokens) gives every step's logits and state bit for bit, all or last rows, hidden too [${label}]`, async (t) => {
    const be = make();
    if (!be) return t.skip("no WebAssembly SIMD here");
    const V = 97, C = 64;
    const model = benchModel({ random: { version: "7", nLayer: 2, nEmbd: C, vocabSize: V, seed: 5 } }, "f32", be);
    const toks = Array.from({ length: 600 }, (_, i) => (i * 37 + 11) % V);
    const stepped = model.initState();
    const steps: Float32Array[] = [];
    for (const tok of toks) steps.push(await model.step(tok, stepped));
    const s1 = model.initState();
    const all = await model.forward(toks, s1, { allLogits: true });
    assert.equal(all.length, toks.length * V);
    toks.forEach((_, i) => assert.deepEqual(all.subarray(i * V, (i + 1) * V), steps[i], `logits at ${i}`));
    const s2 = model.initState();
    assert.deepEqual(await model.forward(toks, s2), steps[steps.length - 1], "last logits");
    for (const st of [s1, s2]) {
      st.layers.forEach((l, i) => { for (const name in l) assert.deepEqual([...l[name]], [...stepped.layers[i][name]], `state ${name} layer ${i}`); });
    }
    const h = await model.hidden!(toks, model.initState(), { allLogits: true });
    assert.equal(h.length, toks.length * C);
    assert.deepEqual(await model.hidden!(toks, model.initState()), h.subarray((toks.length - 1) * C), "last hidden row");
  });
}

test("wasm: states beyond the resident cap are copied into the arena and back, with the resident results", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const spec = { random: { version: "7" as Version, nLayer: 2, nEmbd: 64, vocabSize: 50, seed: 7 } };
  const resident = benchModel(spec, "f32", new WasmBackend());
  const capped = new WasmBackend({ residentStateBytes: 0 });
  const copied = benchModel(spec, "f32", capped);
  const [a, b, c] = [resident.initState(), copied.initState(), copied.initState()];
  for (let i = 0; i < 5; i++) {
    assert.deepEqual(await copied.step(i, b), await resident.step(i, a), `step ${i}`);
    assert.ok(b.layers.every((l) => !capped.isResident(l.att_kv)), "the capped backend kept no state");
  }
  assert.deepEqual((await copied.stepBatch([3, 4], [b, c])).subarray(0, 50), await resident.step(3, a), "stepBatch");
  b.layers.forEach((l, i) => { for (const name in l) assert.deepEqual([...l[name]], [...a.layers[i][name]], `state ${name} layer ${i}`); });
});
