import type { Model } from "../../core/model/model.js";
import { UnmergedUnsupportedError } from "../../core/adapters/unmerged.js";
import { RwkvInputError } from "../../core/errors.js";
import { type AdapterSpec, loadAdapterUnmerged, parseLoraFlag, parsePissaFlag } from "../adapters.js";
import { type LoadOptions, loadModel } from "../load.js";
import { parseAdapterFlag, type ServedAdapter, UNMERGED } from "./adapters.js";

/**
 * The adapters of `rwkv serve --adapter NAME=PATH[:ALPHA]` and `--pissa-adapter NAME=ADAPTER:INIT`
 * (`pissaFlags`: a PiSSA adapter and the init_lora file saved when its training started, the same
 * ADAPTER:INIT as the merging --pissa), on top of the base `model` (loaded from
 * modelPath with `base`, any --lora/--pissa/--disha merged). A LoRA/PiSSA or state-tuning adapter is
 * kept unmerged in `model` (its factors and state only: UNMERGED); one that cannot be (DiSHA, full tensors
 * other than ln1/ln2/ln_out) is loaded as a merged model of its own, a full copy of the weights,
 * and `onNote` says so.
 */
export async function loadServedAdapters(model: Model, modelPath: string, base: LoadOptions, flags: readonly string[],
  onNote?: (text: string) => void, pissaFlags: readonly string[] = []): Promise<Map<string, ServedAdapter>> {
  const out = new Map<string, ServedAdapter>();
  const specs: Array<{ flag: string; name: string; spec: AdapterSpec }> = [];
  for (const text of flags) {
    const { name, path } = parseAdapterFlag(text);
    const { path: file, alpha } = parseLoraFlag(path);
    specs.push({ flag: "--adapter", name, spec: { path: file, ...(alpha !== undefined ? { alpha } : {}) } });
  }
  for (const text of pissaFlags) {
    const { name, path } = parseAdapterFlag(text, "--pissa-adapter", "ADAPTER:INIT");
    specs.push({ flag: "--pissa-adapter", name, spec: parsePissaFlag(path, "--pissa-adapter") });
  }
  const names = new Set<string>();
  for (const { flag, name } of specs) { // every flag checked before any file is read
    if (names.has(name)) throw new RwkvInputError(flag, `name "${name}" is given twice`);
    names.add(name);
  }
  for (const { name, spec } of specs) {
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
