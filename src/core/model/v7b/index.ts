import type { Architecture, ModelConfig } from "../model.js";
import { linearRange } from "../random-ranges.js";
import type { TensorLayout } from "../shapes.js";
import { v7Successor } from "../v7/index.js";
import { deepEmbedLayout, deepEmbedRandom } from "../v7a/index.js";
import type { VersionModule } from "../versions.js";
import { deepEmbedChannelMix } from "../v7a/deep-embed.js";
import { ATTENTION_WIDTH, attentionArchitecture, attentionNormRandom, CACHE_WIDTH, deepEmbedAttention } from "./attention.js";

/**
 * RWKV-7b = RWKV-7a + DeepEmbedAttention (../shared/reference/rwkv-lm/rwkv_v7b_demo.py): per block
 * x += TimeMix(LN1(x)) + Attention(x); x += DeepEmbedChannelMix(LN2(x)). Its state is no longer of
 * constant size: each layer keeps a KV cache of 2 x 32 floats and the token id per token seen.
 */
export const rwkv7b: Architecture = attentionArchitecture({
  name: "RWKV-7b",
  attention: deepEmbedAttention,
  channelMix: deepEmbedChannelMix,
  cacheWidth: (w) => w.shape("blocks.0.qkv.k1")[1],
  extraState: () => ({ q_prev: new Float32Array(ATTENTION_WIDTH) }), // the token shift of q
});

/** DeepEmbedAttention's tensors of layer i (rwkv_v7b_demo.py's qkv). D = 256, E = 32. */
function attentionLayout(i: number, cfg: ModelConfig): TensorLayout[] {
  const q = `blocks.${i}.qkv.`, { nEmbd: C, vocabSize: V } = cfg, D = ATTENTION_WIDTH, E = CACHE_WIDTH;
  const t = (name: string, shape: readonly number[]): TensorLayout => ({ name: q + name, shape });
  return [
    t("qq.weight", [D, C]), t("k1", [C, E]), t("k2", [E, D]), t("k_emb.weight", [V, D]), t("k_emb_x.weight", [D, C]),
    t("v1", [C, E]), t("v2", [E, C]), t("v_emb.weight", [V, C]), t("v_emb_x.weight", [C, C]),
    t("x_q", [1, 1, D]), t("x_k", [1, 1, D]), t("x_v", [1, 1, C]),
    t("lnq.weight", [D]), t("lnq.bias", [D]), t("lnk.weight", [D]), t("lnk.bias", [D]), t("lnv.weight", [C]), t("lnv.bias", [C]),
  ];
}

/** Random attention values: tables near 1 (they scale k and v per token), small folds, mixes in (0, 1). */
function attentionRandom(name: string, shape: readonly number[]): readonly [number, number] | undefined {
  const last = name.slice(name.indexOf(".qkv.") + 5);
  if (!name.includes(".qkv.")) return deepEmbedRandom(name, shape);
  if (last === "k_emb.weight" || last === "v_emb.weight") return [0.8, 1.2];
  if (last === "k_emb_x.weight" || last === "v_emb_x.weight") return linearRange(10 * shape[1]);
  if (/^[kv][12]$/.test(last)) return linearRange(shape[0]); // used as x·W
  if (/^x_[qkv]$/.test(last)) return [0, 1];
  return attentionNormRandom(name);
}

export const v7b: VersionModule = v7Successor({
  id: "7b",
  name: "RWKV-7b",
  marker: "blocks.0.qkv.k_emb.weight",
  architecture: rwkv7b,
  extraLayer: (i, cfg) => [...deepEmbedLayout(i, cfg), ...attentionLayout(i, cfg)],
  randomOverride: attentionRandom,
});
