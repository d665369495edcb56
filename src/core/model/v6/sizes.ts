/* RWKV-6's constants, used by inference, training and the version module. */

import { TRAINED_GROUP_NORM_EPS } from "../norms.js";

/** GroupNorm (ln_x) eps: the trained models' (norms.ts). */
export const GROUP_NORM_EPS = TRAINED_GROUP_NORM_EPS;
/** RWKV_Tmix_x060's LoRA widths for C < 4096: token-shift mixes 32 (one per mix), decay 64. */
export const MIX_LORA = 32, DECAY_LORA = 64;
/** time_maa_w1's five LoRA blocks, in its column order. */
export const MIX_BLOCKS = ["w", "k", "v", "r", "g"] as const;
