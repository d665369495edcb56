import { type FormatTable, transposedRow } from "../../formats/tensor-map.js";
import { MIX_NAMES } from "./sizes.js";

/* RWKV-7's rows of the external formats' tensor tables (formats/tensor-map.ts). */

/** rwkv.cpp (convert_pytorch_to_ggml.py): the six mixes concatenated as x_rwkvag (6, 1, C), LoRA factors transposed. */
export const RWKVCPP: FormatTable = {
  groups: [{ parts: MIX_NAMES.map((x) => "att." + x), stored: "att.x_rwkvag", storedShape: (C) => [MIX_NAMES.length, 1, C] }],
  rows: [transposedRow(/\.att\.[wavg][12]$/)],
};
