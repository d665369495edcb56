import type { Architecture, ModelConfig } from "../model.js";
import { linearRange } from "../random-ranges.js";
import type { TensorLayout } from "../shapes.js";
import { rwkv7, v7TimeMix } from "../v7/infer.js";
import { v7Successor } from "../v7/index.js";
import type { VersionModule } from "../versions.js";
import { deepEmbedChannelMix, GATE } from "./deep-embed.js";

/**
 * RWKV-7a = RWKV-7 + DeepEmbed (../shared/reference/rwkv-lm/rwkv_v7a_demo.py): the RWKV-7 time
 * mix and state, and the channel mix gated per token (deep-embed.ts).
 */
export const rwkv7a: Architecture = {
  ...rwkv7,
  name: "RWKV-7a",
  block(w, i, cfg, be) {
    return { timeMix: v7TimeMix(w, i, cfg, be), channelMix: deepEmbedChannelMix(w, i, cfg, be) };
  },
};

/** DeepEmbed's tensors of layer i (rwkv_v7a_demo.py's ffn): the (V, E·E) table, its fold and the gate. */
export function deepEmbedLayout(i: number, cfg: ModelConfig): TensorLayout[] {
  const f = `blocks.${i}.ffn.`, { nEmbd: C, dimFfn: F, vocabSize: V } = cfg;
  return [
    { name: f + "s_emb.weight", shape: [V, GATE * GATE] }, { name: f + "s_emb_x.weight", shape: [GATE * GATE, C] },
    { name: f + "s1", shape: [C, GATE] }, { name: f + "s2", shape: [GATE, F] }, { name: f + "s0", shape: [F] },
  ];
}

/** Random DeepEmbed values: a small table and fold (the gate stays near its bias s0, itself near 1). */
export function deepEmbedRandom(name: string, shape: readonly number[]): readonly [number, number] | undefined {
  if (/\.ffn\.s_emb\.weight$/.test(name)) return [-0.1, 0.1];
  if (/\.ffn\.s_emb_x\.weight$/.test(name)) return linearRange(10 * shape[1]); // a small fold of LN0(emb)
  if (/\.ffn\.s1$/.test(name)) return linearRange(shape[0]);
  if (/\.ffn\.s2$/.test(name)) return linearRange(4 * shape[0]);
  if (/\.ffn\.s0$/.test(name)) return [0.8, 1.2];
  return undefined;
}

export const v7a: VersionModule = v7Successor({
  id: "7a",
  name: "RWKV-7a",
  marker: "blocks.0.ffn.s_emb.weight",
  architecture: rwkv7a,
  extraLayer: deepEmbedLayout,
  randomOverride: deepEmbedRandom,
});
