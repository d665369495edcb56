import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { type Backend } from "../../core/backend/backend.js";
import { registerBackend, WASM_PRIORITY } from "../../core/backend/registry.js";
import { WasmBackend, type WasmSimd, type WasmWorkerInit, wasmAvailable } from "../../core/backend/wasm.js";

/**
 * Node's wasm backends: the core's kernels with worker_threads over the shared WebAssembly memory.
 * One backend (memory + workers) per thread count, created on first use and kept for the process;
 * the workers are unref'd so they never keep the process alive.
 */

/** Default thread count: every core this process may use. */
export function defaultThreads(): number {
  return availableParallelism();
}

function spawnWorker(init: WasmWorkerInit): void {
  const w = new Worker(new URL("./worker.js", import.meta.url), { workerData: init });
  // A worker that dies only loses its help: the other threads claim every chunk themselves.
  w.on("error", (e) => process.emitWarning(`wasm kernel worker stopped: ${e instanceof Error ? e.message : String(e)}`));
  w.unref();
}

const backends = new Map<string, WasmBackend>();

/** The wasm backend with `threads` threads (default all cores), or null where wasm SIMD cannot run. */
export function wasmBackend(threads: number = defaultThreads(), simd?: WasmSimd): WasmBackend | null {
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`threads must be a positive integer, got ${threads}`);
  if (!wasmAvailable()) return null;
  const key = `${threads}/${simd ?? "auto"}`;
  let b = backends.get(key);
  if (!b) {
    b = new WasmBackend({ threads, simd, spawn: spawnWorker });
    backends.set(key, b);
  }
  return b;
}

/** Replaces the core's single-threaded "wasm" registration with the threaded one. */
export function registerNodeBackends(): void {
  registerBackend("wasm", WASM_PRIORITY, (o): Backend | null => wasmBackend(o.threads ?? defaultThreads()));
}

registerNodeBackends();
