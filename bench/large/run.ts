/*
 * One row of bench/large/run.sh: a random RWKV-7 model of a real release's shape (G1 2.9B: 32 x
 * 2560, 7.2B: 32 x 4096; vocabulary 65536) in one weight type, built in memory or loaded from a
 * file our own writer made, on the wasm backend, whose weights then spread over several
 * WebAssembly memories. Prints one JSON line: load time, the memories' weights, decode tok/s, peak
 * RSS and the checks:
 *   - the logits of every decoded token are finite;
 *   - slice: matrices of the model's shapes (C x C, 4C x C, the V x C head) placed in memories
 *     1, 2, 3 of a backend with the same threads give products (one token and four) equal bit
 *     for bit to those of a single-memory backend on the same bytes;
 *   - with --whole (in-memory models a single memory can hold, e.g. 2.9B q8_0, q4_0, int8, run
 *     split by --per-memory): the same model in one memory gives the first token's logits bit
 *     for bit.
 *
 *   node dist/bench/large/run.js --embd 2560 --layers 32 --dtype f16 --source memory|file
 *       [--vocab 65536] [--threads 2] [--tokens 8] [--scratch DIR] [--per-memory GIB] [--whole]
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Matrix } from "../../src/core/backend/backend.js";
import { quantizeInt8 } from "../../src/core/backend/int8.js";
import { WasmBackend } from "../../src/core/backend/wasm.js";
import type { Checkpoint } from "../../src/core/formats/checkpoint.js";
import { type MatrixDType, retypeMatrices } from "../../src/core/formats/retype.js";
import { pthChunks } from "../../src/core/formats/pth-writer.js";
import { toBf16Bytes } from "../../src/core/formats/quantize.js";
import { rwkvCppChunks, rwkvCppModelFromCheckpoint } from "../../src/core/formats/rwkvcpp-writer.js";
import { architectureFor, detectVersion } from "../../src/core/model/detect.js";
import { buildModel, type Model } from "../../src/core/model/model.js";
import { randomCheckpoint } from "../../src/core/model/random.js";
import { writeFileAtomic } from "../../src/node/atomic-write.js";
import { loadCheckpoint } from "../../src/node/load.js";
import { spawnKernelWorker } from "../../src/node/threads/spawn.js";

type Dtype = "f16" | "bf16" | "q8_0" | "q4_0" | "int8";
const DTYPES: readonly Dtype[] = ["f16", "bf16", "q8_0", "q4_0", "int8"];
/** Tokens decoded before timing starts (first-touch of every weight page, thread start-up). */
const WARMUP_TOKENS = 2;

const { values: a } = parseArgs({
  options: {
    embd: { type: "string" }, layers: { type: "string" }, vocab: { type: "string", default: "65536" },
    dtype: { type: "string" }, source: { type: "string", default: "memory" }, threads: { type: "string", default: "2" },
    tokens: { type: "string", default: "8" }, scratch: { type: "string", default: "/tmp/rwkv-large" },
    "per-memory": { type: "string" }, whole: { type: "boolean", default: false },
  },
});
const C = Number(a.embd), L = Number(a.layers), V = Number(a.vocab), threads = Number(a.threads), tokens = Number(a.tokens);
const dtype = a.dtype as Dtype;
if (!DTYPES.includes(dtype)) throw new Error(`--dtype must be one of ${DTYPES.join(", ")}`);
if (a.source !== "memory" && a.source !== "file") throw new Error("--source must be memory or file");
if (!(C > 0 && L > 0 && V > 0)) throw new Error("--embd and --layers must be positive");
if (a.whole && a.source !== "memory") throw new Error("--whole compares in-memory models (a file's decays round-trip through its format)");
const perMemory = a["per-memory"] === undefined ? undefined : Math.round(Number(a["per-memory"]) * 2 ** 30);

const random = () => randomCheckpoint({ version: "7", nLayer: L, nEmbd: C, vocabSize: V, seed: 1 });
/** The matrices' type in memory: int8 is quantized at load from f32 (as --matrices int8). */
const stored: MatrixDType = dtype === "int8" ? "f32" : dtype;
const matrices = dtype === "int8" ? "int8" as const : undefined;
const newBackend = (weightBytesPerMemory?: number) => new WasmBackend({ threads, spawn: spawnKernelWorker, weightBytesPerMemory });

function build(ckpt: Checkpoint, backend: WasmBackend): Model {
  const version = detectVersion(ckpt);
  return buildModel(ckpt, architectureFor(version, ckpt.source), version, backend, { matrices });
}

/** Writes the model with our own writers: rwkv.cpp .bin (f16, quantized; int8 from f16), .pth for bf16. */
async function writeFile(dir: string): Promise<string> {
  const ckpt = random();
  if (dtype === "bf16") {
    const path = join(dir, `random-${L}x${C}-bf16.pth`);
    const tensors = [...ckpt.tensors.values()].map((t) => ({ name: t.name, shape: t.shape, dtype: "bf16" as const, data: () => toBf16Bytes(t.toFloat32()) }));
    await writeFileAtomic(path, pthChunks(tensors, { archiveName: "random" }));
    return path;
  }
  const fileType = dtype === "int8" ? "f16" : dtype;
  const path = join(dir, `random-${L}x${C}-${fileType}.bin`);
  await writeFileAtomic(path, rwkvCppChunks(rwkvCppModelFromCheckpoint(ckpt, "7"), fileType));
  return path;
}

function load(path: string, backend: WasmBackend): Model {
  const { checkpoint, close } = loadCheckpoint(path, { verify: false });
  try {
    return build(checkpoint, backend);
  } finally {
    close();
  }
}

const gc = (globalThis as { gc?: () => void }).gc;
const t0 = performance.now();
let file: string | undefined;
const backend = newBackend(perMemory);
let model: Model;
if (a.source === "file") {
  file = await writeFile(a.scratch!);
  process.stderr.write(`wrote ${file} in ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
}
const t1 = performance.now();
try {
  model = file ? load(file, backend) : build(retypeMatrices(random(), stored), backend);
} finally {
  if (file) rmSync(file, { force: true }); // the scratch file goes as soon as it is loaded
}
const loadS = (performance.now() - t1) / 1000;
gc?.();

// Decode: logits finite for every token; tok/s over the tokens after the warm-up.
const state = model.initState();
const first = await model.step(0, state);
let finite = first.every(Number.isFinite);
let tok = 1;
for (let i = 0; i < WARMUP_TOKENS - 1; i++) finite &&= (await model.step(tok++, state)).every(Number.isFinite);
const td = performance.now();
for (let i = 0; i < tokens; i++) finite &&= (await model.step(tok++, state)).every(Number.isFinite);
const tokS = tokens / ((performance.now() - td) / 1000);
const peakRssMiB = process.resourceUsage().maxRSS / 1024; // before the checks below add their copies
const memories = backend.memories().map((m) => +(m.weightBytes / 2 ** 30).toFixed(2));

// Slice: real shapes in further memories against a single-memory backend, bit for bit. A limit of
// one byte per memory gives each matrix a memory of its own, after a small one that takes memory 0.
function sliceCheck(): string[] {
  const single = new WasmBackend(), spread = newBackend(1);
  spread.adopt({ rows: 1, cols: 32, type: "f32", data: new Float32Array(32) });
  const bad: string[] = [];
  const ckpt = retypeMatrices(random(), stored);
  for (const name of ["blocks.0.att.receptance.weight", "blocks.0.ffn.key.weight", "head.weight"]) {
    const e = ckpt.tensors.get(name)!;
    const [O, I] = e.shape;
    let m: Matrix;
    if (dtype === "int8") m = quantizeInt8(e.toFloat32(), O, I);
    else {
      const raw = e.raw!();
      m = { rows: O, cols: I, type: dtype, data: dtype === "f16" || dtype === "bf16" ? new Uint16Array(raw.buffer, raw.byteOffset, O * I) : raw };
    }
    const there = spread.adopt(m), here = single.adopt(m);
    if (spread.adoptedInfo(there)!.mem === 0) bad.push(`${name} landed in memory 0`);
    for (const T of [1, 4]) {
      const x = Float32Array.from({ length: T * I }, (_, i) => Math.sin(i * 0.37));
      const y1 = spread.matmul(x, T, there), y0 = single.matmul(x, T, here);
      if (!y1.every((v, i) => Object.is(v, y0[i]))) bad.push(`${name} T=${T} differs from one memory`);
    }
  }
  single.close();
  spread.close();
  return bad;
}
const slice = sliceCheck();

let whole: string | undefined;
/** Decode tok/s of the one-memory model of --whole: what the split costs. */
let oneTokS: number | undefined;
if (a.whole) {
  // The same model in one memory (default limits) against this split one.
  backend.close();
  gc?.();
  const oneBackend = newBackend();
  const one = build(retypeMatrices(random(), stored), oneBackend);
  const s1 = one.initState();
  const logits = await one.step(0, s1);
  const same = logits.every((v, i) => Object.is(v, first[i]));
  for (let i = 1; i < WARMUP_TOKENS; i++) await one.step(i, s1);
  const t = performance.now();
  for (let i = 0; i < tokens; i++) await one.step(WARMUP_TOKENS + i, s1);
  oneTokS = +(tokens / ((performance.now() - t) / 1000)).toFixed(2);
  whole = `${memories.length} memories vs ${oneBackend.memories().length}: ${same ? "equal" : "DIFFERENT"}`;
  oneBackend.close();
}
backend.close();

process.stdout.write(JSON.stringify({
  shape: `${L}x${C}`, vocab: V, dtype, source: a.source, threads, loadS: +loadS.toFixed(1), memoriesGiB: memories,
  tokS: +tokS.toFixed(2), peakRssMiB: Math.round(peakRssMiB), finite, slice: slice.length ? slice : "equal", whole, oneTokS,
}) + "\n");
if (!finite || slice.length || (whole && !whole.endsWith("equal"))) process.exitCode = 1;
