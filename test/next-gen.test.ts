import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { availableBackends, selectBackend } from "../src/core/backend/registry.js";
import type { Model } from "../src/core/model/model.js";
import { State } from "../src/core/model/state.js";
import { referenceBackend } from "../src/core/backend/reference.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
import { randomCheckpoint } from "../src/core/model/random.js";
import { PrefixCache } from "../src/core/prefix-cache.js";
import { checkStateBelongs, decodeStateFile, encodeStateFile, modelIdentity } from "../src/core/state-file.js";
import { describeCheckpoint } from "../src/node/inspect.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { RwkvServer } from "../src/node/server/server.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { runCaptured } from "./run-cli.js";
import { compare, readSafetensorsF32 } from "./shared.js";

/*
 * RWKV-7a, 7b, 8 rc00 and the 8 rc00 hybrid against the golden data of the official demo files
 * (test/fixtures/golden, made by tools/golden/make_golden.py): logits after every token (one
 * token per call), of the whole sequence and of two chunks, and the final states, on every backend.
 */

// The demo paths agree with each other to ~2e-6 in fp32 (golden.json max_abs_diff); the bound.
const ATOL = 1e-4, RTOL = 1e-4;
const FIXTURES = join(import.meta.dirname, "..", "..", "test", "fixtures", "golden");
const BACKENDS = availableBackends();
const GENERATIONS = [
  { dir: "v7a", version: "7a" }, { dir: "v7b", version: "7b" }, { dir: "v8", version: "8" }, { dir: "v8-hybrid", version: "8-hybrid" },
] as const;
const SHAPES = ["head64", "head32"] as const;
/** The state arrays the official state list holds, per layer (7b/hybrid: also the growing caches). */
const STATE_FIELDS = ["att_x_prev", "att_kv", "ffn_x_prev", "k_cache", "v_cache", "q_prev"];

interface GoldenMeta { tokens: number[]; split: number; config: { vocab_size: number; n_layer: number } }


function fixture(dir: string, shape: string) {
  const d = join(FIXTURES, dir, shape);
  const meta = JSON.parse(readFileSync(join(d, "golden.json"), "utf8")) as GoldenMeta;
  return { path: join(d, "model.safetensors"), meta, golden: readSafetensorsF32(join(d, "golden.safetensors")) };
}

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, what: string): number {
  const c = compare(got, want, ATOL, RTOL);
  assert.ok(c.ok, `${what}: max |diff| ${c.maxAbs} (first bad element ${c.worst})`);
  return c.maxAbs;
}

function assertState(state: State, golden: Map<string, Float32Array>, path: string, L: number, tokens: readonly number[]): void {
  for (let i = 0; i < L; i++) {
    for (const name of STATE_FIELDS) {
      const want = golden.get(`${path}.L${i}.${name}`);
      if (!want) continue; // a field this generation does not have
      assert.ok(state.layers[i][name], `layer ${i} has ${name}`);
      assertClose(state.layers[i][name], want, `${path} state layer ${i} ${name}`);
    }
    if (golden.has(`${path}.L${i}.k_cache`)) assert.deepEqual([...state.layers[i].ctx_tokens], tokens, `layer ${i} ctx_tokens`);
  }
}

// The fixtures are F16 files of f16-exact values; the official code ran them upcast to f32, so the
// models load with matrices "f32" (the DeepEmbed folds are then kept in f32 as the golden run did).
const load = (path: string, backend: string): Promise<Model> => loadModel(path, { backend, matrices: "f32" });

for (const { dir, version } of GENERATIONS) {
  test(`next-gen ${dir}: detected as RWKV-${version}`, () => {
    for (const shape of SHAPES) {
      const { checkpoint, close } = loadCheckpoint(fixture(dir, shape).path);
      assert.equal(detectVersion(checkpoint), version);
      close();
    }
  });

  for (const backend of BACKENDS) {
    for (const shape of SHAPES) {
      test(`next-gen ${dir} ${shape} [${backend}]: step, sequence and chunked logits and states match the official code`, async () => {
        const { path, meta, golden } = fixture(dir, shape);
        const model = await load(path, backend);
        const { tokens, split } = meta;
        const V = meta.config.vocab_size, L = meta.config.n_layer;
        assert.equal(model.config.version, version);

        const s = model.initState();
        for (const [t, tok] of tokens.entries()) assertClose(await model.step(tok, s), golden.get("rnn.logits")!.subarray(t * V, (t + 1) * V), `step logits t=${t}`);
        assertState(s, golden, "rnn", L, tokens);

        const seq = model.initState();
        assertClose(await model.forward(tokens, seq, { allLogits: true }), golden.get("seq.logits")!, "sequence logits");
        assertState(seq, golden, "seq", L, tokens);

        const ch = model.initState();
        const first = await model.forward(tokens.slice(0, split), ch, { allLogits: true });
        const rest = await model.forward(tokens.slice(split), ch, { allLogits: true });
        const all = new Float32Array(tokens.length * V);
        all.set(first);
        all.set(rest, split * V);
        assertClose(all, golden.get("chunked.logits")!, "chunked logits");
        assertState(ch, golden, "chunked", L, tokens);

        // Batched decoding: two sequences at different positions equal their own steps.
        const a = model.initState(), b = model.initState();
        await model.forward(tokens.slice(0, 5), a);
        await model.forward(tokens.slice(0, 2), b);
        const a1 = a.clone(), b1 = b.clone();
        const batch = await model.stepBatch([tokens[5], tokens[2]], [a, b]);
        assertClose(batch.subarray(0, V), await model.step(tokens[5], a1), "stepBatch row 0");
        assertClose(batch.subarray(V), await model.step(tokens[2], b1), "stepBatch row 1");
      });
    }
  }
}

// ---- the growing state of 7b and the hybrid -------------------------------------------------

for (const dir of ["v7b", "v8-hybrid"] as const) {
  for (const backend of BACKENDS) {
    test(`next-gen ${dir} [${backend}]: the state grows per token; a saved and restored state continues identically`, async () => {
      const { path, meta, golden } = fixture(dir, "head32");
      const model = await load(path, backend);
      const { tokens, split } = meta;
      const V = meta.config.vocab_size, L = meta.config.n_layer;
      // Per layer and token: 32 floats of k, 32 of v, one token id (the official cache layout).
      const perToken = L * (2 * 32 + 1);
      const s = model.initState();
      const fresh = s.size;
      const logits = await model.forward(tokens.slice(0, split), s);
      assert.equal(s.size, fresh + split * perToken);

      const file = encodeStateFile({ model: modelIdentity(model), state: s, logits, tokens: split, extra: null });
      const back = decodeStateFile(file, "7b.state");
      checkStateBelongs(back, model, "7b.state");
      assert.deepEqual([...back.logits!], [...logits]);
      const want = await model.forward(tokens.slice(split), s, { allLogits: true });
      const got = await model.forward(tokens.slice(split), back.state, { allLogits: true });
      assert.deepEqual([...got], [...want], "the restored state continues bit for bit");
      assertClose(got, golden.get("chunked.logits")!.subarray(split * V), "restored state against the golden chunk");

      // A cache cut short (or from another model) is refused by name, not computed with.
      const bad = back.state.clone();
      bad.layers[1].k_cache = bad.layers[1].k_cache.subarray(0, 32 * 3);
      assert.throws(() => checkStateBelongs({ ...back, state: bad }, model, "cut.state"), /cut\.state.*layer 1: k_cache has 96 values but v_cache/);
    });

    test(`next-gen ${dir} [${backend}]: the prefix cache stores and restores the growing state`, async () => {
      const { path, meta, golden } = fixture(dir, "head64");
      const model = await load(path, backend);
      const { tokens, split } = meta;
      const V = meta.config.vocab_size;
      const cache = new PrefixCache(1 << 24);
      const s = model.initState();
      const logits = await model.forward(tokens.slice(0, split), s);
      cache.store(tokens.slice(0, split), s, logits);
      assert.equal(cache.bytes, 4 * (s.size + V) + 8 * split, "the entry is accounted at its grown size");
      s.layers[0].k_cache.fill(0); // the cache holds a copy

      const hit = cache.lookup(tokens);
      assert.ok(hit);
      assert.equal(hit.length, split);
      assert.deepEqual([...hit.state.layers[2].ctx_tokens], tokens.slice(0, split));
      const rest = await model.forward(tokens.slice(split), hit.state, { allLogits: true });
      assertClose(rest, golden.get("chunked.logits")!.subarray(split * V), "continued from the prefix cache");
      assertState(hit.state, golden, "chunked", meta.config.n_layer, tokens);
    });
  }
}

test("next-gen: rwkv info reports a growing state for 7b and the hybrid, a fixed one for 7a and 8", () => {
  for (const { dir } of GENERATIONS) {
    const { checkpoint, close } = loadCheckpoint(fixture(dir, "head64").path);
    const d = describeCheckpoint(checkpoint);
    close();
    const L = 3, C = 64, N = 64;
    const fixed = L * (C + (C / N) * N * N + C); // att_x_prev, att_kv, ffn_x_prev
    if (dir === "v7b") assert.deepEqual(d.state, { fixed: fixed + L * 256, perToken: L * 65 }); // + q_prev (256) per layer
    else if (dir === "v8-hybrid") assert.deepEqual(d.state, { fixed, perToken: L * 65 });
    else assert.deepEqual(d.state, { fixed, perToken: 0 });
  }
});

// ---- storage types and random models --------------------------------------------------------

test("next-gen: compact storage keeps the per-token tables in the file's f16 (the official fp16 fold), int8 quantizes them", async () => {
  for (const { dir } of GENERATIONS) {
    const { path, meta } = fixture(dir, "head64");
    const run = async (matrices: "f32" | "compact" | "int8") => {
      const m = await loadModel(path, { backend: "reference", matrices });
      return m.forward(meta.tokens, m.initState(), { allLogits: true });
    };
    const f32 = await run("f32"), compact = await run("compact"), int8 = await run("int8");
    const diff = (a: Float32Array) => a.reduce((mx, x, i) => Math.max(mx, Math.abs(x - f32[i])), 0);
    if (dir === "v7a" || dir === "v7b") {
      // The folded table s_emb + LN0(emb) s_emb_xᵀ is rounded to f16 as the official fp16 code rounds it.
      assert.ok(diff(compact) > 1e-6 && diff(compact) < 5e-3, `${dir} compact: ${diff(compact)}`);
    } else {
      assert.equal(diff(compact), 0, `${dir}: f16-exact weights in f16 give the f32 results`);
    }
    assert.ok(diff(int8) > 1e-4 && diff(int8) < 0.2, `${dir} int8: ${diff(int8)}`);
  }
});

for (const version of ["7a", "7b", "8", "8-hybrid"] as const) {
  test(`next-gen: a random RWKV-${version} (rwkv bench --random ${version}) loads; its sequence equals its steps`, async () => {
    const ckpt = randomCheckpoint({ version, nLayer: 2, nEmbd: 64, vocabSize: 40, seed: 3 });
    assert.equal(detectVersion(ckpt), version);
    const model = buildModel(ckpt, architectureFor(version, ckpt.source), version, referenceBackend);
    const tokens = [1, 7, 39, 7, 0, 22];
    const seq = await model.forward(tokens, model.initState(), { allLogits: true });
    const s = model.initState();
    for (const [t, tok] of tokens.entries()) assertClose(await model.step(tok, s), seq.subarray(t * 40, (t + 1) * 40), `step ${t}`);
    assert.ok(seq.every(Number.isFinite));
    assert.ok(Math.max(...seq) - Math.min(...seq) > 0.1, "logits are not flat");
  });
}

test("next-gen: rwkv convert re-saves 7a/7b/8/hybrid as safetensors, pth and rwkv.cpp (f32) with identical logits", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-next-gen-"));
  try {
    for (const { dir: gen } of GENERATIONS) {
      const { path, meta } = fixture(gen, "head32");
      const original = await load(path, "reference");
      const want = await original.forward(meta.tokens, original.initState(), { allLogits: true });
      for (const ext of ["safetensors", "pth", "bin"]) { // bin: rwkv.cpp's layout of RWKV-7 (its block types apply)
        const out = join(dir, `${gen}.${ext}`);
        const r = await runCaptured(["convert", path, out]);
        assert.equal(r.code, 0, r.err);
        const m = await load(out, "reference");
        assert.equal(m.config.version, original.config.version);
        assert.deepEqual([...await m.forward(meta.tokens, m.initState(), { allLogits: true })], [...want], `${gen} via ${ext}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("next-gen: rwkv convert to GGUF refuses 7a/7b/8/hybrid by name (llama.cpp has no architecture for them)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-next-gen-gguf-"));
  try {
    for (const [gen, name] of [["v7a", "RWKV-7a"], ["v7b", "RWKV-7b"], ["v8", "RWKV-8 rc00"], ["v8-hybrid", "RWKV-8 rc00 hybrid"]] as const) {
      const r = await runCaptured(["convert", fixture(gen, "head32").path, join(dir, `${gen}.gguf`)]);
      assert.notEqual(r.code, 0);
      assert.match(r.err, new RegExp(`llama\\.cpp has no GGUF architecture for ${name} \\(only RWKV-7 "rwkv7" and RWKV-6 "rwkv6"\\)`));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const version of ["7b", "8-hybrid"] as const) {
  for (const backend of BACKENDS) {
    test(`next-gen: a 300-token RWKV-${version} prompt (three chunks) equals stepping token by token bit for bit [${backend}]`, async () => {
      const ckpt = randomCheckpoint({ version, nLayer: 2, nEmbd: 64, vocabSize: 40, seed: 5 });
      const model = buildModel(ckpt, architectureFor(version, ckpt.source), version, selectBackend(backend));
      const tokens = Array.from({ length: 300 }, (_, t) => (t * 7 + (t >> 3)) % 40);
      const seq = model.initState();
      const all = await model.forward(tokens, seq, { allLogits: true });
      const step = model.initState();
      for (const [t, tok] of tokens.entries()) {
        const l = await model.step(tok, step);
        if (t % 37 === 0 || t === 299) assert.deepEqual([...l], [...all.subarray(t * 40, (t + 1) * 40)], `t=${t}`);
      }
      for (let i = 0; i < 2; i++) for (const name of Object.keys(seq.layers[i])) assert.deepEqual([...step.layers[i][name]], [...seq.layers[i][name]], `layer ${i} ${name}`);
      assert.equal(seq.layers[1].ctx_tokens.length, 300);
    });
  }
}

test("next-gen: the server decodes RWKV-7b requests concurrently (stepBatch over growing states) as it does one by one, with the prefix cache", async () => {
  const tok = loadTokenizer({ kind: "bytes" });
  const ckpt = randomCheckpoint({ version: "7b", nLayer: 2, nEmbd: 64, vocabSize: tok.vocabSize, seed: 9 });
  const model = buildModel(ckpt, architectureFor("7b", ckpt.source), "7b", selectBackend("reference"));
  const server = new RwkvServer({ model, tokenizer: tok, modelName: "r7b", port: 0, slots: 4, cacheBytes: 1 << 24 });
  const { port } = await server.listen();
  try {
    const complete = async (prompt: string): Promise<string> => {
      const r = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: "r7b", prompt, max_tokens: 12, temperature: 0 }),
      });
      assert.equal(r.status, 200);
      return ((await r.json()) as { choices: Array<{ text: string }> }).choices[0].text;
    };
    const prompts = ["The attention", "grows with every token", "The attention cache"];
    const alone: string[] = [];
    for (const p of prompts) alone.push(await complete(p));
    // Greedy decoding by hand, token by token: what the server must reproduce.
    const s = model.initState();
    let logits = await model.forward(tok.encode(prompts[1]), s);
    const ids: number[] = [];
    for (let n = 0; n < 12; n++) {
      const next = logits.indexOf(Math.max(...logits));
      ids.push(next);
      logits = await model.step(next, s);
    }
    assert.equal(alone[1], tok.decode(ids));
    const together = await Promise.all(prompts.map(complete)); // batched, and prompts[2] extends a cached prefix
    assert.deepEqual(together, alone);
  } finally {
    await server.shutdown(0);
  }
});
