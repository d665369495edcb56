import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { referenceTrainKernels, type TrainKernels } from "../../core/train/kernels.js";
import { WasmTrainKernels, wasmTrainAvailable } from "../../core/train/wasm-kernels.js";
import type { WasmSimd, WasmWorkerInit } from "../../core/wasm-runtime.js";

/**
 * Node's training kernels: the core's wasm training kernels with worker_threads over their shared
 * WebAssembly memory. Workers are unref'd, so they never keep the process alive.
 */

export type TrainKernelKind = "wasm" | "reference";

/** Default thread count: every core this process may use. */
export function defaultTrainThreads(): number {
  return availableParallelism();
}

function spawnTrainWorker(init: WasmWorkerInit): void {
  const w = new Worker(new URL("./worker.js", import.meta.url), { workerData: init });
  // A worker that dies only loses its help: the other threads claim every chunk themselves.
  w.on("error", (e) => process.emitWarning(`wasm training worker stopped: ${e instanceof Error ? e.message : String(e)}`));
  w.unref();
}

/**
 * Training kernels of the given kind: "wasm" (WebAssembly SIMD with `threads` threads; the
 * reference where WebAssembly SIMD cannot run) or "reference" (plain TypeScript, one thread).
 * Each call makes a new kernel set with its own memory: one per model being trained.
 */
export function trainKernels(kind: TrainKernelKind = "wasm", threads: number = defaultTrainThreads(), simd?: WasmSimd): TrainKernels {
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`threads must be a positive integer, got ${threads}`);
  if (kind === "reference" || !wasmTrainAvailable()) return referenceTrainKernels;
  return new WasmTrainKernels({ threads, simd, spawn: spawnTrainWorker });
}
