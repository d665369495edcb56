import type { Architecture, ModelConfig } from "../model.js";
import type { TensorLayout } from "../shapes.js";
import { v7Successor } from "../v7/index.js";
import type { VersionModule } from "../versions.js";
import { ATTENTION_WIDTH, attentionArchitecture, attentionNormRandom, CACHE_WIDTH, hybridAttention } from "../v7b/attention.js";
import { ennChannelMix, ennLayout, ennRandom } from "./index.js";

/**
 * The RWKV-8 rc00 hybrid (../shared/reference/rwkv-lm/rwkv_v8_rc00_hybrid_demo.py): RWKV-8 rc00
 * blocks plus a per-layer causal attention over the context (v7b/attention.ts, without token shifts),
 * on the raw embedding (no ln0). Its state grows like RWKV-7b's.
 */
export const rwkv8Hybrid: Architecture = attentionArchitecture({
  name: "RWKV-8 rc00 hybrid",
  attention: hybridAttention,
  channelMix: ennChannelMix,
  cacheWidth: (w) => w.shape("blocks.0.qkv.kk.weight")[0],
}, {
  embeddingNorm: false,
  // RWKV-7's unused layer-0 v0/v1/v2, and ln0: the hybrid's code never applies it (a checkpoint may still carry it).
  unusedByDesign: /^blocks\.0\.(att\.v[012]|ln0\.(weight|bias))$/,
});

/** The hybrid attention's tensors of layer i (rwkv_v8_rc00_hybrid_demo.py's qkv). D = 256, E = 32. */
function hybridLayout(i: number, cfg: ModelConfig): TensorLayout[] {
  const q = `blocks.${i}.qkv.`, { nEmbd: C, vocabSize: V } = cfg, D = ATTENTION_WIDTH, E = CACHE_WIDTH;
  const t = (name: string, shape: readonly number[]): TensorLayout => ({ name: q + name, shape });
  return [
    t("qq.weight", [D, C]), t("kk.weight", [E, C]), t("kkup.weight", [D, E]), t("ennk.weight", [V, D]),
    t("vv.weight", [E, C]), t("vvup.weight", [C, E]), t("emm.weight", [V, C]),
    t("lnq.weight", [D]), t("lnq.bias", [D]), t("lnk.weight", [D]), t("lnk.bias", [D]), t("lnv.weight", [C]), t("lnv.bias", [C]),
  ];
}

/** Random hybrid values: its per-token tables near 1 (they scale k and v), norms as LayerNorms. */
function hybridRandom(name: string): readonly [number, number] | undefined {
  if (/\.qkv\.(ennk|emm)\.weight$/.test(name)) return [0.8, 1.2];
  return ennRandom(name) ?? attentionNormRandom(name);
}

export const v8Hybrid: VersionModule = v7Successor({
  id: "8-hybrid",
  name: "RWKV-8 rc00 hybrid",
  marker: "blocks.0.qkv.kkup.weight",
  architecture: rwkv8Hybrid,
  extraLayer: (i, cfg) => [...ennLayout(i, cfg), ...hybridLayout(i, cfg)],
  dropped: /^blocks\.0\.ln0\./, // the embedding is used as is
  randomOverride: hybridRandom,
});
