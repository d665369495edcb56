import assert from "node:assert/strict";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import type { Backend } from "../src/core/backend/backend.js";
import { WasmBackend, wasmAvailable } from "../src/core/backend/wasm.js";
import type { Model } from "../src/core/model/model.js";
import { benchModel } from "../src/node/bench/measure.js";

/*
 * The asynchronous Model API: calls on one model made without waiting run one at a time in the
 * order they were made (the per-model arena serves one forward), so their results equal the same
 * calls made one after another; a call that fails does not block the ones queued behind it.
 * The CPU backends finish each call inside one microtask, so here the order holds even without
 * the model's queue; these tests pin the contract an asynchronous backend must keep.
 */

const V = 97;
const backends: Array<[string, () => Backend | null]> = [
  ["reference", () => referenceBackend],
  ["wasm", () => (wasmAvailable() ? new WasmBackend() : null)],
];
function small(be: Backend): Model {
  return benchModel({ random: { version: "7", nLayer: 2, nEmbd: 64, vocabSize: V, seed: 4 } }, "f32", be);
}
const TOKS = Array.from({ length: 40 }, (_, i) => (i * 13 + 5) % V);

for (const [label, make] of backends) {
  test(`concurrent step calls equal sequential ones: one state in call order, two states side by side [${label}]`, async (t) => {
    const be = make();
    if (!be) return t.skip("no WebAssembly SIMD here");
    const model = small(be);
    const seqA = model.initState(), seqB = model.initState();
    const wantA: Float32Array[] = [], wantB: Float32Array[] = [];
    for (const tok of TOKS) wantA.push(await model.step(tok, seqA));
    for (const tok of TOKS) wantB.push(await model.step((tok * 7) % V, seqB));

    // Every call issued before any settles: the same state advances in the order of the calls.
    const a = model.initState(), b = model.initState();
    const calls: Array<Promise<Float32Array>> = [];
    for (const tok of TOKS) { calls.push(model.step(tok, a)); calls.push(model.step((tok * 7) % V, b)); }
    const got = await Promise.all(calls);
    TOKS.forEach((_, i) => {
      assert.deepEqual(got[2 * i], wantA[i], `sequence A, token ${i}`);
      assert.deepEqual(got[2 * i + 1], wantB[i], `sequence B, token ${i}`);
    });
    assert.deepEqual(a.serialize(), seqA.serialize(), "state A");
    assert.deepEqual(b.serialize(), seqB.serialize(), "state B");

    // A prompt forward and steps of another sequence queued together.
    const p = model.initState(), q = model.initState();
    const [all, ...steps] = await Promise.all([model.forward(TOKS, p, { allLogits: true }), ...TOKS.slice(0, 5).map((tok) => model.step(tok, q))]);
    const fresh = model.initState();
    assert.deepEqual(all, await model.forward(TOKS, fresh, { allLogits: true }));
    steps.forEach((s, i) => assert.deepEqual(s, wantA[i], `step ${i} beside a forward`));
  });
}

test("a failing call rejects on its own; the calls queued behind it still run", async () => {
  const model = small(referenceBackend);
  const s = model.initState(), ref = model.initState();
  const want = await model.step(3, ref);
  const bad = model.step(V + 5, s); // outside the vocabulary
  const good = model.step(3, s);
  await assert.rejects(bad, /token id 102 is outside the vocabulary/);
  assert.deepEqual(await good, want, "the bad token left the state as it was");
  await assert.rejects(model.forward([], s), /empty token sequence/);
  await assert.rejects(model.stepBatch([1], [s, ref]), /1 tokens for 2 states/);
});
