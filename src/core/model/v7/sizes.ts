/* RWKV-7's constants and sizes, used by inference, training and the version module. Letters: C = n_embd. */

import { TRAINED_GROUP_NORM_EPS } from "../norms.js";

/** GroupNorm eps of `ln_x`: the trained models' (norms.ts). */
export const GROUP_NORM_EPS = TRAINED_GROUP_NORM_EPS;
/** The LoRA widths' multiple and minimum (train_temp rounds to 32). */
const LORA_MULTIPLE = 32;
/** train_temp's "suggestion" factors k of each LoRA width k·√C: decay, in-context rate, value, gate. */
const LORA_FACTORS = { w: 2.5, a: 2.5, v: 1.7, g: 5 } as const;
/** The six token-shift mixes, in the order of lerp's outputs. */
export const MIX_NAMES = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"] as const;

/** Python's round(): halves go to the even neighbour. */
function pyRound(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The LoRA widths of a new model of width C, RWKV-LM train_temp's `max(32, round(k·√C/32)·32)`.
 * For C = 768 they are the released 0.1B's 64, 64, 32, 128.
 */
export function loraWidths(C: number): Record<keyof typeof LORA_FACTORS, number> {
  const w = (k: number) => Math.max(LORA_MULTIPLE, pyRound((k * Math.sqrt(C)) / LORA_MULTIPLE) * LORA_MULTIPLE);
  return { w: w(LORA_FACTORS.w), a: w(LORA_FACTORS.a), v: w(LORA_FACTORS.v), g: w(LORA_FACTORS.g) };
}

