// A training-kernel worker: joins the shared memory of a WasmTrainKernels and runs its part of every
// job until told to exit (assembly/train.ts workerLoop). Started by train-pool.ts with the compiled module.
import { workerData } from "node:worker_threads";
import type { TrainWorkerInit } from "../../core/train/wasm-kernels.js";

interface WorkerExports { workerLoop(ctrl: number, spin: number): void }
interface WasmInstanceCtor { new (m: unknown, imports: Record<string, Record<string, unknown>>): { exports: unknown } }

const init = workerData as TrainWorkerInit;
const Instance = (globalThis as unknown as { WebAssembly: { Instance: WasmInstanceCtor } }).WebAssembly.Instance;
const exports = new Instance(init.module, { env: { memory: init.memory } }).exports as WorkerExports;
exports.workerLoop(init.ctrl, init.spin);
