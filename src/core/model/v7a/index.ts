import type { Architecture } from "../model.js";
import { rwkv7, v7TimeMix } from "../v7.js";
import { deepEmbedChannelMix } from "./deep-embed.js";

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
