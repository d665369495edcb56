import { type FormatTable, type LayerEntry, type LayerTable, ShapeProblem, type TensorRow, transposedRow, vectorRow } from "../../formats/tensor-map.js";
import { numel } from "../../tensor.js";
import { MIX_NAMES } from "./sizes.js";

/* RWKV-7's rows of the external formats' tensor tables (formats/tensor-map.ts). */

/** rwkv.cpp (convert_pytorch_to_ggml.py): the six mixes concatenated as x_rwkvag (6, 1, C), LoRA factors transposed. */
export const RWKVCPP: FormatTable = {
  groups: [{ parts: MIX_NAMES.map((x) => "att." + x), stored: "att.x_rwkvag", storedShape: (C) => [MIX_NAMES.length, 1, C] }],
  rows: [transposedRow(/\.att\.[wavg][12]$/)],
};

/** r_k (H, N) stored flat (C): the file's wkv.head_size gives N back. */
const FLAT_HEADS: TensorRow = {
  official: /\.att\.r_k$/,
  toStored: (s) => [numel(s)],
  toOfficial: (s, ctx) => {
    const c = numel(s), N = ctx?.headSize;
    if (N === undefined || N <= 0 || c % N) throw new ShapeProblem(`wkv.head_size (${N}) is missing or does not divide r_k's ${c} values`);
    return [c / N, N];
  },
};

/**
 * GGUF (llama.cpp Rwkv7Model): the six mixes fused (6,1,1,C) in order r,w,k,v,a,g, LoRA factors
 * transposed, w0/a0/v0/k_k/k_a squeezed, r_k flat; layer 0 carries placeholder v0/v1/v2 copied
 * from a0/a1/a2 because llama.cpp's loader requires them with the a-LoRA shapes.
 */
export const GGUF: LayerTable = {
  arch: "rwkv7",
  layer: [
    { stored: "time_mix_lerp_fused", parts: MIX_NAMES.map((x) => "att." + x) },
    ...(["w", "a", "v", "g"] as const).flatMap((m): LayerEntry[] => {
      const from = m === "v" ? { layer0From: "att.a" } : {};
      const entry = (k: string, row: TensorRow): LayerEntry =>
        ({ stored: `time_mix_${m}${k}`, official: `att.${m}${k}`, row, ...(m === "v" ? { layer0From: `${from.layer0From}${k}` } : {}) });
      return [
        ...(m !== "g" ? [entry("0", vectorRow(/./))] : []),
        entry("1", transposedRow(/./)),
        entry("2", transposedRow(/./)),
      ];
    }),
    { stored: "time_mix_k_k", official: "att.k_k", row: vectorRow(/./) },
    { stored: "time_mix_k_a", official: "att.k_a", row: vectorRow(/./) },
    { stored: "time_mix_r_k", official: "att.r_k", row: FLAT_HEADS },
    { stored: "channel_mix_lerp_k", official: "ffn.x_k", row: vectorRow(/./) },
  ],
  metadata: (cfg, shape) => {
    const last = `blocks.${cfg.nLayer - 1}.att.`;
    const width = (m: string) => shape(last + m + "1")[1];
    return [
      ["attention.decay_lora_rank", width("w")],
      ["attention.iclr_lora_rank", width("a")],
      // A one-layer model has no real v-LoRA; the placeholder then has the a-LoRA width.
      ["attention.value_residual_mix_lora_rank", cfg.nLayer > 1 ? width("v") : width("a")],
      ["attention.gate_lora_rank", width("g")],
    ];
  },
};
