/*
 * What the two WebAssembly modules (the inference kernels of assembly/kernels.ts and the training
 * kernels of assembly/train.ts) share on the JavaScript side: the slice of the WebAssembly API they
 * use (the project compiles without the DOM lib), how a worker thread joins a module's shared
 * memory, and picking the plain or relaxed-SIMD build of a base64-embedded binary.
 */

export interface WasmMemory { readonly buffer: ArrayBuffer | SharedArrayBuffer; grow(pages: number): number }
export interface WasmModule { readonly __wasmModule?: never }
export interface WasmInstance { readonly exports: Record<string, unknown> }
export interface WasmApi {
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (m: WasmModule, imports: Record<string, Record<string, unknown>>) => WasmInstance;
  validate(bytes: Uint8Array): boolean;
}
export const WA: WasmApi | undefined = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;

/**
 * A further memory of the inference kernels (weights past the first memory's 4 GiB, see
 * backend/wasm.ts): the kernel module instantiated over it runs the jobs whose weights it holds,
 * their arguments in its own control block at `ctrl`.
 */
export interface WasmExtraMemory {
  readonly memory: WasmMemory;
  readonly ctrl: number;
}

/**
 * What a worker needs to join: instantiate `module` over `memory` (imported as env.memory) and call
 * its workerLoop(ctrl, spin). Both modules export the same workerLoop, so one worker script serves both.
 * `memories` (inference kernels only): the further memories, 1, 2, ... in order; the worker
 * instantiates the module over each too and runs their jobs when the first memory's control
 * block hands it one (kernels.ts JOB_IN_MEMORY).
 */
export interface WasmWorkerInit {
  readonly module: WasmModule;
  readonly memory: WasmMemory;
  readonly ctrl: number;
  readonly spin: number;
  readonly memories?: readonly WasmExtraMemory[];
}

/** Starts one worker thread (Node: worker_threads; browsers: a Worker). */
export type WasmWorkerSpawner = (init: WasmWorkerInit) => void;

/** What both modules export for their workers (assembly/threads.ts runWorker with the module's jobs). */
interface WorkerExports { workerLoop(ctrl: number, spin: number): void }
/** What the inference module exports to run one part of a job in its memory. */
interface JobExports { runJob(ctrl: number, job: number, part: number, nparts: number): void }

/** kernels.ts's import: run `part` of `nparts` of `job` in memory `mem` (1, 2, ...). */
export type RunInMemory = (mem: number, job: number, part: number, nparts: number) => void;

/**
 * The imports of a kernel instance over `memory`: the memory, and where its jobs of further
 * memories go (the training module imports only the memory; extra imports are ignored).
 */
export function kernelImports(memory: WasmMemory, runInMemory: RunInMemory): Record<string, Record<string, unknown>> {
  return { env: { memory }, kernels: { runInMemory } };
}

/** For an instance that has no further memories: a job routed elsewhere is a bug. */
const NO_FURTHER_MEMORY: RunInMemory = (mem) => { throw noMemory(mem); };
const noMemory = (mem: number) => new Error(`a kernel job for WebAssembly memory ${mem} reached a thread that does not have it`);

/**
 * The worker's side of the protocol, for either module: instantiates `init.module` over the shared
 * memory (and over each further memory), calls `ready` (if given), then runs the module's
 * workerLoop, which returns only when the kernels are closed (stopWorkers).
 */
export function joinKernelWorker(init: WasmWorkerInit, ready?: () => void): void {
  if (!WA) throw new Error("WebAssembly is not available in this worker");
  const wa = WA;
  const others = (init.memories ?? []).map((m) => ({
    x: new wa.Instance(init.module, kernelImports(m.memory, NO_FURTHER_MEMORY)).exports as unknown as JobExports,
    ctrl: m.ctrl,
  }));
  const route: RunInMemory = others.length === 0 ? NO_FURTHER_MEMORY : (mem, job, part, nparts) => {
    const o = others[mem - 1];
    if (!o) throw noMemory(mem);
    o.x.runJob(o.ctrl, job, part, nparts);
  };
  const exports = new wa.Instance(init.module, kernelImports(init.memory, route)).exports as unknown as WorkerExports;
  ready?.();
  exports.workerLoop(init.ctrl, init.spin);
}

export type WasmSimd = "simd" | "relaxed-simd";

/** The two builds of one module, decoded once each on first use. */
export class WasmBuilds {
  private readonly cache = new Map<WasmSimd, Uint8Array>();

  constructor(private readonly base64: Readonly<Record<WasmSimd, string>>) {}

  bytes(simd: WasmSimd): Uint8Array {
    let b = this.cache.get(simd);
    if (!b) {
      const s = atob(this.base64[simd]);
      b = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
      this.cache.set(simd, b);
    }
    return b;
  }

  /** Whether this runtime can run the relaxed-SIMD build (Node 20 needs --experimental-wasm-relaxed-simd). */
  relaxedAvailable(): boolean {
    return WA !== undefined && WA.validate(this.bytes("relaxed-simd"));
  }

  /** Whether WebAssembly SIMD with shared memory works here at all. */
  available(): boolean {
    try {
      return WA !== undefined && WA.validate(this.bytes("simd")) && sharedMemoryWorks(WA);
    } catch {
      return false;
    }
  }
}

/**
 * Whether a shared WebAssembly memory can be made. Asked of the memory itself, not of the
 * SharedArrayBuffer global: a browser page that is not cross-origin isolated hides that global but
 * still makes shared memories (the kernels then run on one thread, as no worker can be handed one).
 */
function sharedMemoryWorks(wa: WasmApi): boolean {
  try {
    return wa.Memory !== undefined && new wa.Memory({ initial: 1, maximum: 1, shared: true }).buffer.byteLength > 0;
  } catch {
    return false;
  }
}
