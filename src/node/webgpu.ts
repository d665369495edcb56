import { registerBackend, WASM_PRIORITY } from "../core/backend/registry.js";
import { type WebGpuBackend, prepareWebGpu, webGpuBackend, webGpuUnavailableReason } from "../core/backend/webgpu/index.js";
import type { Gpu, GpuAdapter } from "../core/backend/webgpu/gpu.js";

/*
 * WebGPU in Node: the optional `webgpu` package (Dawn's Node binding) provides a GPU object. It is
 * not a dependency of this package (a 50 MB download of prebuilt Dawn binaries for every platform):
 * users who want the GPU install it themselves (`npm install webgpu`), and without it the registry
 * says so.
 *
 * A software adapter (Dawn over a CPU Vulkan driver such as SwiftShader: the GPU's work done by the
 * CPU) is offered, but ranked below the wasm kernels, which are far faster on the same CPU: it runs
 * only when asked for by name (--backend webgpu), which is how the tests run the backend on machines
 * without a GPU, and a user who installs `webgpu` on such a machine keeps the faster default.
 */

/** The package, named in a variable so that TypeScript and bundlers leave the import to run time. */
const PACKAGE = "webgpu";

/** Where a software adapter ranks: below the wasm kernels (registry.ts's WASM_PRIORITY), above the reference. */
export const SOFTWARE_WEBGPU_PRIORITY = WASM_PRIORITY / 2;

/** Dawn's GPU object: the structural Gpu, plus the option that asks for a software ("fallback") adapter. */
interface DawnGpu {
  requestAdapter(options?: { powerPreference?: "high-performance" | "low-power"; forceFallbackAdapter?: boolean }): Promise<DawnAdapter | null>;
}
/** isFallbackAdapter: on the adapter's info in current WebGPU (Dawn 0.6.2), on the adapter itself in older drafts: both are read. */
type DawnAdapter = GpuAdapter & { readonly isFallbackAdapter?: boolean; readonly info?: { readonly isFallbackAdapter?: boolean } };

/** The package's entry: `create(flags)` makes the GPU object (an ES module, or CommonJS seen as its default export). */
interface DawnModule { create?(flags: string[]): DawnGpu; default?: { create?(flags: string[]): DawnGpu } }

/** Dawn's GPU object, or why there is none. */
export type DawnLoad = { readonly gpu: DawnGpu } | { readonly missing: string };

/**
 * Imports the package (`importer` is the test's seam) and creates Dawn's GPU object. A package that
 * is not installed and one that is installed but fails to load (its native binary needs another
 * platform or a newer C library) are told apart: the second names the loader's error.
 */
export async function loadDawn(importer: () => Promise<unknown> = () => import(PACKAGE)): Promise<DawnLoad> {
  let mod: DawnModule;
  try {
    mod = (await importer()) as DawnModule;
  } catch (e) {
    const err = e as { code?: string; message?: string };
    if (err.code === "ERR_MODULE_NOT_FOUND" && err.message?.includes(`'${PACKAGE}'`)) {
      return { missing: `the optional "${PACKAGE}" package (Dawn for Node) is not installed: npm install ${PACKAGE}` };
    }
    return { missing: `the "${PACKAGE}" package (Dawn for Node) failed to load: ${err.message ?? String(e)}` };
  }
  const create = mod.create ?? mod.default?.create;
  if (!create) return { missing: `the "${PACKAGE}" package has no create() (not Dawn's Node binding?)` };
  return { gpu: create([]) };
}

/** Whether Dawn calls the adapter a fallback one (a CPU implementation). */
function isSoftware(adapter: DawnAdapter): boolean {
  return adapter.info?.isFallbackAdapter === true || adapter.isFallbackAdapter === true;
}

/**
 * The GPU object as prepareWebGpu sees it: a hardware adapter where there is one, else a software
 * one (WebGPU lets an implementation return a fallback adapter only when asked for it); `found`
 * says which it was, or that there was none.
 */
function hardwareFirst(gpu: DawnGpu, found: { software: boolean; none: boolean }): Gpu {
  return {
    async requestAdapter(options) {
      const adapter = (await gpu.requestAdapter(options)) ?? (await gpu.requestAdapter({ ...options, forceFallbackAdapter: true }));
      found.software = adapter !== null && isSoftware(adapter);
      found.none = adapter === null;
      return adapter;
    },
  };
}

/** Why Dawn has no adapter, with what would give it one (the core's reason speaks of browsers). */
const NO_ADAPTER = "Dawn found no WebGPU adapter: no GPU, or no driver for it (Vulkan's on Linux); " +
  "a software Vulkan driver gives a slow one (SwiftShader: VK_ADD_DRIVER_FILES=/usr/lib/chromium/vk_swiftshader_icd.json with Debian's chromium)";

let prepared: Promise<WebGpuBackend | null> | null = null;
let software = false;
/**
 * Dawn's GPU object, held for as long as the process runs: Dawn's instance lives only while its
 * GPU object is reachable, and collecting it under a live device aborts the process (std::system_error).
 */
const held: DawnGpu[] = [];

/**
 * Loads the `webgpu` package if installed and prepares the "webgpu" backend on its first adapter
 * (once per process); a software adapter is registered below the wasm kernels.
 */
export function prepareNodeWebGpu(): Promise<WebGpuBackend | null> {
  prepared ??= (async () => {
    const dawn = await loadDawn();
    if ("missing" in dawn) return prepareWebGpu(null, { missing: dawn.missing });
    held.push(dawn.gpu);
    const found = { software: false, none: false };
    const backend = await prepareWebGpu(hardwareFirst(dawn.gpu, found));
    if (!backend && found.none) return prepareWebGpu(null, { missing: NO_ADAPTER });
    if (backend && found.software) {
      software = true;
      registerBackend("webgpu", SOFTWARE_WEBGPU_PRIORITY, () => webGpuBackend(), () => webGpuUnavailableReason() ?? "", () => webGpuBackend() !== null);
    }
    return backend;
  })();
  return prepared;
}

/** Whether the prepared adapter is a software one (ranked below wasm: chosen only by --backend webgpu). */
export function nodeWebGpuIsSoftware(): boolean {
  return software;
}
