import { type WebGpuBackend, prepareWebGpu } from "../core/backend/webgpu/index.js";
import type { Gpu } from "../core/backend/webgpu/gpu.js";

/*
 * WebGPU in Node: the optional `webgpu` package (Dawn's Node binding) provides a GPU object. It is
 * not a dependency of this package (it builds or downloads a native binary at install): users who
 * want the GPU install it themselves (`npm install webgpu`), and without it the registry says so.
 */

/** The package, named in a variable so that TypeScript and bundlers leave the import to run time. */
const PACKAGE = "webgpu";

/** The package's entry: `create(flags)` makes the GPU object (an ES module, or CommonJS seen as its default export). */
interface DawnModule { create?(flags: string[]): Gpu; default?: { create?(flags: string[]): Gpu } }

let prepared: Promise<WebGpuBackend | null> | null = null;

/** Loads the `webgpu` package if installed and prepares the "webgpu" backend on its first adapter (once per process). */
export function prepareNodeWebGpu(): Promise<WebGpuBackend | null> {
  prepared ??= (async () => {
    let mod: DawnModule;
    try {
      mod = (await import(PACKAGE)) as DawnModule;
    } catch {
      return prepareWebGpu(null, { missing: `the optional "${PACKAGE}" package (Dawn for Node) is not installed: npm install ${PACKAGE}` });
    }
    const create = mod.create ?? mod.default?.create;
    if (!create) return prepareWebGpu(null, { missing: `the "${PACKAGE}" package has no create() (not Dawn's Node binding?)` });
    return prepareWebGpu(create([]));
  })();
  return prepared;
}
