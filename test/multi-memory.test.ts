import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { test } from "node:test";
import { WasmBackend, wasmAvailable } from "../src/core/backend/wasm.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel, type Model } from "../src/core/model/model.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { spawnKernelWorker } from "../src/node/threads/spawn.js";
import { sharedPath } from "./shared.js";

/*
 * Weights spread over several WebAssembly memories (a model past wasm32's 4 GiB): each matmul runs
 * in the memory that holds its weights, with x copied in and y out, by the same kernel code, so a
 * model split over 2 or 3 memories must give the single-memory results bit for bit, at 1 and 2
 * threads. The split is forced on the small golden models by a small weights-per-memory limit.
 */

const TOKENS = [34, 105, 110, 32, 116, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110];

/** [fixture path parts, matrices option]: f32, f16 (kept as f16s), q8_0, q5_1 and load-time int8. */
const CASES: ReadonlyArray<[string[], "int8" | undefined]> = [
  [["golden", "v7", "model.safetensors"], undefined],
  [["golden", "v7", "model.safetensors"], "int8"],
  [["rwkv.cpp", "tiny-rwkv-7v0-834K-FP16.bin"], undefined],
  [["rwkv.cpp", "tiny-rwkv-5v2-730K-FP32-to-Q8_0.bin"], undefined],
  [["rwkv.cpp", "tiny-rwkv-7v0-834K-Q5_1.bin"], undefined],
];

/** Prefill (matrix-matrix kernels) with every position's logits, then decode steps; the final state. */
async function run(m: Model): Promise<{ all: Float32Array; steps: Float32Array[]; state: Uint8Array }> {
  const s = m.initState();
  const all = await m.forward(TOKENS, s, { allLogits: true });
  const steps = [await m.step(7, s), await m.step(200, s)];
  return { all, steps, state: s.serialize() };
}

/** The model in `path` on a backend of its own (the loader's backends are shared by every model of a process). */
function build(path: string, matrices: "int8" | undefined, threads: number, weightBytesPerMemory?: number): Model {
  const backend = new WasmBackend({ threads, spawn: spawnKernelWorker, weightBytesPerMemory });
  const { checkpoint, close } = loadCheckpoint(path);
  try {
    const version = detectVersion(checkpoint);
    return buildModel(checkpoint, architectureFor(version, path), version, backend, { matrices });
  } finally {
    close();
  }
}

/**
 * A model whose weights first-fit placement spreads over exactly `k` memories: limits from the
 * total over k upwards, since whole matrices cannot be split and first fit may need some slack.
 */
function splitInto(path: string, matrices: "int8" | undefined, total: number, k: number, threads: number): Model {
  for (let limit = Math.ceil(total / k); limit <= total; limit = Math.ceil(limit * 1.03)) {
    const m = build(path, matrices, threads, limit);
    const be = m.backend as WasmBackend;
    if (be.memories().length === k) return m;
    be.close();
  }
  throw new Error(`no weights-per-memory limit splits ${path} over exactly ${k} memories`);
}

for (const [parts, matrices] of CASES) {
  test(`a model split over 2 and 3 memories equals one memory bit for bit: ${parts.join("/")}${matrices ? ` (${matrices})` : ""}, threads 1 and 2`, async (t) => {
    if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
    const path = sharedPath(t, ...parts);
    if (!path) return;
    const single = build(path, matrices, 1);
    const one = single.backend as WasmBackend;
    assert.equal(one.memories().length, 1, "the default limits keep a small model in one memory");
    const want = await run(single);
    const total = one.memories()[0].weightBytes;
    for (const k of [2, 3]) {
      for (const threads of [1, 2]) {
        const split = splitInto(path, matrices, total, k, threads);
        const be = split.backend as WasmBackend;
        const mems = be.memories();
        assert.ok(mems.every((m) => m.weightBytes > 0), `every one of the ${k} memories holds weights: ${JSON.stringify(mems)}`);
        assert.equal(mems.reduce((s, m) => s + m.weightBytes, 0), total, "the same weights, only placed elsewhere");
        const parallel = be.calls.parallel;
        const got = await run(split);
        if (threads > 1) assert.ok(be.calls.parallel > parallel, "the restarted workers ran kernels in parallel");
        const what = `${k} memories, ${threads} thread(s)`;
        assert.deepEqual(got.all, want.all, `prefill logits, ${what}`);
        assert.deepEqual(got.steps, want.steps, `step logits, ${what}`);
        assert.deepEqual(got.state, want.state, `state, ${what}`);
        be.close();
      }
    }
  });
}

test("a model larger than the memory allowed fails to load with an error naming the file and the sizes", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const path = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!path) return;
  const limit = 1 << 20; // 1 MiB: under the file's 3.1 MiB of f32 weights
  const fileMiB = (statSync(path).size / 2 ** 20).toFixed(2);
  await assert.rejects(() => loadModel(path, { backend: "wasm", threads: 1, memory: { maxBytes: limit } }), (e: Error) => {
    assert.equal(e.name, "RwkvInputError");
    assert.ok(e.message.startsWith(`${path}: the model does not fit the memory allowed`), e.message);
    assert.ok(e.message.includes(`a ${fileMiB} MiB file`), `the file's size: ${e.message}`);
    assert.ok(e.message.includes("over the 1.00 MiB limit"), `the limit: ${e.message}`);
    const needed = Number(/would take ([\d.]+) MiB/.exec(e.message)?.[1]);
    assert.ok(needed > 1, `what it would take, more than the limit: ${e.message}`);
    return true;
  });
  // The same file loads under a limit it fits, split over several memories.
  const m = await loadModel(path, { backend: "wasm", threads: 1, memory: { maxBytes: 64 << 20, weightBytesPerMemory: 1 << 20 } });
  assert.ok((m.backend as WasmBackend).memories().length > 1);
  assert.ok(Number.isFinite((await m.step(0, m.initState()))[0]));
});

test("wasm backend: weight limits are checked", (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  assert.throws(() => new WasmBackend({ weightBytesPerMemory: 0 }), /memory limits must be positive/);
  assert.throws(() => new WasmBackend({ maxMemoryBytes: -1 }), /memory limits must be positive/);
});
