import { RwkvInputError } from "../errors.js";
import { type Backend, isTrainingOp, type KernelDType, type KernelOp } from "./backend.js";
import { referenceBackend } from "./reference.js";
import { referenceTrainKernels, type TrainKernels } from "./train-kernels.js";
import { defaultWasmBackend, limitedWasmBackend } from "./wasm.js";
import { webGpuBackend, webGpuUnavailableReason } from "./webgpu/index.js";

/**
 * Backends by name, in order of preference. A backend registers itself with a probe that says
 * whether it can run here (WebAssembly features, GPU adapter...); `selectBackend` picks the first
 * that works, falling back to the reference. Model code never chooses kernels itself.
 */

/** Choices a backend may honour when created (others ignore them). */
export interface BackendOptions {
  /** Threads computing each kernel, the caller included; a backend's own default when absent. */
  readonly threads?: number;
  /** Limits of a backend that keeps weights in memories of its own (the wasm backend). */
  readonly memory?: MemoryLimits;
}

/**
 * Memory limits of a backend with its own memories (the wasm backend's WebAssembly memories of
 * at most 4 GiB each). Defaults: no total cap; the backend's own weights per memory.
 */
export interface MemoryLimits {
  /** Most bytes of all its memories together; loading past it fails with an error naming the file and the sizes. */
  readonly maxBytes?: number;
  /** Most bytes of weights one memory takes before the next is used (tests split small models with it). */
  readonly weightBytesPerMemory?: number;
}

/** A cache key for backends made with these limits ("" for the defaults). */
export function memoryLimitsKey(m: MemoryLimits | undefined): string {
  return m?.maxBytes === undefined && m?.weightBytesPerMemory === undefined ? "" : `/${m.maxBytes ?? ""}/${m.weightBytesPerMemory ?? ""}`;
}

type Create = (options: BackendOptions) => Backend | null;
/** Why a backend cannot run here (asked when its probe returned null). */
type Why = () => string;
/** A cheap check that create would succeed, for listings that must not start a backend (absent: assumed). */
type Present = () => boolean;
interface Registration { readonly name: string; readonly priority: number; readonly create: Create; readonly why?: Why; readonly present?: Present }

/** The WebAssembly SIMD kernels rank above the reference wherever they validate. */
export const WASM_PRIORITY = 10;
/** A GPU, once prepareWebGpu found one, ranks above the CPU kernels. */
export const WEBGPU_PRIORITY = 20;

const registrations: Registration[] = [
  { name: "webgpu", priority: WEBGPU_PRIORITY, create: () => webGpuBackend(), why: () => webGpuUnavailableReason() ?? "", present: () => webGpuBackend() !== null },
  {
    name: "wasm", priority: WASM_PRIORITY,
    create: (o) => (memoryLimitsKey(o.memory) === "" ? defaultWasmBackend() : limitedWasmBackend(o.memory ?? {})),
    why: () => "this runtime does not validate the WebAssembly SIMD kernels",
  },
  { name: "reference", priority: 0, create: () => referenceBackend },
];

export function registerBackend(name: string, priority: number, create: Create, why?: Why, present?: Present): void {
  const i = registrations.findIndex((r) => r.name === name);
  if (i >= 0) registrations.splice(i, 1);
  registrations.push({ name, priority, create, why, present });
  registrations.sort((a, b) => b.priority - a.priority);
}

/** Every registered backend, best first, with whether it can run here and if not why (`rwkv info --backends`). */
export function backendAvailability(options: BackendOptions = {}): Array<{ name: string; available: boolean; reason: string }> {
  return registrations.map((r) => {
    const ok = r.create(options) !== null;
    return { name: r.name, available: ok, reason: ok ? "" : r.why?.() || "its probe failed" };
  });
}

/** Every registered backend's name, whether or not it can run here (for validating --backend). */
export function knownBackends(): string[] {
  return registrations.map((r) => r.name);
}

/** The backends that can be selected here (the GPU one only once prepareWebGpu found a device). */
export function availableBackends(): string[] {
  return registrations.filter((r) => r.present?.() ?? true).map((r) => r.name);
}

/** The named backend, or the best available one. Unknown names are an error, not a silent fallback. */
export function selectBackend(name?: string, options: BackendOptions = {}): Backend {
  if (name !== undefined) {
    const r = registrations.find((x) => x.name === name);
    if (!r) throw new RwkvInputError("--backend", `unknown backend "${name}" (known: ${registrations.map((x) => x.name).join(", ")})`);
    const b = r.create(options);
    if (!b) throw new RwkvInputError("--backend", `backend "${name}" cannot run in this environment${r.why ? `: ${r.why()}` : ""}`);
    return b;
  }
  for (const r of registrations) {
    const b = r.create(options);
    if (b) return b;
  }
  return referenceBackend;
}

/**
 * Whether `backend`'s own code runs `op` on `dtype`; where it does not, the reference's code runs
 * it (visibly: see trainingKernels). A backend that does not say (no `supports`) runs every
 * inference op on f32 tensors and matmul on every weight type, and no training op.
 */
export function supports(backend: Backend, op: KernelOp, dtype: KernelDType): boolean {
  if (backend.supports) return backend.supports(op, dtype);
  if (isTrainingOp(op)) return false;
  return op === "matmul" ? dtype !== "f64" : dtype === "f32";
}

/**
 * The training half of `backend`'s kernel table: its own (a new kernel set per call, one per
 * model trained), or, for a backend without training kernels, the reference's, named so that
 * the fallback shows wherever the kernel set's name is printed.
 */
export function trainingKernels(backend: Backend): TrainKernels {
  if (backend.trainKernels) return backend.trainKernels();
  return { ...referenceTrainKernels, name: `reference (fallback: backend "${backend.name}" has no training kernels)` };
}
