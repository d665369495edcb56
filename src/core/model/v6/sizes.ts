/* RWKV-6's constants, used by inference, training and the version module. */

/** GroupNorm (ln_x) eps: 1e-5 · head_size_divisor² (8²) in the training code, 64e-5 in pip. */
export const GROUP_NORM_EPS = 64e-5;
/** RWKV_Tmix_x060's LoRA widths for C < 4096: token-shift mixes 32 (one per mix), decay 64. */
export const MIX_LORA = 32, DECAY_LORA = 64;
/** time_maa_w1's five LoRA blocks, in its column order. */
export const MIX_BLOCKS = ["w", "k", "v", "r", "g"] as const;
