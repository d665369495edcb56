import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { FUZZ_FORMATS, type FuzzFormat, type Layout, layoutOf } from "./layout.js";
import { mutate, type Region, Rng } from "./mutate.js";
import { LoaderPool, type PoolOutcome } from "./pool.js";

// node dist/bench/fuzz/run.js FORMAT N SEED [--workers W] [--timeout-ms T] [--memory-mb M]
//   [--shared DIR] [--only I --save DIR] [--json FILE]
// Mutates seed files of FORMAT N times, loads each mutant in a pool of child processes and prints
// how they fared (bench/fuzz/README.md). Exit status 1 if any crash, hang, out-of-memory or
// mutant of the file's structure that loaded with different logits.

const REPO = resolve(import.meta.dirname, "..", "..", "..");
const CLI = join(REPO, "dist", "src", "node", "bin.js");

export interface FuzzOptions {
  readonly format: FuzzFormat;
  readonly count: number;
  readonly seed: number;
  readonly workers?: number;
  readonly timeoutMs?: number;
  readonly memoryMb?: number;
  readonly shared?: string;
  /** Replay only mutant I (and write it to `save` when given). */
  readonly only?: number;
  readonly save?: string;
  readonly onProgress?: (done: number) => void;
}

export type Category = "typed error" | "same logits" | "different: structure" | "different: tensor data (no checksum)" |
  "different: tensor data (CRC recomputed)" | "different: pickle (CRC recomputed)" | "different: same-size dtype relabel (no checksum)" | "crash" | "hang" | "out of memory";
export const CATEGORIES: readonly Category[] = ["typed error", "same logits", "different: structure", "different: tensor data (no checksum)",
  "different: tensor data (CRC recomputed)", "different: pickle (CRC recomputed)", "different: same-size dtype relabel (no checksum)", "crash", "hang", "out of memory"];
/** Categories that mean a loader bug (the run fails if any is non-zero). */
export const FAILURES: readonly Category[] = ["different: structure", "crash", "hang", "out of memory"];

export interface Finding { readonly index: number; readonly seedFile: string; readonly op: string; readonly category: Category; readonly message: string }
export interface FuzzResult {
  readonly counts: Readonly<Record<Category, number>>;
  readonly findings: readonly Finding[];
  readonly restarts: number;
  readonly seconds: number;
}

interface Seed { readonly path: string; readonly bytes: Uint8Array; readonly layout: Layout; readonly ext: string }

function sharedDir(given?: string): string {
  return resolve(given ?? process.env.RWKV_SHARED ?? join(REPO, "..", "shared"));
}

/** Seed files: the tiny golden models, rwkv.cpp's tiny models and GGUF / .pth written by our own converter. */
function seedPaths(format: FuzzFormat, shared: string): string[] {
  const golden = (v: string, f: string) => join(shared, "golden", v, f);
  const cpp = (f: string) => join(shared, "rwkv.cpp", f);
  switch (format) {
    case "pth": return [golden("v4", "model.pth"), golden("v5", "model.pth"), golden("v6", "model.pth"), golden("v7", "model.pth"), golden("v7", "model_bf16.pth"), converted(golden("v6", "model.safetensors"), "v6.pth")];
    case "safetensors": return [golden("v4", "model.safetensors"), golden("v5", "model.safetensors"), golden("v6", "model.safetensors"), golden("v7", "model.safetensors"), golden("v6", "model_bf16.safetensors")];
    case "rwkvcpp": return [cpp("tiny-rwkv-4v0-660K-FP32.bin"), cpp("tiny-rwkv-5v2-730K-FP16.bin"), cpp("tiny-rwkv-5v2-730K-FP32-to-Q8_0.bin"), cpp("tiny-rwkv-6v0-1m-Q5_1.bin"), cpp("tiny-rwkv-7v0-834K-FP32.bin"), cpp("tiny-rwkv-7v0-834K-Q5_0.bin")];
    case "gguf": return [converted(golden("v6", "model.safetensors"), "v6.gguf"), converted(golden("v7", "model.safetensors"), "v7.gguf"), converted(golden("v7", "model.safetensors"), "v7-q8_0.gguf", ["--dtype", "q8_0"])];
  }
}

/** Written once by `rwkv convert` into a cache directory (deterministic output, so reusable). */
function converted(from: string, name: string, extra: string[] = []): string {
  const dir = join(tmpdir(), "rwkv-fuzz-seeds");
  const out = join(dir, name);
  if (!existsSync(out)) {
    mkdirSync(dir, { recursive: true });
    const tmp = `${out}.${process.pid}.tmp${name.slice(name.lastIndexOf("."))}`;
    execFileSync(process.execPath, [CLI, "convert", from, tmp, ...extra], { stdio: "ignore" });
    execFileSync("mv", [tmp, out]);
  }
  return out;
}

function categorize(outcome: PoolOutcome, region: Region): Category {
  switch (outcome) {
    case "error": return "typed error";
    case "same": return "same logits";
    case "crash": return "crash";
    case "hang": return "hang";
    case "oom": return "out of memory";
    case "different":
      switch (region) {
        case "structure": return "different: structure";
        case "tensor data": return "different: tensor data (no checksum)";
        case "tensor data, CRC recomputed": return "different: tensor data (CRC recomputed)";
        case "pickle, CRC recomputed": return "different: pickle (CRC recomputed)";
        case "same-size dtype relabel": return "different: same-size dtype relabel (no checksum)";
      }
  }
}

/** Mutant i of a run depends only on (seed, i): any finding can be replayed alone with --only. */
function mutantRng(seed: number, i: number): Rng {
  return new Rng(Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b));
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzResult> {
  const t0 = performance.now();
  const seeds: Seed[] = seedPaths(o.format, sharedDir(o.shared)).map((path) => {
    const bytes = new Uint8Array(readFileSync(path));
    return { path, bytes, layout: layoutOf(o.format, bytes), ext: path.slice(path.lastIndexOf(".")) };
  });
  const pool = new LoaderPool({ workers: o.workers ?? 1, timeoutMs: o.timeoutMs ?? 20_000, memoryMb: o.memoryMb ?? 1024 });
  const dir = mkdtempSync(join(tmpdir(), `rwkv-fuzz-${o.format}-`));
  const counts = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  const findings: Finding[] = [];
  let done = 0;
  const indices = o.only !== undefined ? [o.only] : Array.from({ length: o.count }, (_, i) => i);
  let next = 0;
  const one = async (i: number): Promise<void> => {
    const r = mutantRng(o.seed, i);
    const s = seeds[r.int(seeds.length)];
    const m = mutate(o.format, s.bytes, s.layout, r);
    const path = join(dir, `m${i}${s.ext}`);
    writeFileSync(path, m.bytes);
    if (o.save) { mkdirSync(o.save, { recursive: true }); writeFileSync(join(o.save, `${o.format}-${o.seed}-${i}${s.ext}`), m.bytes); }
    const a = await pool.load({ id: i, path, seed: s.path });
    rmSync(path, { force: true });
    const category = categorize(a.outcome, m.region);
    counts[category]++;
    if (category !== "typed error" && category !== "same logits") findings.push({ index: i, seedFile: s.path, op: m.op, category, message: a.message });
    o.onProgress?.(++done);
  };
  const lanes = Array.from({ length: o.workers ?? 1 }, async () => {
    while (next < indices.length) await one(indices[next++]);
  });
  try {
    await Promise.all(lanes);
  } finally {
    pool.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return { counts, findings, restarts: pool.restarts, seconds: (performance.now() - t0) / 1000 };
}

function usage(): never {
  process.stderr.write(`usage: node dist/bench/fuzz/run.js FORMAT N SEED [--workers W] [--timeout-ms T] [--memory-mb M] [--shared DIR] [--only I] [--save DIR] [--json FILE]
  FORMAT: ${FUZZ_FORMATS.join(" | ")}\n`);
  process.exit(2);
}

async function main(argv: string[]): Promise<number> {
  const pos: string[] = [];
  const opt: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith("--")) { if (i + 1 >= argv.length) usage(); opt[argv[i].slice(2)] = argv[++i]; } else pos.push(argv[i]);
  }
  const int = (s: string | undefined, dflt?: number): number | undefined => {
    if (s === undefined) return dflt;
    const n = Number(s);
    if (!Number.isSafeInteger(n) || n < 0) usage();
    return n;
  };
  const [format, n, seed] = pos;
  if (pos.length !== 3 || !FUZZ_FORMATS.includes(format as FuzzFormat)) usage();
  const known = new Set(["workers", "timeout-ms", "memory-mb", "shared", "only", "save", "json"]);
  for (const k of Object.keys(opt)) if (!known.has(k)) usage();
  const count = int(n)!;
  const started = new Date().toISOString();
  const result = await runFuzz({
    format: format as FuzzFormat, count, seed: int(seed)!, workers: int(opt.workers, 1), timeoutMs: int(opt["timeout-ms"]),
    memoryMb: int(opt["memory-mb"]), shared: opt.shared, only: int(opt.only), save: opt.save,
    onProgress: (d) => { if (d % 500 === 0) process.stderr.write(`${format}: ${d}/${count}\n`); },
  });
  const total = Object.values(result.counts).reduce((a, b) => a + b, 0);
  process.stdout.write(`fuzz ${format}: ${total} mutants, seed ${seed}, ${result.seconds.toFixed(0)} s, ${result.restarts} child restarts (started ${started})\n`);
  for (const c of CATEGORIES) process.stdout.write(`  ${c.padEnd(50)} ${String(result.counts[c]).padStart(6)}\n`);
  for (const f of result.findings.filter((x) => FAILURES.includes(x.category)).slice(0, 20)) {
    process.stdout.write(`  ! #${f.index} ${f.category}: ${f.op} on ${f.seedFile}: ${f.message.slice(0, 300)}\n`);
  }
  if (opt.json) writeFileSync(opt.json, JSON.stringify({ format, count, seed: Number(seed), started, ...result }, null, 1));
  return FAILURES.some((c) => result.counts[c] > 0) ? 1 : 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: unknown) => { console.error(e); process.exitCode = 2; });
}
