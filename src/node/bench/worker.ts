import { setFlagsFromString } from "node:v8";
import type { Backend } from "../../core/backend/backend.js";
import type { BenchJob, InputErrorResult, RowResult } from "./jobs.js";

/** A child process of `rwkv bench` (see jobs.ts): node worker.js JOB_JSON prints one JSON line. */

const job = JSON.parse(process.argv[2] ?? "null") as BenchJob;
// As the CLI does (bin.ts) before any WebAssembly is compiled: Node 20 keeps relaxed SIMD behind a
// flag (later versions have it on, the flag is then a no-op).
if (job.simd === "relaxed-simd") setFlagsFromString("--experimental-wasm-relaxed-simd");
const { selectBackend } = await import("../../core/backend/registry.js");
const { RwkvInputError } = await import("../../core/errors.js");
const { wasmBackend } = await import("../threads/pool.js"); // also registers the threaded wasm backend
const { benchModel, CountingBackend, measureSpeed, probeBandwidth, PROBE_RUNS } = await import("./measure.js");

const MS_PER_S = 1000;
const KIB = 1024;

/** The parent's choice of backend, with the parent's wasm build. */
function backendFor(threads: number): Backend {
  if ((job.backend === undefined || job.backend === "wasm") && job.simd !== null) {
    const b = wasmBackend(threads, job.simd);
    if (b) return b;
  }
  return selectBackend(job.backend, { threads });
}

async function runRow(row: BenchJob): Promise<RowResult> {
  if (row.backend === "webgpu") await (await import("../webgpu.js")).prepareNodeWebGpu(); // the user-installed `webgpu` package
  const inner = backendFor(row.threads);
  const counter = new CountingBackend(inner);
  const t0 = performance.now();
  const model = benchModel(row.source, row.dtype, counter);
  const buildSeconds = (performance.now() - t0) / MS_PER_S;
  const speed = await measureSpeed(model, counter, row.speed);
  const peakRssBytes = process.resourceUsage().maxRSS * KIB; // before the probe's big matrix
  const probe = await probeBandwidth(inner, model.config.nEmbd, row.probeMib, PROBE_RUNS, row.speed.quiet);
  const simd = "simd" in inner ? String(inner.simd) : undefined;
  return {
    dtype: row.dtype, threads: row.threads, backend: inner.name, ...(simd ? { simd } : {}), config: model.config, buildSeconds,
    ...speed, peakRssBytes, probe,
  };
}

async function main(): Promise<void> {
  let out: RowResult | InputErrorResult;
  try {
    out = await runRow(job);
  } catch (e) {
    if (!(e instanceof RwkvInputError)) throw e; // a bug: the stack trace goes to stderr
    out = { inputError: { subject: e.subject, message: e.message } };
  }
  process.stdout.write(JSON.stringify(out) + "\n"); // the kernel workers are unref'd: the process ends here
}

await main();
