import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { relaxedSimdAvailable, type WasmSimd, wasmAvailable } from "../../core/backend/wasm.js";
import { RwkvInputError } from "../../core/errors.js";
import type { ModelConfig } from "../../core/model/model.js";
import type { BenchDType, ModelSource, ProbeResult, SpeedOptions, SpeedResult } from "./measure.js";

/*
 * `rwkv bench` runs each measurement in a process of its own (worker.ts), so that each row's peak
 * RSS is that row's alone and no row inherits another's weights, JIT state or WebAssembly memory
 * (which never shrinks). A job goes in as JSON on the command line; one JSON line comes back.
 */

interface JobBase {
  readonly backend?: string;
  /**
   * The WebAssembly build this (the parent) process would run. The CLI may enable relaxed SIMD
   * with a V8 flag set at run time, which a child does not inherit: it sets the same flag itself.
   */
  readonly simd: WasmSimd | null;
}

/** One row: build the model, time it, then probe the bandwidth in the same process. */
export interface BenchJob extends JobBase {
  readonly source: ModelSource;
  readonly dtype: BenchDType;
  readonly threads: number;
  readonly speed: SpeedOptions;
  /** MiB of the bandwidth probe's matrix. */
  readonly probeMib: number;
}

/** The build the wasm backend picks in this process (null where it cannot run). */
export function currentSimd(): WasmSimd | null {
  return wasmAvailable() ? (relaxedSimdAvailable() ? "relaxed-simd" : "simd") : null;
}

export interface RowResult extends SpeedResult {
  readonly dtype: BenchDType;
  readonly threads: number;
  readonly backend: string;
  /** The wasm build that ran ("simd" or "relaxed-simd"); absent for other backends. */
  readonly simd?: string;
  readonly config: ModelConfig;
  /** Seconds to build the model (random values, re-encoding, copying into the kernels' memory). */
  readonly buildSeconds: number;
  /** Peak resident set of the process that built and ran this row (getrusage maxrss), before the probe. */
  readonly peakRssBytes: number;
  /**
   * The bandwidth probe, run in the row's process right after its runs, with its threads: the
   * memory bandwidth a VM gets can change by a third within minutes (the host's other guests, where
   * pages land), so the fraction reached is only meaningful against a probe taken alongside.
   */
  readonly probe: ProbeResult;
}

/** What a worker prints when the job hit bad input (a missing file, an impossible model). */
export interface InputErrorResult { readonly inputError: { readonly subject: string; readonly message: string } }

const WORKER = fileURLToPath(new URL("./worker.js", import.meta.url));
/** Node flags a worker needs to run the same kernels and heap as this process. */
const INHERITED_FLAGS = /^--(experimental-wasm-|max-old-space-size|max-semi-space-size)/;

/** Runs a job in a fresh Node process; its stderr lines go to `note`. */
export function runJob(job: BenchJob, note: (line: string) => void): Promise<RowResult> {
  const args = [...process.execArgv.filter((a) => INHERITED_FLAGS.test(a)), WORKER, JSON.stringify(job)];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    child.stdout.setEncoding("utf8").on("data", (t: string) => { out += t; });
    child.stderr.setEncoding("utf8").on("data", (t: string) => {
      err += t;
      const lines = err.split("\n");
      err = lines.pop() ?? "";
      for (const line of lines) note(line);
    });
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (err) note(err);
      const line = out.trim().split("\n").pop() ?? "";
      let result: unknown = null;
      try { result = JSON.parse(line); } catch { /* reported below */ }
      if (code !== 0 || result === null) {
        reject(new Error(`bench worker failed (${signal ? `signal ${signal}` : `exit code ${code}`}) on ${JSON.stringify(job)}`));
      } else if (typeof result === "object" && "inputError" in result) {
        const { subject, message } = (result as InputErrorResult).inputError;
        reject(new RwkvInputError(subject, message.startsWith(subject + ": ") ? message.slice(subject.length + 2) : message));
      } else {
        resolve(result as RowResult);
      }
    });
  });
}
