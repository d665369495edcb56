import type { Model } from "../../core/model/model.js";
import { UnmergedUnsupportedError } from "../../core/adapters/unmerged.js";
import { RwkvInputError } from "../../core/errors.js";
import { loadAdapterUnmerged, parseLoraFlag } from "../adapters.js";
import { type LoadOptions, loadModel } from "../load.js";
import { parseAdapterFlag, type ServedAdapter, UNMERGED } from "./adapters.js";

/**
 * The adapters of `rwkv serve --adapter NAME=PATH[:ALPHA]`, on top of the base `model` (loaded from
 * modelPath with `base`, any --lora/--pissa/--disha merged). A LoRA/PiSSA or state-tuning adapter is
 * kept unmerged in `model` (its factors and state only: UNMERGED); one that cannot be (DiSHA, full tensors
 * other than ln1/ln2/ln_out) is loaded as a merged model of its own, a full copy of the weights,
 * and `onNote` says so.
 */
export async function loadServedAdapters(model: Model, modelPath: string, base: LoadOptions, flags: readonly string[],
  onNote?: (text: string) => void): Promise<Map<string, ServedAdapter>> {
  const out = new Map<string, ServedAdapter>();
  for (const flag of flags) {
    const { name, path } = parseAdapterFlag(flag);
    if (out.has(name)) throw new RwkvInputError("--adapter", `name "${name}" is given twice`);
    const { path: file, alpha } = parseLoraFlag(path);
    const spec = { path: file, ...(alpha !== undefined ? { alpha } : {}) };
    if (model.loadAdapter) {
      try {
        loadAdapterUnmerged(model, name, spec);
        out.set(name, UNMERGED);
        continue;
      } catch (e) {
        if (!(e instanceof UnmergedUnsupportedError)) throw e;
        onNote?.(`adapter ${name}: ${e.message}; serving it as a merged copy of the model`);
      }
    }
    out.set(name, await loadModel(modelPath, { ...base, adapters: [...(base.adapters ?? []), spec] }));
  }
  return out;
}
