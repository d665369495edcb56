import { type FormatTable, headColumnRow, type LayerEntry, type LayerTable, PLAIN, ShapeProblem, squeezedRow, stackTransposedRow, transposedRow, vectorRow } from "../../formats/tensor-map.js";
import { numel } from "../../tensor.js";
import { MIX_BLOCKS } from "./sizes.js";

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

/**
 * GGUF (llama.cpp Rwkv6Model): time_maa_w/k/v/r/g fused (5,1,1,C) in that order (older files: one
 * tensor each), LoRA factors transposed, time_maa_w2 (5, Dm, C) as (5, C, Dm), time_decay raw
 * and squeezed, time_faaaa as time_mix_first.
 */
export const GGUF: LayerTable = {
  arch: "rwkv6",
  layer: [
    { stored: "time_mix_lerp_x", official: "att.time_maa_x", row: vectorRow(/./) },
    { stored: "time_mix_lerp_fused", parts: MIX_BLOCKS.map((x) => `att.time_maa_${x}`) },
    ...MIX_BLOCKS.map((x): LayerEntry => ({ stored: `time_mix_lerp_${x}`, official: `att.time_maa_${x}`, row: vectorRow(/./), readOnly: true })),
    { stored: "time_mix_w1", official: "att.time_maa_w1", row: transposedRow(/./) },
    { stored: "time_mix_w2", official: "att.time_maa_w2", row: stackTransposedRow(/./) },
    { stored: "time_mix_decay", official: "att.time_decay", row: vectorRow(/./) },
    { stored: "time_mix_decay_w1", official: "att.time_decay_w1", row: transposedRow(/./) },
    { stored: "time_mix_decay_w2", official: "att.time_decay_w2", row: transposedRow(/./) },
    { stored: "time_mix_first", official: "att.time_faaaa", row: PLAIN },
    { stored: "channel_mix_lerp_k", official: "ffn.time_maa_k", row: vectorRow(/./) },
    { stored: "channel_mix_lerp_r", official: "ffn.time_maa_r", row: vectorRow(/./) },
  ],
  metadata: (cfg, shape) => {
    const last = `blocks.${cfg.nLayer - 1}.att.`;
    return [
      ["rescale_every_n_layers", 0], // weights are written unscaled
      ["time_mix_extra_dim", shape(last + "time_maa_w1")[1] / MIX_BLOCKS.length],
      ["time_decay_extra_dim", shape(last + "time_decay_w1")[1]],
    ];
  },
};
