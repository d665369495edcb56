import { channelMixV7, initLayerV7, timeMixV7 } from "./train.js";
import { rwkv7 } from "./infer.js";
import type { ModelConfig } from "../model.js";
import { GROUP_NORM_EPS, loraWidths, MIX_NAMES } from "./sizes.js";
import { countLayers, DEFAULT_HEAD_SIZE, skeletonLayout, type TensorLayout, type TensorShapes } from "../shapes.js";
import { linearRange } from "../random-ranges.js";
import type { VersionModule } from "../versions.js";
import { GGUF, RWKVCPP } from "./formats.js";
import { EMB_INIT, LR_2X } from "../../train/version.js";

/*
 * RWKV-7 "Goose" (SPEC §6): what generic code needs to know about it. The math is in infer.ts
 * (inference) and train.ts (training). Letters: C = n_embd, H heads, N head size, F = dim_ffn,
 * D* the LoRA widths (Dw decay, Da in-context rate, Dv value residual, Dg gate).
 */

/** RWKV-LM's RWKV-7 kernels are built for this head size. */
const RWKV_LM_HEAD_SIZE = 64;

function inferConfig(t: TensorShapes): ModelConfig {
  const [V, C] = t.shape("emb.weight");
  const rk = t.shape("blocks.0.att.r_k");
  const [H, N] = rk.length === 2 ? rk : [C / DEFAULT_HEAD_SIZE, DEFAULT_HEAD_SIZE]; // r_k is (H, N); flattened copies would assume N = 64
  return {
    version: "7", nLayer: countLayers(t), nEmbd: C, vocabSize: V, dimAtt: C, nHead: H, headSize: N,
    dimFfn: t.shape("blocks.0.ffn.key.weight")[0],
  };
}

/** The released layout, in RWKV_Tmix_x070's registration order (each LoRA's matrices before its bias). */
function layout(cfg: ModelConfig): TensorLayout[] {
  const { nEmbd: C, dimFfn: F, nHead: H, headSize: N } = cfg;
  const D = loraWidths(C);
  const v = [1, 1, C];
  return skeletonLayout(cfg, (i) => {
    const a = `blocks.${i}.att.`, f = `blocks.${i}.ffn.`;
    const out: Array<[string, readonly number[]]> = MIX_NAMES.map((x) => [a + x, v]);
    for (const m of ["w", "a", "v", "g"] as const) {
      out.push([`${a}${m}1`, [C, D[m]]], [`${a}${m}2`, [D[m], C]]);
      if (m !== "g") out.push([`${a}${m}0`, v]);
    }
    out.push([a + "k_k", v], [a + "k_a", v], [a + "r_k", [H, N]]);
    for (const m of ["receptance", "key", "value", "output"]) out.push([`${a}${m}.weight`, [C, C]]);
    out.push([a + "ln_x.weight", [C]], [a + "ln_x.bias", [C]], [f + "x_k", v], [f + "key.weight", [F, C]], [f + "value.weight", [C, F]]);
    return out.map(([name, shape]) => ({ name, shape }));
  });
}

/** Random-model values: mixes in (0, 1), decays spanning trained ones, rates and gates near their trained spread. */
function randomRange(name: string, shape: readonly number[]): readonly [number, number] {
  const last = name.slice(name.lastIndexOf(".") + 1);
  if (/^[wavg][12]$/.test(last)) return linearRange(shape[0]); // LoRA factors, used as x·W
  if (/^x_[rwkvag]$/.test(last)) return [0, 1];
  if (last === "w0") return [-3, 1];
  if (last === "a0" || last === "v0") return [-1, 1];
  if (last === "k_k") return [0.5, 1];
  if (last === "k_a") return [0.5, 1.5];
  if (last === "r_k") return [-0.5, 0.5];
  throw new Error(`RWKV-7 random model: no value range for ${name}`);
}

export const v7: VersionModule = {
  id: "7",
  name: "RWKV-7",
  detect: (has) => has("blocks.0.att.r_k") || has("blocks.0.att.x_r"),
  inferConfig,
  heads: true,
  defaultDimFfn: (C) => 4 * C,
  groupNormEps: GROUP_NORM_EPS,
  rwkvcpp: RWKVCPP,
  gguf: GGUF,
  architecture: rwkv7,
  layout,
  randomRange,
  train: {
    blocks: { timeMix: timeMixV7, channelMix: channelMixV7 },
    initLayer: initLayerV7,
    embInit: () => EMB_INIT,
    paramGroup: (name) => (name.includes("att.w0") ? { lrScale: LR_2X, decay: false } : undefined),
    wkvMacsPerChannel: (cfg) => 4 * cfg.headSize,
  },
  rwkvLm: {
    folder: "RWKV-v7/train_temp",
    myTesting: "x070",
    extraFlags: ["--head_chunk 0"],
    problems: ({ nEmbd: C, dimFfn: F, headSize: N }) => [
      ...(N !== RWKV_LM_HEAD_SIZE ? [`head size ${N}: RWKV-LM's RWKV-7 kernels are built for ${RWKV_LM_HEAD_SIZE}`] : []),
      ...(F !== 4 * C ? [`dim_ffn ${F}: RWKV-LM's RWKV-7 channel mix is fixed at 4·n_embd = ${4 * C}`] : []),
    ],
  },
};

/** What a generation built on RWKV-7's time mix (7a, 7b, RWKV-8 rc00 and its hybrid) changes. */
export interface V7Successor {
  readonly id: VersionModule["id"];
  readonly name: string;
  /** A tensor only this generation (and none asked after it in VERSIONS) has. */
  readonly marker: string;
  readonly architecture: VersionModule["architecture"];
  /** Layer i's tensors beyond RWKV-7's, in the official demo's order. */
  extraLayer(i: number, cfg: ModelConfig): TensorLayout[];
  /** RWKV-7 tensors the generation dropped (e.g. the hybrid's blocks.0.ln0). */
  readonly dropped?: RegExp;
  /** Random-model ranges of its own tensors: they take precedence over the common kinds. */
  randomOverride(name: string, shape: readonly number[]): readonly [number, number] | undefined;
}

/**
 * The module of a generation that keeps RWKV-7's layout, rwkv.cpp table (its extra tensors are
 * stored as they are; a .bin file reads back as RWKV-7's names, detected again by the marker) and
 * state, and adds tensors. No GGUF (llama.cpp has no architecture for them), no training, no
 * RWKV-LM trainer: the official code for them is inference demos.
 */
export function v7Successor(s: V7Successor): VersionModule {
  return {
    id: s.id,
    name: s.name,
    preview: true,
    detect: (has) => v7.detect(has) && has(s.marker),
    inferConfig: (t) => ({ ...inferConfig(t), version: s.id }),
    heads: true,
    defaultDimFfn: (C) => v7.defaultDimFfn(C),
    groupNormEps: GROUP_NORM_EPS,
    rwkvcpp: RWKVCPP,
    architecture: s.architecture,
    layout(cfg) {
      const out: TensorLayout[] = [];
      for (const t of layout(cfg)) {
        if (s.dropped?.test(t.name)) continue;
        out.push(t);
        const m = /^blocks\.(\d+)\.ffn\.value\.weight$/.exec(t.name); // the last tensor of each RWKV-7 layer
        if (m) out.push(...s.extraLayer(Number(m[1]), cfg));
      }
      return out;
    },
    randomRange: (name, shape) => s.randomOverride(name, shape) ?? randomRange(name, shape),
    randomOverride: s.randomOverride,
  };
}
