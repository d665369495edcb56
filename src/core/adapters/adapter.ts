import type { TensorEntry } from "../tensor.js";

/*
 * A fine-tuning adapter as RWKV-PEFT writes it: a slim state dict whose tensors are named after
 * the base model's, each kind recognised by its suffix (SPEC of the merge scripts in RWKV-PEFT's
 * merge/ folder):
 *   <prefix>.lora_A (r, in), <prefix>.lora_B (out, r)        LoRA:  W += (alpha / r) · B A
 *   the same plus a separate init file's <prefix>.init_lora_A/B  PiSSA: W += B A − B₀ A₀
 *   <prefix>.disha (r, out)  "Bone" form                       W[o, i] += D[i mod r, o]
 *   <prefix>.disha or .bone (in/r, r, r) "Bat" form            each r×r block W_ab += W_ab D_b + D_b
 *   blocks.i.att.time_state (H, N, N)                          state tuning: the initial state
 *   any other base tensor name (emb, head, ln*...)             replaces the base tensor
 * where <prefix>.weight is a Linear weight (out, in) of the base model.
 */

/** RWKV-PEFT's training default for lora_alpha (its peft_config and lora_config examples use 32). */
export const DEFAULT_LORA_ALPHA = 32;

export interface Adapter {
  /** File or directory, for messages. */
  readonly source: string;
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /** LoRA scale numerator: W += (alpha / r) B A. Ignored by PiSSA, whose B A is unscaled. */
  readonly alpha?: number;
  /** PiSSA: the `init_lora_A/B` tensors saved at initialisation, subtracted from the base. */
  readonly pissaInit?: { readonly source: string; readonly tensors: ReadonlyMap<string, TensorEntry> };
}

export const LORA_A = ".lora_A";
export const LORA_B = ".lora_B";
export const INIT_LORA_A = ".init_lora_A";
export const INIT_LORA_B = ".init_lora_B";
export const DISHA = ".disha";
/** RWKV-PEFT's older name for the Bat-form DiSHA matrix (merge_bone.py). */
export const BONE = ".bone";
export const TIME_STATE = ".att.time_state";

/** Which adapter kinds a file holds, for messages and `rwkv info`-style summaries. */
export function adapterKinds(a: Adapter): string[] {
  const kinds = new Set<string>();
  for (const name of a.tensors.keys()) {
    if (name.endsWith(LORA_A) || name.endsWith(LORA_B)) kinds.add(a.pissaInit ? "PiSSA" : "LoRA");
    else if (name.endsWith(DISHA) || name.endsWith(BONE)) kinds.add("DiSHA");
    else if (name.endsWith(TIME_STATE)) kinds.add("state");
    else kinds.add("full tensors");
  }
  return [...kinds];
}
