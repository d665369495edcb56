// A kernel worker: joins a WebAssembly module's shared memory and runs its part of every job until
// told to exit (workerLoop of assembly/kernels.ts or assembly/train.ts, which share the protocol).
// Started by pool.ts (inference backend) and train-pool.ts (training kernels) with the compiled module.
import { workerData } from "node:worker_threads";
import type { WasmWorkerInit } from "../../core/wasm-runtime.js";

interface WorkerExports { workerLoop(ctrl: number, spin: number): void }
interface WasmInstanceCtor { new (m: unknown, imports: Record<string, Record<string, unknown>>): { exports: unknown } }

const init = workerData as WasmWorkerInit;
const Instance = (globalThis as unknown as { WebAssembly: { Instance: WasmInstanceCtor } }).WebAssembly.Instance;
const exports = new Instance(init.module, { env: { memory: init.memory } }).exports as WorkerExports;
exports.workerLoop(init.ctrl, init.spin);
