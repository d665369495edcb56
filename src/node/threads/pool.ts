import { type Backend } from "../../core/backend/backend.js";
import { type MemoryLimits, memoryLimitsKey, registerBackend, WASM_PRIORITY } from "../../core/backend/registry.js";
import { WasmBackend, type WasmSimd, wasmAvailable } from "../../core/backend/wasm.js";
import { defaultThreads, spawnKernelWorker } from "./spawn.js";

export { defaultThreads };

/**
 * Node's wasm backends: the core's kernels with worker_threads (spawn.ts) over the shared
 * WebAssembly memory. One backend (memory + workers) per thread count, created on first use and
 * kept for the process.
 */

const backends = new Map<string, WasmBackend>();

/**
 * The wasm backend with `threads` threads (default all cores) and these memory limits (default
 * none but 4 GiB per memory), or null where wasm SIMD cannot run.
 */
export function wasmBackend(threads: number = defaultThreads(), simd?: WasmSimd, memory?: MemoryLimits, fastIntPrefill = false): WasmBackend | null {
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`threads must be a positive integer, got ${threads}`);
  if (!wasmAvailable()) return null;
  const key = `${threads}/${simd ?? "auto"}${memoryLimitsKey(memory)}${fastIntPrefill ? "/fast-int-prefill" : ""}`;
  let b = backends.get(key);
  if (!b) {
    b = new WasmBackend({ threads, simd, spawn: spawnKernelWorker, maxMemoryBytes: memory?.maxBytes, weightBytesPerMemory: memory?.weightBytesPerMemory, fastIntPrefill });
    backends.set(key, b);
  }
  return b;
}

/** Replaces the core's single-threaded "wasm" registration with the threaded one. */
export function registerNodeBackends(): void {
  registerBackend("wasm", WASM_PRIORITY, (o): Backend | null => wasmBackend(o.threads ?? defaultThreads(), undefined, o.memory, o.fastIntPrefill));
}

registerNodeBackends();
