import { type FormatTable, mapped, squeezedRow, vectorRow } from "../../formats/tensor-map.js";

/* RWKV-4's rows of the external formats' tensor tables (formats/tensor-map.ts). */

/** rwkv.cpp: time_mix (1,1,C) as (C); time_decay as -exp(time_decay), the log-space decay. */
export const RWKVCPP: FormatTable = {
  rows: [
    vectorRow(/\.time_mix_[kvr]$/),
    mapped(squeezedRow(/\.time_decay$/), (w) => -Math.exp(w), (x) => Math.log(-x)),
    squeezedRow(/\.time_/),
  ],
};
