import type { Model } from "../../core/model/model.js";
import { RwkvInputError } from "../../core/errors.js";
import { parseLoraFlag } from "../adapters.js";
import { type LoadOptions, loadModel } from "../load.js";
import { parseAdapterFlag } from "./adapters.js";

/**
 * The models behind `rwkv serve --adapter NAME=PATH[:ALPHA]`: the base (with any --lora/--pissa/
 * --disha merged) plus that adapter, each loaded separately (memory: one model per adapter).
 */
export async function loadServedAdapters(modelPath: string, base: LoadOptions, flags: readonly string[]): Promise<Map<string, Model>> {
  const out = new Map<string, Model>();
  for (const flag of flags) {
    const { name, path } = parseAdapterFlag(flag);
    if (out.has(name)) throw new RwkvInputError("--adapter", `name "${name}" is given twice`);
    const { path: file, alpha } = parseLoraFlag(path);
    out.set(name, await loadModel(modelPath, { ...base, adapters: [...(base.adapters ?? []), { path: file, ...(alpha !== undefined ? { alpha } : {}) }] }));
  }
  return out;
}
