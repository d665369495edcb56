import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import type { WasmWorkerInit } from "../../core/wasm-runtime.js";

/*
 * Node's kernel threads, one for both halves of the kernel table: the inference backend and its
 * training kernel sets (pool.ts) start their workers here, each a worker_thread running worker.js, which
 * joins the module's shared memory by the one protocol of src/core/wasm-runtime.ts (WasmWorkerInit,
 * joinKernelWorker). Workers are unref'd, so they never keep the process alive.
 */

/** Default thread count: every core this process may use. */
export function defaultThreads(): number {
  return availableParallelism();
}

/** Starts one kernel worker for the module, memory and control block in `init`. */
export function spawnKernelWorker(init: WasmWorkerInit): void {
  const w = new Worker(new URL("./worker.js", import.meta.url), { workerData: init });
  // A worker that dies only loses its help: the other threads claim every chunk themselves.
  w.on("error", (e) => process.emitWarning(`wasm kernel worker stopped: ${e instanceof Error ? e.message : String(e)}`));
  w.unref();
}
