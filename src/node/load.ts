import type { Backend } from "../core/backend/backend.js";
import { type MemoryLimits, selectBackend } from "../core/backend/registry.js";
import { WasmMemoryLimitError } from "../core/backend/wasm.js";
import { prepareNodeWebGpu } from "./webgpu.js";
import type { Checkpoint } from "../core/formats/checkpoint.js";
import { FormatError, RwkvInputError } from "../core/errors.js";
import { checkingFinite, firstNonFinite } from "../core/formats/finite.js";
import { openCheckpoint } from "../core/formats/open.js";
import { architectureFor, detectVersion } from "../core/model/detect.js";
import { buildModel, type Model } from "../core/model/model.js";
import { mergeAdapters } from "../core/adapters/merge.js";
import { type AdapterSpec, openAdapter } from "./adapters.js";
import { FileSource } from "./file-source.js";
import { statSync } from "node:fs";
import "./threads/pool.js"; // registers the threaded wasm backend

export interface LoadOptions {
  /** Backend name; default: the best available. */
  readonly backend?: string;
  /**
   * Keep matrices in the file's compact type ("compact", default), upcast them to f32 at load, or
   * quantize f32/f16/bf16 ones to per-row int8 ("int8": about a quarter of f32, see int8.ts).
   */
  readonly matrices?: "compact" | "f32" | "int8";
  /** Threads for the kernels (wasm backend), the calling one included; default: all cores. */
  readonly threads?: number;
  /**
   * Integrity checks (default true): the CRC-32 of every .pth zip entry as it is read, and one pass
   * over every tensor for NaN / infinity. `false` (CLI --no-verify) skips both.
   */
  readonly verify?: boolean;
  /** Receives warnings about ignored, known-harmless tensors; default: printed to stderr. */
  readonly onWarning?: (message: string) => void;
  /**
   * LoRA / PiSSA / DiSHA / state-tuning / full-tensor adapters merged at load, in order, into the
   * matrices' stored type (re-quantized when the base is block-quantized; `onNote` says so).
   */
  readonly adapters?: readonly AdapterSpec[];
  /** Remarks about the load (e.g. re-quantized merged matrices). */
  readonly onNote?: (text: string) => void;
  /**
   * Memory limits of the backend (the wasm backend: total bytes, weights per WebAssembly memory);
   * a model past the total fails to load with an error naming the file and the sizes.
   */
  readonly memory?: MemoryLimits;
}

/** Opens a checkpoint file of any supported format (chosen by content) and reads its tensor index. */
export function loadCheckpoint(path: string, options: Pick<LoadOptions, "verify"> = {}): { checkpoint: Checkpoint; close(): void } {
  const src = new FileSource(path);
  try {
    return { checkpoint: openCheckpoint(src, { verifyChecksums: options.verify ?? true }), close: () => src.close() };
  } catch (e) {
    src.close();
    throw e;
  }
}

/** Loads an RWKV model: format from content, version from tensor names, sizes from shapes. */
export async function loadModel(path: string, options: LoadOptions = {}): Promise<Model> {
  if (options.backend === undefined || options.backend === "webgpu") await prepareNodeWebGpu(); // a GPU where the user installed `webgpu`
  const backend: Backend = selectBackend(options.backend, { threads: options.threads, memory: options.memory });
  const verify = options.verify ?? true;
  const base = loadCheckpoint(path, { verify });
  const closers = [base.close];
  try {
    let checkpoint = base.checkpoint;
    if (options.adapters?.length) {
      const adapters = options.adapters.map((spec) => {
        const a = openAdapter(spec);
        closers.push(a.close);
        return a.adapter;
      });
      const merged = mergeAdapters(checkpoint, adapters);
      for (const n of merged.notes) options.onNote?.(n);
      checkpoint = merged.checkpoint;
    }
    const version = detectVersion(checkpoint);
    const onWarning = options.onWarning ?? ((m: string) => process.stderr.write(`warning: ${m}\n`));
    try {
      const model = buildModel(verify ? checkingFinite(checkpoint) : checkpoint, architectureFor(version, path), version, backend, { matrices: options.matrices, onWarning });
      if (verify) await checkFirstStep(model, path);
      return model;
    } catch (e) {
      if (!(e instanceof WasmMemoryLimitError)) throw e;
      throw new RwkvInputError(path, `the model does not fit the memory allowed: a ${mib(statSync(path).size)} file, and loading it ` +
        `would take ${mib(e.needed)} or more of WebAssembly memory, over the ${mib(e.limit)} limit ` +
        "(a smaller weight type: --matrices int8, a quantized file; or --backend reference)");
    }
  } finally {
    for (const c of closers) c();
  }
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(2)} MiB`;

/**
 * Finite weights can still overflow (a corrupted exponent making one weight 1e38): one token
 * through the model, and non-finite logits mean a corrupt file rather than NaN answers later.
 */
async function checkFirstStep(model: Model, path: string): Promise<void> {
  const logits = await model.step(0, model.initState());
  const i = firstNonFinite(logits);
  if (i >= 0) {
    throw new FormatError(path, `the model's logits are non-finite (${logits[i]} for token ${i}) after one step although every weight is finite: extreme values in the file (corrupt?); --no-verify loads it anyway`);
  }
}
