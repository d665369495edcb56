import type { ModelConfig } from "../model.js";
import { headedWkvRange, linearRange } from "../random-ranges.js";
import { headedConfig, skeletonLayout, type TensorLayout } from "../shapes.js";
import type { VersionModule } from "../versions.js";
import { GGUF, RWKVCPP } from "./formats.js";
import { EMB_INIT, timeParamGroup } from "../../train/version.js";
import { rwkv6 } from "./infer.js";
import { ffnWidth } from "../v5/sizes.js";
import { DECAY_LORA, GROUP_NORM_EPS, MIX_BLOCKS, MIX_LORA } from "./sizes.js";
import { channelMixV6, initLayerV6, timeMixV6 } from "./train.js";

/*
 * RWKV-6 "Finch" (SPEC §5): what generic code needs to know about it. The math is in infer.ts
 * and train.ts. Letters: C = n_embd, F = dim_ffn, H heads, N head size.
 */

/** RWKV-LM's x060 state dict (RWKV_Tmix_x060 / RWKV_CMix_x060 registration order). */
function layout(cfg: ModelConfig): TensorLayout[] {
  const { nEmbd: C, dimFfn: F, nHead: H, headSize: N } = cfg;
  const v = [1, 1, C];
  return skeletonLayout(cfg, (i) => {
    const a = `blocks.${i}.att.`, f = `blocks.${i}.ffn.`;
    const out: Array<[string, readonly number[]]> = ["x", ...MIX_BLOCKS].map((x) => [`${a}time_maa_${x}`, v]);
    out.push([a + "time_maa_w1", [C, MIX_BLOCKS.length * MIX_LORA]], [a + "time_maa_w2", [MIX_BLOCKS.length, MIX_LORA, C]], [a + "time_decay", v],
      [a + "time_decay_w1", [C, DECAY_LORA]], [a + "time_decay_w2", [DECAY_LORA, C]], [a + "time_faaaa", [H, N]]);
    for (const m of ["receptance", "key", "value", "output", "gate"]) out.push([`${a}${m}.weight`, [C, C]]);
    out.push([a + "ln_x.weight", [C]], [a + "ln_x.bias", [C]], [f + "time_maa_k", v], [f + "time_maa_r", v],
      [f + "key.weight", [F, C]], [f + "receptance.weight", [C, C]], [f + "value.weight", [C, F]]);
    return out.map(([name, shape]) => ({ name, shape }));
  });
}

/** Random-model values: mixes in (0, 1), LoRA factors as Linear weights, decays as trained ones span. */
function randomRange(name: string, shape: readonly number[]): readonly [number, number] {
  if (/\.time_maa_[xwkvrg]$/.test(name)) return [0, 1];
  if (/\.time_(maa|decay)_w1$/.test(name)) return linearRange(shape[0]);
  if (name.endsWith(".time_maa_w2")) return linearRange(shape[1]); // (5, Dm, C): Dm inputs
  if (name.endsWith(".time_decay_w2")) return linearRange(shape[0]);
  return headedWkvRange(name, "RWKV-6");
}

export const v6: VersionModule = {
  id: "6",
  name: "RWKV-6",
  detect: (has) => has("blocks.0.att.time_maa_x"),
  inferConfig: (t) => headedConfig(t, "6", "blocks.0.att.time_faaaa"), // (H, N)
  heads: true,
  defaultDimFfn: ffnWidth,
  groupNormEps: GROUP_NORM_EPS,
  rwkvcpp: RWKVCPP,
  gguf: GGUF,
  architecture: rwkv6,
  layout,
  randomRange,
  train: {
    blocks: { timeMix: timeMixV6, channelMix: channelMixV6 },
    initLayer: initLayerV6,
    embInit: () => EMB_INIT,
    paramGroup: timeParamGroup,
    wkvMacsPerChannel: (cfg) => 2 * cfg.headSize,
  },
  rwkvLm: {
    folder: "RWKV-v5",
    myTesting: "x060",
    extraFlags: [],
    problems: () => [],
  },
};
