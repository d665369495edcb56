import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import { wasmAvailable } from "../src/core/backend/wasm.js";
import { GGML_TYPES, ggmlToFloat32 } from "../src/core/formats/ggml-quants.js";
import { quantize } from "../src/core/formats/quantize.js";
import { retypeMatrices } from "../src/core/formats/retype.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
import { randomCheckpoint, type RandomModelSpec } from "../src/core/model/random.js";
import { numel } from "../src/core/tensor.js";
import { currentSimd } from "../src/node/bench/jobs.js";
import { benchModel } from "../src/node/bench/measure.js";
import { wasmBackend } from "../src/node/threads/pool.js";
import { prepareNodeWebGpu } from "../src/node/webgpu.js";
import { bitsEqual, compare, sharedPath } from "./shared.js";
import { runCaptured as run } from "./run-cli.js";

/*
 * `rwkv bench` on tiny models with few runs: the numbers are not checked for speed (that is what
 * the benchmark is for) but for being what they claim: one row per dtype × threads, medians of the
 * runs, weight bytes that follow from the tensor shapes, a context run whose plot holds its data.
 */

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");
const TINY = ["--random", "7", "--layers", "2", "--embd", "128", "--vocab", "256"];
const TINY_SPEC: RandomModelSpec = { version: "7", nLayer: 2, nEmbd: 128, vocabSize: 256, seed: 1 };

interface Stat { median: number; runs: number[] }
interface Probe { bytes: number; cols: number; bytesPerSecond: number; runs: number[]; otherCores: unknown[] }
interface Row { dtype: string; threads: number; simd?: string; decode: Stat; prefill: Record<string, Stat>; weightBytesPerToken: number; peakRssBytes: number; gbPerSecond: number; probe: Probe; probeGbPerSecond: number; probeFraction: number; config: { nLayer: number; nEmbd: number; vocabSize: number } }
interface Report { rows: Row[]; probeMib: number; runs: number }

/** Bytes of the matrices a v7 token reads: every 2-D tensor but the embedding, r_k (a vector) and layer 0's unused v LoRA. */
function expectedWeightBytes(spec: RandomModelSpec, dtype: "f32" | "q8_0"): number {
  let bytes = 0;
  for (const t of randomCheckpoint(spec).tensors.values()) {
    if (t.shape.length !== 2 || t.name === "emb.weight" || t.name.endsWith(".r_k") || /^blocks\.0\.att\.v[12]$/.test(t.name)) continue;
    const linear = t.name.endsWith(".weight"); // re-typed; LoRA factors stay f32
    bytes += linear && dtype === "q8_0" ? (numel(t.shape) / 32) * 34 : 4 * numel(t.shape);
  }
  return bytes;
}

test("random RWKV-7: a release's tensor names and shapes, deterministic values, the requested config", () => {
  // Building the checkpoint of the full 0.1B shape is free (values are made when read): check its shapes.
  const big = randomCheckpoint({ version: "7", nLayer: 12, nEmbd: 768, vocabSize: 65536 });
  const shape = (n: string) => big.tensors.get(n)?.shape;
  assert.equal(detectVersion(big), "7");
  assert.deepEqual(shape("emb.weight"), [65536, 768]);
  assert.deepEqual(shape("head.weight"), [65536, 768]);
  assert.deepEqual(shape("blocks.11.att.r_k"), [12, 64]);
  assert.deepEqual(shape("blocks.11.ffn.key.weight"), [3072, 768]);
  assert.deepEqual(shape("blocks.11.ffn.value.weight"), [768, 3072]);
  assert.deepEqual(shape("blocks.0.att.x_g"), [1, 1, 768]);
  // The released 0.1B's LoRA widths follow from the train code's formula at C = 768.
  assert.deepEqual(["w1", "a1", "v1", "g1"].map((n) => shape(`blocks.3.att.${n}`)), [[768, 64], [768, 64], [768, 32], [768, 128]]);
  assert.deepEqual(shape("blocks.3.att.g2"), [128, 768]);
  // emb, ln0 (2), ln_out (2), head; per layer ln1, ln2, ln_x (2 each), 6 mixes, w0 a0 v0, 8 LoRA
  // factors, k_k k_a r_k, 4 projections, ffn x_k key value (layer 0's unused v0/v1/v2 too, as released files have them).
  assert.equal(big.tensors.size, 6 + 12 * (6 + 6 + 3 + 8 + 3 + 4 + 3));
  assert.equal(big.tensors.has("blocks.12.ln1.weight"), false);

  const a = randomCheckpoint(TINY_SPEC), b = randomCheckpoint(TINY_SPEC), c = randomCheckpoint({ ...TINY_SPEC, seed: 2 });
  const key = (k: typeof a) => k.tensors.get("blocks.1.att.key.weight")!.toFloat32();
  assert.ok(bitsEqual(key(a), key(b)), "same seed, same weights");
  assert.ok(!bitsEqual(key(a), key(c)), "another seed, other weights");
  const w = key(a);
  assert.ok(w.every((x) => Number.isFinite(x) && Math.abs(x) < 0.1) && w.some((x) => x !== 0), "plausible, not zero");
  for (const t of a.tensors.values()) assert.ok(t.toFloat32().some((x) => x !== 0), `${t.name} is all zeros`);
  const model = buildModel(a, architectureFor("7", a.source), "7", referenceBackend);
  assert.deepEqual({ ...model.config }, { version: "7", nLayer: 2, nEmbd: 128, vocabSize: 256, dimAtt: 128, nHead: 2, headSize: 64, dimFfn: 512 });
});

test("random RWKV-4, 5.2 and 6: detected as their version, the configs of released shapes, wasm equal to the reference", async (t) => {
  const want: Record<string, { nHead: number; headSize: number; dimFfn: number }> = {
    "4": { nHead: 1, headSize: 128, dimFfn: 512 }, "5.2": { nHead: 2, headSize: 64, dimFfn: 448 }, "6": { nHead: 2, headSize: 64, dimFfn: 448 },
  };
  for (const version of ["4", "5.2", "6"] as const) {
    const spec: RandomModelSpec = { ...TINY_SPEC, version };
    const ckpt = randomCheckpoint(spec);
    assert.equal(detectVersion(ckpt), version);
    for (const e of ckpt.tensors.values()) assert.ok(e.toFloat32().some((x) => x !== 0), `${version}: ${e.name} is all zeros`);
    const ref = benchModel({ random: spec }, "f32", referenceBackend);
    assert.deepEqual({ ...ref.config }, { version, nLayer: 2, nEmbd: 128, vocabSize: 256, dimAtt: 128, ...want[version] });
    const tokens = [1, 50, 200, 7, 99, 255, 0];
    const logits = await ref.forward(tokens, ref.initState());
    assert.ok(logits.every(Number.isFinite) && Math.max(...logits) - Math.min(...logits) > 0.1, `${version}: logits spread over the vocabulary`);
    if (!wasmAvailable()) continue;
    const wasm = benchModel({ random: spec }, "f32", wasmBackend(2)!);
    const r = compare(await wasm.forward(tokens, wasm.initState()), logits, 1e-5, 1e-5);
    assert.ok(r.ok, `${version}: max |wasm - reference| ${r.maxAbs}`);
  }
  // The full 0.1B-like shapes are free to build (values are made when read).
  const v6 = randomCheckpoint({ version: "6", nLayer: 12, nEmbd: 768, vocabSize: 65536 });
  assert.deepEqual(v6.tensors.get("blocks.11.att.time_maa_w2")?.shape, [5, 32, 768]);
  assert.deepEqual(v6.tensors.get("blocks.11.ffn.key.weight")?.shape, [2688, 768]);
  if (!wasmAvailable()) t.diagnostic("no WebAssembly SIMD here: reference only");
});

test("random model: wasm logits match the reference backend's; re-typed matrices are rwkv.cpp's encoding", async (t) => {
  const ref = benchModel({ random: TINY_SPEC }, "f32", referenceBackend);
  const tokens = [1, 50, 200, 7, 99, 255, 0];
  const want = await ref.forward(tokens, ref.initState());
  assert.ok(want.every(Number.isFinite) && Math.max(...want) - Math.min(...want) > 0.1, "logits spread over the vocabulary");
  if (wasmAvailable()) {
    const wasm = benchModel({ random: TINY_SPEC }, "f32", wasmBackend(2)!);
    const got = await wasm.forward(tokens, wasm.initState());
    const r = compare(got, want, 1e-5, 1e-5);
    assert.ok(r.ok, `max |wasm - reference| ${r.maxAbs}`);
  } else {
    t.diagnostic("no WebAssembly SIMD here: reference only");
  }
  // q8_0: the raw bytes are ggml's quantization of the f32 values; toFloat32 is their dequantization.
  const f32 = randomCheckpoint(TINY_SPEC).tensors.get("head.weight")!;
  const q = retypeMatrices(randomCheckpoint(TINY_SPEC), "q8_0").tensors.get("head.weight")!;
  assert.equal(q.dtype, "q8_0");
  const raw = q.raw!();
  assert.deepEqual(raw, quantize("q8_0", f32.toFloat32()));
  assert.ok(bitsEqual(q.toFloat32(), ggmlToFloat32([...GGML_TYPES.values()].find((g) => g.dtype === "q8_0")!, raw, 256 * 128)));
  const retyped = retypeMatrices(randomCheckpoint(TINY_SPEC), "q4_0");
  assert.equal(retyped.tensors.get("blocks.0.att.w1")!.dtype, "f32", "LoRA factors keep their type");
  assert.equal(retyped.tensors.get("emb.weight")!.dtype, "f32", "the embedding keeps its type");
  assert.equal(retyped.tensors.get("blocks.1.ffn.value.weight")!.dtype, "q4_0");
});

test("rwkv bench --random: one row per dtype x threads, medians of the runs, weight bytes from the shapes, --json and a table", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const common = [...TINY, "--dtype", "f32,q8_0", "--threads", "1,2", "--runs", "3", "--warmup", "0", "--decode-tokens", "4", "--prefill", "8,32", "--probe-mib", "4", "--no-retry"];
  const { code, out, err } = await run(["bench", ...common, "--json"]);
  assert.equal(code, 0, err);
  const r = JSON.parse(out) as Report;
  assert.equal(r.runs, 3);
  assert.deepEqual(r.rows.map((x) => `${x.dtype}/${x.threads}`), ["f32/1", "f32/2", "q8_0/1", "q8_0/2"]);
  assert.equal(r.probeMib, 4);
  for (const x of r.rows) {
    for (const s of [x.decode, x.prefill["8"], x.prefill["32"]]) {
      assert.equal(s.runs.length, 3);
      assert.ok(s.runs.every((v) => v > 0 && Number.isFinite(v)), `${x.dtype}: rates ${s.runs}`);
      assert.equal(s.median, [...s.runs].sort((a, b) => a - b)[1], "the median of 3 runs is the middle one");
    }
    assert.deepEqual({ L: x.config.nLayer, C: x.config.nEmbd, V: x.config.vocabSize }, { L: 2, C: 128, V: 256 });
    assert.equal(x.simd, currentSimd(), "each row's process runs the wasm build this process would");
    assert.equal(x.weightBytesPerToken, expectedWeightBytes(TINY_SPEC, x.dtype as "f32" | "q8_0"), x.dtype);
    assert.ok(x.peakRssBytes > 10 * 2 ** 20 && x.peakRssBytes < 2 ** 32, `peak RSS ${x.peakRssBytes}`);
    assert.ok(Math.abs(x.gbPerSecond - (x.weightBytesPerToken * x.decode.median) / 1e9) < 1e-9);
    // The probe ran in the row's process: a 4 MiB f32 matrix as wide as the model, 7 timed runs.
    const p = x.probe;
    assert.deepEqual([p.cols, p.bytes, p.runs.length, p.otherCores.length], [128, 4 * 128 * Math.round(4 * 2 ** 20 / (4 * 128)), 7, 7]);
    assert.ok(p.runs.every((v) => v > 0 && Number.isFinite(v)) && p.bytesPerSecond === [...p.runs].sort((a, b) => a - b)[3]);
    assert.ok(Math.abs(x.probeGbPerSecond - p.bytesPerSecond / 1e9) < 1e-9);
    assert.ok(Math.abs(x.probeFraction - (x.gbPerSecond * 1e9) / p.bytesPerSecond) < 1e-9);
  }

  const table = await run(["bench", ...common, "--dtype", "q8_0", "--threads", "1"]);
  assert.equal(table.code, 0, table.err);
  assert.match(table.out, /dtype\s+threads\s+decode tok\/s\s+prefill8 tok\/s\s+prefill32 tok\/s\s+peak RSS MiB\s+weight MB\/token\s+GB\/s\s+probe GB\/s\s+% of probe\s+others$/m);
  assert.match(table.out, /^q8_0\s+1\s+\d+\.\d\s+\d+\.\d\s+\d+\.\d\s+\d+\s+\d+\.\d\s+\d+\.\d\d\s+\d+\.\d\d\s+\d+\s+(-|\d+\.\d\d)$/m);
  assert.match(table.out, /probe +in each row's process after its runs/);
  assert.doesNotMatch(table.out, /vs f32/, "no f32 row, no ratio column");
  const withF32 = await run(["bench", ...common, "--dtype", "f32,q8_0", "--threads", "2", "--runs", "1"]);
  assert.equal(withF32.code, 0, withF32.err);
  assert.match(withF32.out, /^f32\s+2\s+\d+\.\d\s+x1\.00\s/m);
  assert.match(withF32.out, /^q8_0\s+2\s+\d+\.\d\s+x\d+\.\d\d\s/m);
  assert.match(table.out, /medians of 3 runs after 0 s of untimed ones/);
});

test("rwkv bench --rounds: the table runs N times, each row's medians over all its runs in the order they ran", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const args = [...TINY, "--dtype", "f32,q8_0", "--threads", "1", "--runs", "2", "--rounds", "2", "--warmup", "0", "--decode-tokens", "2", "--prefill", "8", "--probe-mib", "1", "--no-retry"];
  const { code, out, err } = await run(["bench", ...args, "--json"]);
  assert.equal(code, 0, err);
  const r = JSON.parse(out) as Report & { rounds: number };
  assert.equal(r.rounds, 2);
  assert.deepEqual(r.rows.map((x) => x.dtype), ["f32", "q8_0"], "one row per dtype, not one per round");
  for (const x of r.rows) {
    for (const s of [x.decode, x.prefill["8"]]) {
      assert.equal(s.runs.length, 4, "2 rounds x 2 runs");
      const sorted = [...s.runs].sort((a, b) => a - b);
      assert.equal(s.median, (sorted[1] + sorted[2]) / 2, "the median of all four");
    }
    assert.equal(x.probe.runs.length, 14, "both rounds' probes");
  }
  // Rows take turns: the progress lines show f32, q8_0, f32, q8_0.
  const order = [...err.matchAll(/bench: (\w+), 1 thread: .*\(round (\d) of 2\)/g)].map((m) => `${m[1]}/${m[2]}`);
  assert.deepEqual(order, ["f32/1", "q8_0/1", "f32/2", "q8_0/2"]);
  const table = await run(["bench", ...args]);
  assert.equal(table.code, 0, table.err);
  assert.match(table.out, /medians of 2 rounds x 2 runs after 0 s of untimed ones \(each round: every row in turn\)/);
});

test("rwkv bench MODEL: a file's own types (stored) and re-typed in memory", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const m = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!m) return;
  const { code, out, err } = await run(["bench", m, "--dtype", "stored,q5_1,int8", "--threads", "1", "--runs", "1", "--warmup", "0", "--decode-tokens", "2", "--prefill", "8", "--probe-mib", "1", "--no-retry", "--json"]);
  assert.equal(code, 0, err);
  const [stored, q51, int8] = (JSON.parse(out) as Report).rows;
  assert.deepEqual([stored.dtype, q51.dtype, int8.dtype], ["stored", "q5_1", "int8"]);
  // Q5_1 is 24 bytes a 32-weight block and int8 1 byte a weight (plus row scales) against f32's 4 per weight, on the same matrices
  // (the f32 LoRA factors are common to all): the byte counts must be ordered and well apart.
  assert.ok(q51.weightBytesPerToken < 0.5 * stored.weightBytesPerToken, `${q51.weightBytesPerToken} vs ${stored.weightBytesPerToken}`);
  assert.ok(int8.weightBytesPerToken < 0.5 * stored.weightBytesPerToken);
  assert.equal(stored.config.vocabSize, 256);
});

test("rwkv bench --context: per-token time and RSS at the marks, an SVG plot holding the data", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const dir = mkdtempSync(join(tmpdir(), "rwkv-bench-"));
  const svgPath = join(dir, "ctx.svg");
  const { code, out, err } = await run(["bench", "--context", "--tokens", "2500", "--out", svgPath, "--json"]);
  assert.equal(code, 0, err);
  const r = JSON.parse(out) as { tokens: number; stateBytes: number; marks: Array<{ tokens: number; msPerToken: number; window: number; cumulativeSeconds: number; rssBytes: number }>; time: Array<[number, number]>; rss: Array<[number, number]>; config: { nLayer: number; nEmbd: number } };
  assert.deepEqual(r.marks.map((m) => m.tokens), [1000, 2500]);
  assert.deepEqual(r.marks.map((m) => m.window), [100, 250]);
  assert.deepEqual([r.config.nLayer, r.config.nEmbd], [2, 128], "the default context model");
  // v7 state: per layer att_x_prev (C) + att_kv (H·N·N) + ffn_x_prev (C) floats.
  assert.equal(r.stateBytes, 4 * 2 * (128 + 2 * 64 * 64 + 128));
  for (const m of r.marks) assert.ok(m.msPerToken > 0 && Number.isFinite(m.msPerToken) && m.rssBytes > 0);
  assert.ok(r.marks[1].cumulativeSeconds > r.marks[0].cumulativeSeconds);
  for (let i = 1; i < r.time.length; i++) assert.ok(r.time[i][0] > r.time[i - 1][0] && r.time[i][1] >= r.time[i - 1][1], "cumulative time never decreases");
  assert.deepEqual(r.time[r.time.length - 1][0], 2500);

  const svg = readFileSync(svgPath, "utf8");
  assertWellFormed(svg);
  // The measured curve has one vertex per recorded point; each mark is a circle whose tooltip holds its values.
  const measured = /<path d="([^"]+)"[^>]*><title>measured<\/title>/.exec(svg);
  assert.ok(measured, "the cumulative-time curve");
  assert.equal(measured[1].split(/[ML]/).filter(Boolean).length, r.time.length);
  const rssCurve = /<path d="([^"]+)"[^>]*><title>process RSS<\/title>/.exec(svg);
  assert.equal(rssCurve![1].split(/[ML]/).filter(Boolean).length, r.rss.length);
  const titles = [...svg.matchAll(/<circle[^>]*><title>([^<]+)<\/title><\/circle>/g)].map((m) => m[1]);
  assert.deepEqual(titles, [
    ...r.marks.map((m) => `${m.tokens} tok: ${m.cumulativeSeconds.toFixed(2)} s, ${m.msPerToken.toFixed(3)} ms/tok`),
    ...r.marks.map((m) => `${m.tokens} tok: ${(m.rssBytes / 2 ** 20).toFixed(1)} MiB`),
  ]);

  const text = await run(["bench", "--context", "--tokens", "1200", "--out", svgPath]);
  assert.equal(text.code, 0, text.err);
  assert.match(text.out, /^1000\s+\d+\.\d{4}\s+\d+\.\d\d\s+\d+\.\d$/m);
  assert.match(text.out, /^1200\s+/m);
});

/** Every tag closed in order, one root <svg>, attributes quoted, no stray "<" or "&". */
function assertWellFormed(xml: string): void {
  const stack: string[] = [];
  let roots = 0;
  const tags = xml.matchAll(/<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g);
  let covered = 0;
  for (const m of tags) {
    const [whole, close, name, , selfClose] = m;
    covered += whole.length;
    if (close) assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    else if (!selfClose) { if (stack.length === 0) roots++; stack.push(name); } else if (stack.length === 0) roots++;
  }
  assert.equal(stack.length, 0, `unclosed: ${stack.join(", ")}`);
  assert.equal(roots, 1);
  const text = xml.replace(/<[^>]*>/g, "");
  assert.equal((xml.match(/</g) ?? []).length, (xml.match(/<[^>]*>/g) ?? []).length, "a '<' outside a tag");
  assert.ok(covered > 0 && !/&(?!amp;|lt;|gt;|quot;)/.test(text), "an unescaped '&'");
}

test("rwkv bench --batch and --bandwidth: stepBatch decode per batch size, decode's share of a given peak", async (t) => {
  if (!wasmAvailable()) return t.skip("no WebAssembly SIMD here");
  const args = [...TINY, "--dtype", "f32", "--threads", "1", "--runs", "2", "--warmup", "0", "--decode-tokens", "2", "--prefill", "8", "--probe-mib", "1", "--no-retry", "--batch", "3,5", "--bandwidth", "50"];
  const { code, out, err } = await run(["bench", ...args, "--json"]);
  assert.equal(code, 0, err);
  const r = JSON.parse(out) as Report & { batch: number[]; peakBytesPerSecond: number; rows: Array<{ batchDecode: Record<string, { runs: number[]; median: number }>; peakFraction: number; gbPerSecond: number }> };
  assert.deepEqual(r.batch, [3, 5]);
  assert.equal(r.peakBytesPerSecond, 50e9);
  const x = r.rows[0];
  assert.deepEqual(Object.keys(x.batchDecode), ["3", "5"]);
  for (const s of Object.values(x.batchDecode)) assert.ok(s.runs.length === 2 && s.median > 0);
  assert.ok(Math.abs(x.peakFraction - x.gbPerSecond / 50) < 1e-12, "share = GB/s over the peak");
  const table = await run(["bench", ...args]);
  assert.equal(table.code, 0, table.err);
  assert.match(table.out, /batch3 tok\/s\s+batch5 tok\/s/);
  assert.match(table.out, /% of peak: GB\/s over the device's peak bandwidth given with --bandwidth \(50 GB\/s\)/);
});

test("rwkv bench: bad input and bad usage give one clear line and a non-zero exit", async () => {
  const cases: Array<[string[], number, RegExp]> = [
    [["bench", "--random", "9"], 2, /--random must be an RWKV version \(4, 5\.1, 5\.2, 6, 7, 7a, 7b, 8, 8-hybrid\), got "9"/],
    [["bench", "--random", "5.1"], 1, /RWKV-5\.1 is not available \(random models: RWKV-4, RWKV-5\.2, RWKV-6, RWKV-7, RWKV-7a, RWKV-7b, RWKV-8, RWKV-8-hybrid\)/],
    [["bench", ...TINY, "--dtype", "q9"], 2, /--dtype: unknown type "q9"/],
    [["bench", "--random", "7", "--layers", "0"], 2, /--layers must be a positive integer, got "0"/],
    [["bench", "--random", "7", "--embd", "100"], 1, /width 100 is not a multiple of 64 \(the head size/],
    [["bench", ...TINY, "--threads", "1,x"], 2, /--threads must be a comma-separated list of positive integers/],
    [["bench", ...TINY, "--dtype", "stored"], 2, /a --random model has none/],
    [["bench", "--layers", "2"], 2, /--layers sets the shape of a --random model: add --random 7/],
    [["bench", "/nonexistent/model.bin"], 1, /model\.bin: no such file/],
    [["bench", "/nonexistent/model.bin", "--layers", "2"], 2, /--layers sets the shape of a --random model/],
    [["bench", "/nonexistent/model.bin", "--seed", "2"], 2, /--seed sets a --random model's weights/],
    [["bench", "--context", "--dtype", "f32,q8_0"], 2, /--context runs one model/],
    [["bench", ...TINY, "--tokens", "10"], 2, /--tokens does not apply without --context/],
    [["bench", "--context", "--runs", "3"], 2, /--runs does not apply to --context/],
    [["bench", "--context", "--rounds", "2"], 2, /--rounds does not apply to --context/],
    [["bench", ...TINY, "--rounds", "0"], 2, /--rounds must be a positive integer, got "0"/],
    [["bench", ...TINY, "--warmup=-1"], 2, /--warmup must be a number in \[0, 3600\]/],
    [["bench", "--context", "--out", "/nonexistent/dir/x.svg"], 1, /x\.svg/],
    [["bench", "--context", "--batch", "4"], 2, /--batch does not apply to --context/],
    [["bench", ...TINY, "--backend", "gpu"], 2, /--backend must be one of webgpu, wasm, reference, got "gpu"/],
  ];
  for (const [argv, want, re] of cases) {
    const { code, err } = await run(argv);
    assert.equal(code, want, `${argv.join(" ")}: exit ${code}, ${err}`);
    assert.match(err, re, argv.join(" "));
    assert.equal(err.trim().split("\n")[0].startsWith("rwkv: "), true, err);
  }
  // Without a WebGPU adapter, --backend webgpu fails with the registry's reason before any row runs (where CI
  // has one, Dawn on SwiftShader, webgpu-node.test.ts runs the bench on it). Asked after the cases above: a
  // software adapter, once found, moves webgpu below wasm in the --backend list that the "gpu" case matches.
  if (!(await prepareNodeWebGpu())) {
    const { code, err } = await run(["bench", ...TINY, "--backend", "webgpu", "--runs", "1"]);
    assert.equal(code, 1, err);
    assert.match(err, /^rwkv: --backend: backend "webgpu" cannot run in this environment: .*(webgpu|WebGPU)/);
  }
  // The installed binary: the exit status reaches the shell, no stack trace.
  const r = spawnSync(process.execPath, [BIN, "bench", "--random", "9"], { encoding: "utf8", timeout: 30_000 });
  assert.equal(r.status, 2, r.stderr);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});

test("rwkv eval --int8 (the int8 row of the quantization table): per-row int8 matrices, close to FP32", async (t) => {
  const m = sharedPath(t, "rwkv.cpp", "tiny-rwkv-5v2-730K-FP32.bin");
  if (!m) return;
  const text = join(mkdtempSync(join(tmpdir(), "rwkv-bench-")), "text.txt");
  writeFileSync(text, "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.\n".repeat(4));
  const f32 = await run(["eval", m, "--text", text]);
  const int8 = await run(["eval", m, "--text", text, "--int8", "--threads", "1"]);
  assert.equal(f32.code, 0, f32.err);
  assert.equal(int8.code, 0, int8.err);
  const a = JSON.parse(f32.out) as { bitsPerByte: number; matrices?: string }, b = JSON.parse(int8.out) as { bitsPerByte: number; matrices?: string };
  assert.equal(a.matrices, undefined);
  assert.equal(b.matrices, "int8");
  assert.notEqual(b.bitsPerByte, a.bitsPerByte, "int8 matrices change the numbers");
  assert.ok(Math.abs(b.bitsPerByte - a.bitsPerByte) < 0.02 * a.bitsPerByte, `${b.bitsPerByte} vs ${a.bitsPerByte}`);
});
