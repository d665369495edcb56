import { type FormatTable, headColumnRow, mapped, ShapeProblem, squeezedRow, type TensorRow, vectorRow } from "../../formats/tensor-map.js";
import { numel } from "../../tensor.js";
import { GROUP_NORM_EPS_51 } from "./sizes.js";

/* RWKV-5's rows of the external formats' tensor tables (formats/tensor-map.ts). Letters: H heads, N head size. */

/** rwkv.cpp's graph computes every v5 group norm with torch's default eps (its reference outputs only match with it). */
const RWKVCPP_NUMERICS = { groupNormEps: GROUP_NORM_EPS_51 };

/** The decay as rwkv.cpp stores it: the multiplicative w = exp(-exp(time_decay)). */
const decayToStored = (w: number) => Math.exp(-Math.exp(w));
const decayToOfficial = (x: number) => Math.log(-Math.log(x));

/** A per-head value (H) stored as (H, 1, 1). */
function perHeadRow(official: RegExp): TensorRow {
  return {
    official,
    toStored: (s) => [numel(s), 1, 1],
    toOfficial: (s) => {
      if (s.filter((d) => d !== 1).length > 1) throw new ShapeProblem(`expected a vector, stored shape is [${s}]`);
      return [numel(s)];
    },
  };
}

/** 5.2: time_decay (H, N) as exp(-exp(·)) in (H, N, 1), time_faaaa (H, N) as (H, N, 1). */
export const RWKVCPP_52: FormatTable = {
  numerics: RWKVCPP_NUMERICS,
  rows: [
    vectorRow(/\.time_mix_[kvrg]$/),
    mapped(headColumnRow(/\.time_decay$/), decayToStored, decayToOfficial),
    headColumnRow(/\.time_faaaa$/),
    squeezedRow(/\.time_/),
  ],
};

/** 5.1: per-head time_decay as exp(-exp(·)) and time_first as exp(·), both (H, 1, 1). */
export const RWKVCPP_51: FormatTable = {
  numerics: RWKVCPP_NUMERICS,
  rows: [
    vectorRow(/\.time_mix_[kvrg]$/),
    mapped(perHeadRow(/\.time_decay$/), decayToStored, decayToOfficial),
    mapped(perHeadRow(/\.time_first$/), Math.exp, Math.log),
    squeezedRow(/\.time_/),
  ],
};
