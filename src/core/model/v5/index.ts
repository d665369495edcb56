import type { ModelConfig } from "../model.js";
import { headedWkvRange } from "../random-ranges.js";
import { headedConfig, skeletonLayout, type TensorLayout } from "../shapes.js";
import type { VersionModule } from "../versions.js";
import { RWKVCPP_51, RWKVCPP_52 } from "./formats.js";
import { EMB_INIT, channelMixTimeMix, timeParamGroup } from "../../train/version.js";
import { rwkv5 } from "./infer.js";
import { ffnWidth, GROUP_NORM_EPS_51, GROUP_NORM_EPS_52 } from "./sizes.js";
import { initLayerV5, timeMixV5 } from "./train.js";

/*
 * RWKV-5 "Eagle" (SPEC §4): 5.2, and the older ungated 5.1 (rwkv.cpp's name; pip calls it 5.0).
 * One block (infer.ts) serves both. Letters: C = n_embd, F = dim_ffn, H heads, N head size.
 */

/** RWKV-LM's RWKV-5.2 state dict order. */
function layout(cfg: ModelConfig): TensorLayout[] {
  const { nEmbd: C, dimFfn: F, nHead: H, headSize: N } = cfg;
  const v = [1, 1, C];
  return skeletonLayout(cfg, (i) => {
    const a = `blocks.${i}.att.`, f = `blocks.${i}.ffn.`;
    const out: Array<[string, readonly number[]]> = ["k", "v", "r", "g"].map((x) => [`${a}time_mix_${x}`, v]);
    out.push([a + "time_decay", [H, N]], [a + "time_faaaa", [H, N]]);
    for (const m of ["receptance", "key", "value", "output", "gate"]) out.push([`${a}${m}.weight`, [C, C]]);
    out.push([a + "ln_x.weight", [C]], [a + "ln_x.bias", [C]], [f + "time_mix_k", v], [f + "time_mix_r", v],
      [f + "key.weight", [F, C]], [f + "receptance.weight", [C, C]], [f + "value.weight", [C, F]]);
    return out.map(([name, shape]) => ({ name, shape }));
  });
}

/** Random-model values: mixes in (0, 1), decays as trained ones span, bonuses near 0. */
function randomRange(name: string): readonly [number, number] {
  if (/\.time_mix_[kvrg]$/.test(name)) return [0, 1];
  return headedWkvRange(name, "RWKV-5");
}

export const v52: VersionModule = {
  id: "5.2",
  name: "RWKV-5.2",
  detect: (has) => has("blocks.0.att.ln_x.weight") && has("blocks.0.att.gate.weight"),
  // time_decay is (H,N), (H,1,1) or (H,): its first axis counts heads.
  inferConfig: (t) => headedConfig(t, "5.2", "blocks.0.att.time_decay"),
  heads: true,
  defaultDimFfn: ffnWidth,
  groupNormEps: GROUP_NORM_EPS_52,
  architecture: rwkv5(GROUP_NORM_EPS_52),
  rwkvcpp: RWKVCPP_52,
  layout,
  randomRange,
  train: {
    blocks: { timeMix: timeMixV5, channelMix: channelMixTimeMix },
    initLayer: initLayerV5,
    embInit: () => EMB_INIT,
    paramGroup: timeParamGroup,
    wkvMacsPerChannel: (cfg) => 2 * cfg.headSize,
  },
};

export const v51: VersionModule = {
  id: "5.1",
  name: "RWKV-5.1",
  detect: (has) => has("blocks.0.att.ln_x.weight"),
  inferConfig: (t) => headedConfig(t, "5.1", "blocks.0.att.time_decay"),
  heads: true,
  defaultDimFfn: ffnWidth,
  groupNormEps: GROUP_NORM_EPS_51,
  architecture: rwkv5(GROUP_NORM_EPS_51),
  rwkvcpp: RWKVCPP_51,
};
