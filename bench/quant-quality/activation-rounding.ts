import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Model } from "../../src/core/model/model.js";
import { loadModel } from "../../src/node/load.js";

/*
 * What the integer kernels' activation rounding does to whole models (docs/quantization.md): on
 * rwkv.cpp's quantized tiny models, max |logit difference| over 64 tokens (every row of a prompt)
 * between the wasm backend and the reference backend (float activations), bits per byte on the first
 * BYTES of the Wikipedia text of docs/quantization.md on both, and for the 5v2 files the distance
 * to rwkv.cpp's own logits; then the golden models with int8 matrices.
 *
 * Usage: npm run build && node dist/bench/quant-quality/activation-rounding.js [BYTES]   (default 16384;
 * ../shared, or RWKV_SHARED; 1 thread; about 2 minutes on the 2-core VM).
 */

const SHARED = process.env.RWKV_SHARED ?? "../shared";
const BYTES = Number(process.argv[2] ?? 16384);
const FILES = ["4v0-660K-Q5_0", "4v0-660K-Q5_1", "5v1-730K-Q5_0", "5v1-730K-Q5_1", "5v2-730K-FP32-to-Q4_0", "5v2-730K-FP32-to-Q4_1",
  "5v2-730K-FP32-to-Q8_0", "5v2-730K-Q5_0", "5v2-730K-Q5_1", "6v0-1m-Q5_0", "6v0-1m-Q5_1", "7v0-834K-Q5_0", "7v0-834K-Q5_1"];
/** rwkv.cpp's test prompt `"in` (its reference logits are for these bytes). */
const RWKV_CPP_PROMPT = [34, 105, 110];
/** Where in the text the 64 compared tokens start (past the first article's title lines). */
const COMPARED_FROM = 1000;
const COMPARED = 64;
const CHUNK = 1024;

const DOCS = 20; // the first 20 articles, as docs/quantization.md's bits-per-byte tables
const wiki = JSON.parse(readFileSync(join(SHARED, "data/uncheatable_eval/wikipedia_english_20240601to20240615.json"), "utf8")) as string[];
const text = wiki.slice(0, DOCS).join("\n\n").replace(/[^\x00-\x7f]/g, ""); // eslint-disable-line no-control-regex

const f32 = (p: string): Float32Array => {
  const b = readFileSync(p);
  return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
};
function maxAbs(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Bits per byte of `bytes` (bytes vocabulary), in chunks of CHUNK tokens with the state carried. */
async function bitsPerByte(model: Model, bytes: Uint8Array): Promise<number> {
  const st = model.initState();
  let nll = 0, n = 0;
  for (let c = 0; c + 1 < bytes.length; c += CHUNK) {
    const chunk = Array.from(bytes.subarray(c, Math.min(bytes.length - 1, c + CHUNK)));
    const L = await model.forward(chunk, st, { allLogits: true });
    const V = L.length / chunk.length;
    for (let i = 0; i < chunk.length; i++) {
      const row = L.subarray(i * V, (i + 1) * V);
      let mx = -Infinity;
      for (const x of row) mx = Math.max(mx, x);
      let s = 0;
      for (const x of row) s += Math.exp(x - mx);
      nll += Math.log(s) + mx - row[bytes[c + i + 1]];
      n++;
    }
  }
  return nll / n / Math.LN2;
}

async function both(path: string, matrices?: "int8"): Promise<[Model, Model]> {
  const o = { threads: 1, ...(matrices ? { matrices } : {}) };
  return [await loadModel(path, { ...o, backend: "wasm" }), await loadModel(path, { ...o, backend: "reference" })];
}

async function allLogits(m: Model, toks: number[]): Promise<Float32Array> {
  return m.forward(toks, m.initState(), { allLogits: true });
}

console.log(`| file | wasm vs reference | bits/byte reference → wasm (${BYTES} bytes) | vs rwkv.cpp's logits: reference / wasm |`);
console.log("|---|--:|--:|--:|");
for (const f of FILES) {
  const path = join(SHARED, "rwkv.cpp", `tiny-rwkv-${f}.bin`);
  const enc = f.startsWith("6v0") ? Buffer.from(text, "utf16le") : Buffer.from(text, "latin1"); // 6v0 was trained on UTF-16LE
  const bytes = new Uint8Array(enc.subarray(0, BYTES));
  const toks = Array.from(bytes.subarray(COMPARED_FROM, COMPARED_FROM + COMPARED));
  const [wasm, ref] = await both(path);
  const [a, c] = [await allLogits(wasm, toks), await allLogits(ref, toks)];
  let cpp = "-";
  if (f.startsWith("5v2")) {
    const want = f32(join(SHARED, "rwkv.cpp", "reference", `tiny-rwkv-5v2-730K-FP32-to-${f.split("-").pop()}.p1.logits.f32`));
    cpp = `${maxAbs(await ref.forward(RWKV_CPP_PROMPT, ref.initState()), want).toFixed(3)} / ${maxAbs(await wasm.forward(RWKV_CPP_PROMPT, wasm.initState()), want).toFixed(3)}`;
  }
  console.log(`| ${f} | ${maxAbs(a, c).toFixed(3)} | ${(await bitsPerByte(ref, bytes)).toFixed(5)} → ${(await bitsPerByte(wasm, bytes)).toFixed(5)} | ${cpp} |`);
}

console.log("\n| model | wasm vs reference | max \\|logit\\| |");
console.log("|---|--:|--:|");
for (const v of ["v4", "v5", "v6", "v7"]) {
  const [wasm, ref] = await both(join(SHARED, "golden", v, "model.safetensors"), "int8");
  const toks = Array.from({ length: COMPARED }, (_, i) => (i * 37 + 11) % 200);
  const [a, c] = [await allLogits(wasm, toks), await allLogits(ref, toks)];
  let big = 0;
  for (const x of c) big = Math.max(big, Math.abs(x));
  console.log(`| golden ${v} \`--int8\` | ${maxAbs(a, c).toExponential(1)} | ${big.toFixed(2)} |`);
}
