import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test, type TestContext } from "node:test";
import OpenAI from "openai";
import { embedTexts, embedTokens } from "../src/core/embedding.js";
import type { Model } from "../src/core/model/model.js";
import type { Tokenizer } from "../src/core/tokenizer/types.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { RwkvServer } from "../src/node/server/server.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { runCaptured as run } from "./run-cli.js";
import { sharedPath } from "./shared.js";

/*
 * Embeddings: the model's final hidden state (after ln_out), mean-pooled over the tokens and scaled
 * to unit length; dimension = the model's width. Model: ../shared's tiny RWKV-7 (width 64, bytes).
 */

const WIDTH = 64; // tiny-rwkv-7v0-834K: n_embed = 64 in its rwkv.cpp header
const TEXTS = ["The quick brown fox", "jumps over the lazy dog.", "a", "RWKV is an RNN with transformer-level performance."];

let model: Model;
let tok: Tokenizer;
let modelPath: string;
let server: RwkvServer | null = null;
let client: OpenAI;
let url: string;

async function fixture(t: TestContext): Promise<boolean> {
  const p = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!p) return false;
  modelPath = p;
  model ??= await loadModel(p);
  tok ??= loadTokenizer({ kind: "bytes" });
  return true;
}

/** The server is started by the first test that needs it (the fixture check needs a TestContext). */
async function startServer(t: TestContext): Promise<boolean> {
  if (!(await fixture(t))) return false;
  if (!server) {
    server = new RwkvServer({ model, tokenizer: tok, modelName: "tiny", port: 0, maxPromptTokens: 500 });
    const { port } = await server.listen();
    url = `http://127.0.0.1:${port}`;
    client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
  }
  return true;
}

after(async () => {
  await server?.shutdown(0);
});

const norm = (v: ArrayLike<number>) => Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));

test("Model.hidden is the vector the head turns into the logits (head · hidden = forward's logits)", async (t) => {
  if (!(await fixture(t))) return;
  const { checkpoint, close } = loadCheckpoint(modelPath);
  const head = checkpoint.tensors.get("head.weight")!.toFloat32(); // (V, C)
  close();
  const tokens = tok.encode("hello world");
  const h = await model.hidden!(tokens, model.initState(), { allLogits: true }); // (T, C)
  const logits = await model.forward(tokens, model.initState(), { allLogits: true }); // (T, V)
  assert.equal(h.length, tokens.length * WIDTH);
  const V = 256;
  let worst = 0;
  for (let t0 = 0; t0 < tokens.length; t0++) {
    for (let v = 0; v < V; v++) {
      let dot = 0;
      for (let c = 0; c < WIDTH; c++) dot += head[v * WIDTH + c] * h[t0 * WIDTH + c];
      worst = Math.max(worst, Math.abs(dot - logits[t0 * V + v]));
    }
  }
  assert.ok(worst < 1e-4, `max |head·h - logits| = ${worst}`);
  // Without allLogits: the last position's row only.
  const last = await model.hidden!(tokens, model.initState());
  assert.deepEqual(Array.from(last), Array.from(h.subarray((tokens.length - 1) * WIDTH)));
});

test("embedTokens: mean over tokens of the hidden state, unit length, deterministic, chunk-independent", async (t) => {
  if (!(await fixture(t))) return;
  const tokens = tok.encode(TEXTS[3]);
  const h = await model.hidden!(tokens, model.initState(), { allLogits: true });
  const mean = new Float64Array(WIDTH);
  for (let i = 0; i < tokens.length; i++) for (let c = 0; c < WIDTH; c++) mean[c] += h[i * WIDTH + c] / tokens.length;
  const n = norm(mean);
  const e = await embedTokens(model, tokens);
  assert.equal(e.length, WIDTH);
  for (let c = 0; c < WIDTH; c++) assert.ok(Math.abs(e[c] - mean[c] / n) < 1e-6, `component ${c}: ${e[c]} vs ${mean[c] / n}`);
  assert.ok(Math.abs(norm(e) - 1) < 1e-6);
  assert.deepEqual(await embedTokens(model, tokens), e, "same input, same bits");
  const chunked = await embedTokens(model, tokens, { chunkLen: 7 });
  for (let c = 0; c < WIDTH; c++) assert.ok(Math.abs(chunked[c] - e[c]) < 1e-5, `chunked component ${c}`);
  const raw = await embedTokens(model, tokens, { normalize: false });
  assert.ok(Math.abs(norm(raw) - n) < 1e-4, "unnormalized keeps the mean's length");
  const last = await embedTokens(model, tokens, { pooling: "last" });
  const lastRow = h.subarray((tokens.length - 1) * WIDTH);
  const ln = norm(lastRow);
  for (let c = 0; c < WIDTH; c++) assert.ok(Math.abs(last[c] - lastRow[c] / ln) < 1e-6);
  // Different texts, different vectors; a batch equals its items one by one.
  const batch = await embedTexts(model, tok, TEXTS);
  assert.deepEqual(batch[3], e);
  assert.notDeepEqual(batch[0], batch[1]);
  await assert.rejects(() => embedTokens(model, []), /no tokens/);
  await assert.rejects(() => embedTexts(model, tok, ["x", ""]), /input\[1\]: encodes to no tokens/);
});

test("/v1/embeddings with the openai client: documented dimension, deterministic, batched == single, float == base64", async (t) => {
  if (!(await startServer(t))) return;
  // The client asks for base64 by default and decodes it to numbers.
  const single = await client.embeddings.create({ model: "tiny", input: TEXTS[1] });
  assert.equal(single.object, "list");
  assert.equal(single.data.length, 1);
  assert.equal(single.data[0].embedding.length, WIDTH);
  assert.equal(single.usage.prompt_tokens, tok.encode(TEXTS[1]).length);
  assert.ok(Math.abs(norm(single.data[0].embedding) - 1) < 1e-6);
  // The server's vector is the library's, bit for bit (float32 through base64).
  assert.deepEqual(single.data[0].embedding, Array.from(await embedTokens(model, tok.encode(TEXTS[1]))));

  const batch = await client.embeddings.create({ model: "tiny", input: TEXTS });
  assert.deepEqual(batch.data.map((d) => d.index), [0, 1, 2, 3]);
  assert.deepEqual(batch.data[1].embedding, single.data[0].embedding, "batched == single");
  assert.equal(batch.usage.total_tokens, TEXTS.reduce((s, x) => s + tok.encode(x).length, 0));
  const again = await client.embeddings.create({ model: "tiny", input: TEXTS });
  assert.deepEqual(again.data, batch.data, "deterministic");

  const floats = await client.embeddings.create({ model: "tiny", input: TEXTS[1], encoding_format: "float" });
  assert.deepEqual(floats.data[0].embedding, single.data[0].embedding, "float == base64");
  // Token ids are accepted as input, one list or several, and give the text's vector.
  const ids = await client.embeddings.create({ model: "tiny", input: [tok.encode(TEXTS[1]), tok.encode(TEXTS[2])], encoding_format: "float" });
  assert.deepEqual(ids.data[0].embedding, single.data[0].embedding);
  assert.deepEqual(ids.data[1].embedding, batch.data[2].embedding);
  const oneList = await client.embeddings.create({ model: "tiny", input: tok.encode(TEXTS[2]), encoding_format: "float" });
  assert.deepEqual(oneList.data[0].embedding, batch.data[2].embedding);
});

test("/v1/embeddings: bad input is a 400 naming the parameter", async (t) => {
  if (!(await startServer(t))) return;
  const cases: Array<[Record<string, unknown>, number, string | null, RegExp]> = [
    [{ model: "tiny", input: "" }, 400, "input", /input is empty/],
    [{ model: "tiny", input: [] }, 400, "input", /non-empty/],
    [{ model: "tiny", input: ["ok", 3] }, 400, "input", /input\[1\] must be a string/],
    [{ model: "tiny", input: [1, 2, 999] }, 400, "input", /input\[2\] = 999 is not a token id of this model \(0\.\.255\)/],
    [{ model: "tiny", input: "x".repeat(501) }, 400, "input", /501 tokens; this server accepts at most 500/],
    [{ model: "tiny", input: "x", encoding_format: "int8" }, 400, "encoding_format", /"float" or "base64"/],
    [{ model: "tiny", input: "x", dimensions: 32 }, 400, "dimensions", /have 64 dimensions/],
    [{ input: "x" }, 400, "model", /model is required/],
    [{ model: "other", input: "x" }, 404, "model", /does not exist/],
  ];
  for (const [body, status, param, re] of cases) {
    const res = await fetch(`${url}/v1/embeddings`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const j = (await res.json()) as { error: { message: string; param: string | null } };
    assert.equal(res.status, status, JSON.stringify(body));
    assert.equal(j.error.param, param, JSON.stringify(body));
    assert.match(j.error.message, re, JSON.stringify(body));
  }
  const res = await fetch(`${url}/v1/embeddings`, { method: "GET" });
  assert.equal(res.status, 405);
  // The server still answers afterwards.
  const ok = await client.embeddings.create({ model: "tiny", input: "still fine" });
  assert.equal(ok.data[0].embedding.length, WIDTH);
});

test("rwkv embed: one JSON line per input, the library's vector; bad usage is one line", async (t) => {
  if (!(await fixture(t))) return;
  const { code, out, err } = await run(["embed", modelPath, "--text", TEXTS[0], "--text", TEXTS[3]]);
  assert.equal(code, 0, err);
  const lines = out.trim().split("\n").map((l) => JSON.parse(l) as { index: number; tokens: number; dimension: number; embedding: number[] });
  assert.equal(lines.length, 2);
  assert.equal(lines[1].dimension, WIDTH);
  assert.equal(lines[1].tokens, TEXTS[3].length);
  assert.deepEqual(lines[1].embedding, Array.from(await embedTokens(model, tok.encode(TEXTS[3]))));
  const dir = mkdtempSync(join(tmpdir(), "rwkv-embed-"));
  const file = join(dir, "in.txt");
  writeFileSync(file, `${TEXTS[0]}\n\n${TEXTS[3]}\n`);
  const fromFile = await run(["embed", modelPath, "--input-file", file, "--pooling", "last"]);
  assert.equal(fromFile.code, 0, fromFile.err);
  const last = fromFile.out.trim().split("\n").map((l) => JSON.parse(l) as { embedding: number[] });
  assert.deepEqual(last[1].embedding, Array.from(await embedTokens(model, tok.encode(TEXTS[3]), { pooling: "last" })));
  for (const [argv, re] of [
    [["embed", modelPath], /--text TEXT \(or --input-file F\) is required/],
    [["embed", modelPath, "--text", "x", "--pooling", "max"], /--pooling must be mean or last, got "max"/],
    [["embed", modelPath, "--text", "x", "--input-file", file], /not both/],
  ] as Array<[string[], RegExp]>) {
    const r = await run(argv);
    assert.equal(r.code, 2, argv.join(" "));
    assert.match(r.err, re);
  }
});
