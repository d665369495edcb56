import type { Architecture } from "../model.js";
import { rwkv7, v7TimeMix } from "../v7.js";
import { deepEmbedChannelMix } from "../v7a/deep-embed.js";
import { ATTENTION_WIDTH, CACHE_FIELDS, cacheFloatsPerToken, checkCache, deepEmbedAttention } from "./attention.js";

/**
 * RWKV-7b = RWKV-7a + DeepEmbedAttention (../shared/reference/rwkv-lm/rwkv_v7b_demo.py): per block
 * x += TimeMix(LN1(x)) + Attention(x); x += DeepEmbedChannelMix(LN2(x)). Its state is no longer of
 * constant size: each layer keeps a KV cache of 2 x 32 floats and the token id per token seen.
 */
export const rwkv7b: Architecture = {
  ...rwkv7,
  name: "RWKV-7b",
  initLayerState: (cfg) => ({
    ...rwkv7.initLayerState(cfg),
    q_prev: new Float32Array(ATTENTION_WIDTH), // the token shift of q
    k_cache: new Float32Array(0), v_cache: new Float32Array(0), ctx_tokens: new Float32Array(0),
  }),
  growingState: CACHE_FIELDS,
  checkGrowingState: checkCache,
  stateFloatsPerToken: (w, cfg) => cacheFloatsPerToken(w.shape("blocks.0.qkv.k1")[1], cfg),
  block(w, i, cfg, be) {
    return { attention: deepEmbedAttention(w, i, cfg, be), timeMix: v7TimeMix(w, i, cfg, be), channelMix: deepEmbedChannelMix(w, i, cfg, be) };
  },
};
