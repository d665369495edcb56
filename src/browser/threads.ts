import type { Backend } from "../core/backend/backend.js";
import { type MemoryLimits, memoryLimitsKey, registerBackend, WASM_PRIORITY } from "../core/backend/registry.js";
import { WasmBackend, type WasmWorkerInit, wasmAvailable } from "../core/backend/wasm.js";
import { RwkvInputError } from "../core/errors.js";
import { joinKernelWorker } from "../core/wasm-runtime.js";

/*
 * The browser's wasm backends: the core's kernels with Web Workers over the shared WebAssembly
 * memory, as src/node/threads/pool.ts does with worker_threads. A kernel call blocks its caller
 * until every thread is done (atomic wait), which browsers allow in Workers only and which hands a
 * memory to other workers only in cross-origin isolated pages (COOP/COEP); anywhere else the
 * kernels run on the calling thread alone.
 */

/** Tags the first message to a worker started from rwkv.js, so it knows its role. */
export const ROLE_KEY = "__rwkvRole";
export type WorkerRole = "kernel" | "engine";

interface WorkerLike {
  postMessage(message: unknown): void;
  addEventListener(type: "message" | "error", listener: (e: MessageEvent & ErrorEvent) => void): void;
  terminate(): void;
}
type WorkerCtor = new (url: string | URL, options: { type: "module"; name?: string }) => WorkerLike;

interface BrowserGlobals {
  crossOriginIsolated?: boolean;
  navigator?: { hardwareConcurrency?: number };
  Worker?: WorkerCtor;
  WorkerGlobalScope?: unknown;
}
const g = globalThis as unknown as BrowserGlobals;

/** The script kernel workers run: this bundle itself, unless setWorkerScript says otherwise. */
let workerScript: string | URL = import.meta.url;

/** For code that re-bundles the library: where a copy of dist/browser/rwkv.js is served. */
export function setWorkerScript(url: string | URL): void {
  workerScript = url;
}
export function getWorkerScript(): string | URL {
  return workerScript;
}

export function inWorker(): boolean {
  return g.WorkerGlobalScope !== undefined;
}

/** The most threads the kernels can use here: the cores in an isolated Worker, else 1. */
export function maxThreads(): number {
  const canShare = inWorker() && g.crossOriginIsolated === true && typeof g.Worker === "function";
  return canShare ? Math.max(1, g.navigator?.hardwareConcurrency ?? 1) : 1;
}

/** Why threads > 1 cannot run here, or null when they can. */
export function threadsUnavailableReason(): string | null {
  if (!inWorker()) return "a page's main thread may not wait for other threads: run the model in a Worker (startEngine)";
  if (g.crossOriginIsolated !== true) return "the page is not cross-origin isolated (serve it with COOP: same-origin and COEP: require-corp)";
  if (typeof g.Worker !== "function") return "this Worker cannot start workers";
  return null;
}

/** How long a load waits for a kernel worker to start before going on without it. */
const WORKER_START_TIMEOUT_MS = 10_000;

/** Kernel workers that have joined, counted per backend so a caller can wait for them. */
const pending = new WeakMap<WasmBackend, Promise<void>>();

function spawner(started: Array<Promise<void>>) {
  return (init: WasmWorkerInit): void => {
    const w = new g.Worker!(workerScript, { type: "module", name: "rwkv-kernels" });
    started.push(new Promise<void>((resolve) => {
      w.addEventListener("message", (e) => { if ((e.data as { ready?: boolean })?.ready) resolve(); });
      // A worker that fails or never starts only loses its help (the others claim its chunks): say so, do not wait for it.
      w.addEventListener("error", (e) => { console.warn(`rwkv: a wasm kernel worker failed: ${e.message ?? "unknown error"}`); resolve(); });
      setTimeout(() => resolve(), WORKER_START_TIMEOUT_MS);
    }));
    w.postMessage({ [ROLE_KEY]: "kernel" satisfies WorkerRole, init });
  };
}

const backends = new Map<string, WasmBackend>();

/** The wasm backend with `threads` threads and these memory limits, or null where WebAssembly SIMD cannot run. */
export function browserWasmBackend(threads: number, memory?: MemoryLimits): WasmBackend | null {
  if (!Number.isInteger(threads) || threads < 1) throw new RwkvInputError("threads", `must be a positive integer, got ${threads}`);
  if (threads > 1) {
    const why = threadsUnavailableReason();
    if (why) throw new RwkvInputError("threads", `${threads} threads need shared memory between workers: ${why}`);
  }
  if (!wasmAvailable()) return null;
  const key = `${threads}${memoryLimitsKey(memory)}`;
  let b = backends.get(key);
  if (!b) {
    // Workers started later (a model that needs a further memory restarts them) are not waited for.
    const started: Array<Promise<void>> = [];
    b = new WasmBackend({
      threads, spawn: threads > 1 ? spawner(started) : undefined, maxMemoryBytes: memory?.maxBytes, weightBytesPerMemory: memory?.weightBytesPerMemory,
    });
    pending.set(b, Promise.all(started).then(() => undefined));
    backends.set(key, b);
  }
  return b;
}

/**
 * Resolves once every kernel worker of `backend` has joined. Kernels run correctly before that
 * (the caller claims every chunk), but a Worker only starts once its parent returns to its event
 * loop, so a caller that starts computing at once would run alone for the whole call.
 */
export function backendReady(backend: Backend): Promise<void> {
  return backend instanceof WasmBackend ? pending.get(backend) ?? Promise.resolve() : Promise.resolve();
}

/** The kernel side: what a worker started by spawner() runs; it never returns from workerLoop. */
export function runKernelWorker(init: WasmWorkerInit, post: (m: unknown) => void): void {
  joinKernelWorker(init, () => post({ ready: true }));
}

/** Default thread count: all cores where threads can run, else 1. */
export function defaultThreads(): number {
  return maxThreads();
}

registerBackend("wasm", WASM_PRIORITY, (o): Backend | null => browserWasmBackend(o.threads ?? defaultThreads(), o.memory));
