// A kernel worker (started by spawn.ts for the inference backend and the training kernels alike):
// joins a WebAssembly module's shared memory and runs its part of every job until told to exit.
import { workerData } from "node:worker_threads";
import { joinKernelWorker, type WasmWorkerInit } from "../../core/wasm-runtime.js";

joinKernelWorker(workerData as WasmWorkerInit);
