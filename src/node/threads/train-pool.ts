import { referenceTrainKernels, type TrainKernels } from "../../core/train/kernels.js";
import { WasmTrainKernels, wasmTrainAvailable } from "../../core/train/wasm-kernels.js";
import type { WasmSimd } from "../../core/wasm-runtime.js";
import { defaultThreads, spawnKernelWorker } from "./spawn.js";

/**
 * Node's training kernels: the core's wasm training kernels with worker_threads (spawn.ts, the
 * same workers and protocol as the inference backend) over their shared WebAssembly memory.
 */

export type TrainKernelKind = "wasm" | "reference";

/**
 * Training kernels of the given kind: "wasm" (WebAssembly SIMD with `threads` threads; the
 * reference where WebAssembly SIMD cannot run) or "reference" (plain TypeScript, one thread).
 * Each call makes a new kernel set with its own memory: one per model being trained.
 */
export function trainKernels(kind: TrainKernelKind = "wasm", threads: number = defaultThreads(), simd?: WasmSimd): TrainKernels {
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`threads must be a positive integer, got ${threads}`);
  if (kind === "reference" || !wasmTrainAvailable()) return referenceTrainKernels;
  return new WasmTrainKernels({ threads, simd, spawn: spawnKernelWorker });
}
