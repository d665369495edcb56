import { type FormatTable, headColumnRow, ShapeProblem, squeezedRow, stackTransposedRow, transposedRow, vectorRow } from "../../formats/tensor-map.js";
import { numel } from "../../tensor.js";

/* RWKV-6's rows of the external formats' tensor tables (formats/tensor-map.ts). Letters: H heads. */

/**
 * rwkv.cpp (convert_pytorch_to_ggml.py squeezes every `.time_*`): LoRA factors transposed,
 * time_maa_w2 (5, Dm, C) as (5, C, Dm), time_decay (1,1,C) as (H, N, 1), time_faaaa (H, N) as (H, N, 1).
 */
export const RWKVCPP: FormatTable = {
  rows: [
    vectorRow(/\.time_maa_[xwkvrg]$/),
    transposedRow(/\.(time_maa_w1|time_decay_w1|time_decay_w2)$/),
    stackTransposedRow(/\.time_maa_w2$/),
    {
      official: /\.time_decay$/,
      toStored: (s, cfg) => [cfg.nHead, numel(s) / cfg.nHead, 1],
      toOfficial: (s) => [1, 1, numel(s)], // kept raw (no re-parameterisation), reshaped
    },
    headColumnRow(/\.time_faaaa$/),
    {
      official: /\.time_state$/, // (H, N, N); a one-head state loses its first axis to the squeeze
      toStored: (s) => s.filter((d) => d !== 1),
      toOfficial: (s) => {
        if (s.length < 2) throw new ShapeProblem(`expected a state (H, N, N), stored shape is [${s}]`);
        return s.length === 2 ? [1, ...s] : s;
      },
    },
    squeezedRow(/\.time_/),
  ],
};
