import { type Backend } from "../../core/backend/backend.js";
import { referenceBackend } from "../../core/backend/reference.js";
import { type MemoryLimits, memoryLimitsKey, registerBackend, trainingKernels, WASM_PRIORITY } from "../../core/backend/registry.js";
import type { TrainKernels } from "../../core/backend/train-kernels.js";
import { WasmBackend, type WasmSimd, wasmAvailable } from "../../core/backend/wasm.js";
import { wasmTraining } from "../../core/backend/wasm-train.js";
import { defaultThreads, spawnKernelWorker } from "./spawn.js";

export { defaultThreads };

/**
 * Node's wasm backends: the core's kernel table (inference and training halves) with
 * worker_threads (spawn.ts) over shared WebAssembly memory. One backend per thread count, build
 * and memory limits, created on first use and kept for the process; its training kernel sets, one
 * per model trained, start their workers through the same spawner and protocol.
 */

const backends = new Map<string, WasmBackend>();

function checkThreads(threads: number): void {
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`threads must be a positive integer, got ${threads}`);
}

/**
 * The wasm backend with `threads` threads (default all cores) and these memory limits (default
 * none but 4 GiB per memory), or null where wasm SIMD cannot run.
 */
export function wasmBackend(threads: number = defaultThreads(), simd?: WasmSimd, memory?: MemoryLimits): WasmBackend | null {
  checkThreads(threads);
  if (!wasmAvailable()) return null;
  const key = `${threads}/${simd ?? "auto"}${memoryLimitsKey(memory)}`;
  let b = backends.get(key);
  if (!b) {
    b = new WasmBackend({
      threads, simd, spawn: spawnKernelWorker, maxMemoryBytes: memory?.maxBytes, weightBytesPerMemory: memory?.weightBytesPerMemory,
      training: wasmTraining,
    });
    backends.set(key, b);
  }
  return b;
}

export type TrainKernelKind = "wasm" | "reference";

/**
 * The training half of a backend's table: "wasm" (WebAssembly SIMD with `threads` threads; the
 * reference where WebAssembly SIMD cannot run) or "reference" (plain TypeScript, one thread).
 * Each call makes a new kernel set with its own memory: one per model being trained.
 */
export function trainKernels(kind: TrainKernelKind = "wasm", threads: number = defaultThreads(), simd?: WasmSimd): TrainKernels {
  checkThreads(threads);
  return trainingKernels((kind === "wasm" ? wasmBackend(threads, simd) : null) ?? referenceBackend);
}

/** Replaces the core's single-threaded "wasm" registration with the threaded one. */
export function registerNodeBackends(): void {
  registerBackend("wasm", WASM_PRIORITY, (o): Backend | null => wasmBackend(o.threads ?? defaultThreads(), undefined, o.memory));
}

registerNodeBackends();
