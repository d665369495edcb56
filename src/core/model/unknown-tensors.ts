import { FormatError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import type { Architecture, Version } from "./model.js";

/** Leftovers of training that do not change what the model computes: listed in a warning only. */
const HARMLESS_LEFTOVERS = /(^|\.)(num_batches_tracked|exp_avg|exp_avg_sq|step)$|^(optimizer|lr_scheduler|scheduler)\./;
/**
 * Tensors of RWKV variants this engine does not implement, which would otherwise load as another
 * version (7a, 7b, 8 and the 8 hybrid are detected by their tensors and implemented: none left now).
 */
const KNOWN_VARIANTS: ReadonlyArray<{ pattern: RegExp; name: string }> = [];
const MAX_NAMES_SHOWN = 8;

/**
 * After a model is built from a checkpoint: tensors it never read mean the file is of a version or
 * variant the engine does not know, and computing without them gives wrong logits silently. Those
 * are refused by name; known training leftovers are returned for a warning.
 */
export function checkUnreadTensors(ckpt: Checkpoint, version: Version, arch: Pick<Architecture, "unusedByDesign">, unread: readonly string[]): string[] {
  const leftovers: string[] = [];
  const unknown: string[] = [];
  for (const n of unread) {
    if (arch.unusedByDesign?.test(n)) continue;
    (HARMLESS_LEFTOVERS.test(n) ? leftovers : unknown).push(n);
  }
  if (unknown.length) {
    const variant = KNOWN_VARIANTS.find((v) => unknown.some((n) => v.pattern.test(n)));
    const shown = unknown.slice(0, MAX_NAMES_SHOWN).join(", ") + (unknown.length > MAX_NAMES_SHOWN ? ` and ${unknown.length - MAX_NAMES_SHOWN} more` : "");
    const what = variant ? `this is ${variant.name}, which is not supported` : `no supported RWKV version (detected ${version}) uses them`;
    throw new FormatError(ckpt.source, `${unknown.length} unknown tensor${unknown.length > 1 ? "s" : ""} (${shown}): ${what}; refusing to load a model that would compute without them`);
  }
  return leftovers;
}
