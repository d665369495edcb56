import type { Architecture } from "../model.js";
import { rwkv7, v7TimeMix } from "../v7.js";
import { CACHE_FIELDS, cacheFloatsPerToken, checkCache, hybridAttention } from "../v7b/attention.js";
import { ennChannelMix } from "./index.js";

/**
 * The RWKV-8 rc00 hybrid (../shared/reference/rwkv-lm/rwkv_v8_rc00_hybrid_demo.py): RWKV-8 rc00
 * blocks plus a per-layer causal attention over the context (v7b/attention.ts, without token shifts),
 * on the raw embedding (no ln0). Its state grows like RWKV-7b's.
 */
export const rwkv8Hybrid: Architecture = {
  ...rwkv7,
  name: "RWKV-8 rc00 hybrid",
  embeddingNorm: false,
  initLayerState: (cfg) => ({
    ...rwkv7.initLayerState(cfg),
    k_cache: new Float32Array(0), v_cache: new Float32Array(0), ctx_tokens: new Float32Array(0),
  }),
  growingState: CACHE_FIELDS,
  checkGrowingState: checkCache,
  stateFloatsPerToken: (w, cfg) => cacheFloatsPerToken(w.shape("blocks.0.qkv.kk.weight")[0], cfg),
  block(w, i, cfg, be) {
    return { attention: hybridAttention(w, i, cfg, be), timeMix: v7TimeMix(w, i, cfg, be), channelMix: ennChannelMix(w, i, cfg, be) };
  },
};
