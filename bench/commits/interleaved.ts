/*
 * Side by side in one process: this checkout's engine and another commit's, each with its own
 * model of the same random RWKV-7 0.1B shape, take turns in short bursts (decode: TOKENS steps;
 * prefill: one PREFILL-token forward), the order swapped each round. Both engines then run under
 * the same machine conditions within a fraction of a second of each other, which separate
 * processes (run.sh) cannot promise on this VM: its vCPUs change speed for seconds at a time, and a
 * 2-thread process always has one thread on whichever core is slow.
 *
 *   node --experimental-wasm-relaxed-simd dist/bench/commits/interleaved.js BASE_DIR
 *
 * BASE_DIR: a built checkout of the other commit (e.g. `git worktree add /tmp/base <commit> &&
 * (cd /tmp/base && npm ci)`); it must export `wasmBackend` (src/node/threads/pool.ts) and
 * `benchModel` (src/node/bench/measure.ts). Env: DTYPES (default "f32 f16 int8 q8_0"),
 * THREADS ("1 2"), ROUNDS (20), TOKENS (30), PREFILL (64), BENCH_CPU (0: 1-thread cells are
 * pinned there with taskset, as in run.sh). Each cell runs in a child process of its own (its
 * thread count is fixed per process); the parent prints one markdown table of medians and the
 * median of the per-round ratios now/base with their range.
 */
import { spawnSync } from "node:child_process";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";

interface Engine {
  step(token: number, state: unknown): unknown;
  forward(tokens: readonly number[], state: unknown): unknown;
  initState(): unknown;
}
interface CellResult { simd: string; decode: { base: number[]; now: number[] }; prefill: { base: number[]; now: number[] } }

const SHAPE = { version: "7", nLayer: 12, nEmbd: 768, vocabSize: 65536, seed: 1 };
const env = (k: string, d: string) => process.env[k] ?? d;
const HERE = resolve(fileURLToPath(import.meta.url), "../../../src"); // this checkout's dist/src

async function engine(distSrc: string, dtype: string, threads: number): Promise<{ model: Engine; simd: string }> {
  const pool = await import(`${distSrc}/node/threads/pool.js`) as { wasmBackend(threads: number): unknown };
  const measure = await import(`${distSrc}/node/bench/measure.js`) as {
    benchModel(source: unknown, dtype: string, backend: unknown): Engine;
  };
  const backend = pool.wasmBackend(threads) as { simd?: string } | null;
  if (!backend) throw new Error(`${distSrc}: no wasm backend here`);
  return { model: measure.benchModel({ random: SHAPE }, dtype, backend), simd: String(backend.simd) };
}

async function cell(baseDir: string, dtype: string, threads: number): Promise<CellResult> {
  const rounds = Number(env("ROUNDS", "20")), tokens = Number(env("TOKENS", "30")), prefill = Number(env("PREFILL", "64"));
  const b = await engine(resolve(baseDir, "dist/src"), dtype, threads), n = await engine(HERE, dtype, threads);
  const engines = { base: b.model, now: n.model };
  const states = { base: engines.base.initState(), now: engines.now.initState() };
  const prompt = Array.from({ length: prefill }, (_, i) => (i * 7919) % SHAPE.vocabSize);
  const out: CellResult = { simd: b.simd === n.simd ? b.simd : `base ${b.simd}, now ${n.simd}`, decode: { base: [], now: [] }, prefill: { base: [], now: [] } };
  for (const k of ["base", "now"] as const) for (let i = 0; i < 5; i++) await engines[k].step(i, states[k]); // warm-up
  for (let r = 0; r < rounds; r++) {
    for (const k of r % 2 ? ["now", "base"] as const : ["base", "now"] as const) {
      const e = engines[k];
      let t = performance.now();
      for (let i = 0; i < tokens; i++) await e.step((r * tokens + i) % 1000, states[k]);
      out.decode[k].push(tokens * 1000 / (performance.now() - t));
      t = performance.now();
      await e.forward(prompt, e.initState());
      out.prefill[k].push(prefill * 1000 / (performance.now() - t));
    }
  }
  return out;
}

const median = (a: readonly number[]) => {
  const s = [...a].sort((x, y) => x - y), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

function column(r: { base: number[]; now: number[] }): string {
  const ratios = r.now.map((v, i) => v / r.base[i]);
  return `${median(r.base).toFixed(1)} | ${median(r.now).toFixed(1)} | ${median(ratios).toFixed(2)}x ` +
    `(${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)})`;
}

async function main(): Promise<void> {
  const [baseDir, mode, dtype, threads] = process.argv.slice(2);
  if (!baseDir) throw new Error("usage: interleaved.js BASE_DIR (a built checkout of the other commit)");
  if (mode === "--cell") {
    process.stdout.write(JSON.stringify(await cell(baseDir, dtype, Number(threads))) + "\n");
    process.exit(0); // the kernel workers of two backends are still parked
  }
  console.log(`base ${resolve(baseDir)}, now ${resolve(HERE, "../..")}; ${env("ROUNDS", "20")} rounds of ${env("TOKENS", "30")} decode ` +
    `tokens and one ${env("PREFILL", "64")}-token prefill per engine; tokens/s`);
  console.log("| dtype | threads | decode base | decode now | ratio (rounds, min-max) | prefill base | prefill now | ratio (rounds, min-max) | wasm |");
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const dt of env("DTYPES", "f32 f16 int8 q8_0").split(/\s+/).filter(Boolean)) {
    for (const th of env("THREADS", "1 2").split(/\s+/).filter(Boolean)) {
      const node = [process.execPath, "--experimental-wasm-relaxed-simd", fileURLToPath(import.meta.url), baseDir, "--cell", dt, th];
      const cmd = th === "1" ? ["taskset", "-c", env("BENCH_CPU", "0"), ...node] : node;
      const p = spawnSync(cmd[0], cmd.slice(1), { encoding: "utf8", maxBuffer: 1 << 24 });
      if (p.status !== 0) throw new Error(`cell ${dt} x ${th} failed (exit ${p.status}): ${p.stderr}`);
      const r = JSON.parse(p.stdout) as CellResult;
      console.log(`| ${dt} | ${th} | ${column(r.decode)} | ${column(r.prefill)} | ${r.simd} |`);
    }
  }
}

await main();
