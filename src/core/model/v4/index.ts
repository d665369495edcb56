import type { ModelConfig } from "../model.js";
import { countLayers, skeletonLayout, type TensorLayout, type TensorShapes } from "../shapes.js";
import type { VersionModule } from "../versions.js";
import { RWKVCPP } from "./formats.js";
import { channelMixTimeMix, timeParamGroup } from "../../train/version.js";
import { rwkv4 } from "./infer.js";
import { initLayerV4, timeMixV4 } from "./train.js";

/*
 * RWKV-4 (SPEC §3): what generic code needs to know about it. The math is in infer.ts and
 * train.ts. Letters: C = n_embd, A = dim_att, F = dim_ffn.
 */

/** RWKV-v4neo's emb init U(±lr_init) when no learning rate is given: its default lr_init. */
const DEFAULT_LR_INIT = 6e-4;
/** WKV-4 multiply-adds per channel and step: a handful of scalar ops (no heads). */
const WKV_MACS = 4;

function inferConfig(t: TensorShapes): ModelConfig {
  const [V, C] = t.shape("emb.weight");
  const A = t.shape("blocks.0.att.key.weight")[0];
  return {
    version: "4", nLayer: countLayers(t), nEmbd: C, vocabSize: V, dimAtt: A,
    dimFfn: t.shape("blocks.0.ffn.key.weight")[0],
    nHead: 1, headSize: A, // v4 has no heads: one "head" spanning all channels
  };
}

/** RWKV-v4neo's state dict order. */
function layout(cfg: ModelConfig): TensorLayout[] {
  const { nEmbd: C, dimFfn: F } = cfg;
  const v = [1, 1, C];
  return skeletonLayout(cfg, (i) => {
    const a = `blocks.${i}.att.`, f = `blocks.${i}.ffn.`;
    const out: Array<[string, readonly number[]]> = [[a + "time_decay", [C]], [a + "time_first", [C]]];
    for (const x of ["k", "v", "r"]) out.push([`${a}time_mix_${x}`, v]);
    for (const m of ["key", "value", "receptance", "output"]) out.push([`${a}${m}.weight`, [C, C]]);
    out.push([f + "time_mix_k", v], [f + "time_mix_r", v], [f + "key.weight", [F, C]], [f + "receptance.weight", [C, C]], [f + "value.weight", [C, F]]);
    return out.map(([name, shape]) => ({ name, shape }));
  });
}

/** Random-model values: mixes in (0, 1), per-channel decays and bonuses. */
function randomRange(name: string): readonly [number, number] {
  if (/\.time_mix_[kvr]$/.test(name)) return [0, 1];
  if (name.endsWith(".time_decay")) return [-6, 1];
  if (name.endsWith(".time_first")) return [-1, 1];
  throw new Error(`RWKV-4 random model: no value range for ${name}`);
}

export const v4: VersionModule = {
  id: "4",
  name: "RWKV-4",
  detect: (has) => has("blocks.0.att.time_decay"),
  inferConfig,
  heads: false,
  defaultDimFfn: (C) => 4 * C,
  rwkvcpp: RWKVCPP,
  architecture: rwkv4,
  layout,
  randomRange,
  train: {
    blocks: { timeMix: timeMixV4, channelMix: channelMixTimeMix },
    initLayer: initLayerV4,
    embInit: (lrInit) => lrInit ?? DEFAULT_LR_INIT,
    paramGroup: timeParamGroup,
    wkvMacsPerChannel: () => WKV_MACS,
  },
};
