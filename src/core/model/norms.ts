/*
 * The ln_x GroupNorm eps every trained RWKV since 5.2 uses: the training code normalises x/8
 * (head_size_divisor 8) with GroupNorm eps 1e-5, which is eps 1e-5 · 8² on x (pip: 64e-5, SPEC).
 */
export const HEAD_SIZE_DIVISOR = 8;
export const TRAINED_GROUP_NORM_EPS = 1e-5 * HEAD_SIZE_DIVISOR ** 2;
