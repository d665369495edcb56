/* RWKV-5's constants, used by inference, training and the version modules. */

import { TRAINED_GROUP_NORM_EPS } from "../norms.js";

/** GroupNorm (ln_x) eps of 5.2: the trained models' (norms.ts; pip 5.1/5.2 `F.group_norm(..., eps=64e-5)`). */
export const GROUP_NORM_EPS_52 = TRAINED_GROUP_NORM_EPS;
/** GroupNorm eps of the ungated 5.1 (pip 5.0: `F.group_norm` without eps, torch's default). */
export const GROUP_NORM_EPS_51 = 1e-5;
/** The v5/v6 trainers' dim_ffn: 3.5·C rounded down to a multiple of 32. */
export const ffnWidth = (C: number): number => Math.floor((3.5 * C) / 32) * 32;
