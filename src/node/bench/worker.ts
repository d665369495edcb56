import { selectBackend } from "../../core/backend/registry.js";
import { RwkvInputError } from "../../core/errors.js";
import "../threads/pool.js"; // registers the threaded wasm backend
import type { BenchJob, InputErrorResult, RowResult } from "./jobs.js";
import { benchModel, CountingBackend, measureSpeed, probeBandwidth, type ProbeResult } from "./measure.js";

/** A child process of `rwkv bench` (see jobs.ts): node worker.js JOB_JSON prints one JSON line. */

const MS_PER_S = 1000;
const KIB = 1024;

function runRow(job: Extract<BenchJob, { kind: "row" }>): RowResult {
  const inner = selectBackend(job.backend, { threads: job.threads });
  const counter = new CountingBackend(inner);
  const t0 = performance.now();
  const model = benchModel(job.source, job.dtype, counter);
  const buildSeconds = (performance.now() - t0) / MS_PER_S;
  const speed = measureSpeed(model, counter, job.speed);
  const simd = "simd" in inner ? String(inner.simd) : undefined;
  return {
    dtype: job.dtype, threads: job.threads, backend: inner.name, ...(simd ? { simd } : {}), config: model.config, buildSeconds,
    ...speed, peakRssBytes: process.resourceUsage().maxRSS * KIB,
  };
}

function runProbe(job: Extract<BenchJob, { kind: "probe" }>): ProbeResult[] {
  return job.threads.map((t) => probeBandwidth(selectBackend(job.backend, { threads: t }), t, job.mib, job.runs, job.quiet));
}

function main(): void {
  const job = JSON.parse(process.argv[2] ?? "null") as BenchJob;
  let out: RowResult | ProbeResult[] | InputErrorResult;
  try {
    out = job.kind === "row" ? runRow(job) : runProbe(job);
  } catch (e) {
    if (!(e instanceof RwkvInputError)) throw e; // a bug: the stack trace goes to stderr
    out = { inputError: { subject: e.subject, message: e.message } };
  }
  process.stdout.write(JSON.stringify(out) + "\n"); // the kernel workers are unref'd: the process ends here
}

main();
