import type { ModelConfig } from "../model/model.js";
import type { Graph, Var } from "./graph.js";

/*
 * What a version module provides for training (VersionModule.train): its blocks written with the
 * ops of graph.ts, its initialisation, its optimizer groups and its FLOP count. Generic training
 * code (model.ts, init.ts, optim.ts, trainer.ts) reaches a version only through this.
 *
 * Letters: B batch, T steps, R = B·T rows, C = n_embd, H heads, N head size.
 */

/** A batch shape and what the blocks share within one forward (v7's first-layer value). */
export interface TrainCtx {
  readonly B: number;
  readonly T: number;
  vFirst: Var | null;
  /** Whether the store has a parameter (e.g. a trained time_state). */
  readonly has: (name: string) => boolean;
}

/** A parameter as a graph leaf (with its LoRA update folded in where the store has one). */
export type ParamVar = (name: string) => Var;

export interface TrainBlocks {
  timeMix(g: Graph, P: ParamVar, i: number, xx: Var, cfg: ModelConfig, ctx: TrainCtx): Var; // (R, C) -> (R, C)
  channelMix(g: Graph, P: ParamVar, i: number, xx: Var, cfg: ModelConfig, ctx: TrainCtx): Var; // (R, C) -> (R, C)
}

/** A parameter's optimizer group (RWKV-LM configure_optimizers, layerwise_lr on). */
export interface ParamGroup {
  /** Multiplier of the scheduled learning rate ("my_lr_scale"). */
  readonly lrScale: number;
  /** Whether weight decay applies: only ≥2-D `.weight` tensors. */
  readonly decay: boolean;
}

/** Sizes of a new model and the helpers that add its parameters to the store (init.ts). */
export interface InitContext {
  readonly L: number;
  readonly C: number;
  readonly H: number;
  readonly N: number;
  readonly F: number;
  /** A vector (default (1,1,C)) with values f(index). */
  vec(name: string, f: (c: number) => number, shape?: number[]): void;
  zeros(name: string, shape: number[]): void;
  /** torch.nn.init.orthogonal_ times gain. */
  ortho(name: string, rows: number, cols: number, gain: number): void;
  /** U(±a). */
  uniform(name: string, shape: number[], a: number): void;
  /** The v5+ generate_init_weight rule for a Linear weight (zero, orthogonal 0.1 or orthogonal 1 by name). */
  linear(name: string, rows: number, cols: number): void;
  /** ln_x of layer i: weight ((1+i)/L)^0.7, bias 0. */
  lnX(prefix: string, i: number): void;
}

/** One layer of a new model: its prefixes and RWKV-LM's per-layer ratios. */
export interface InitLayer {
  readonly i: number;
  /** "blocks.i.att." and "blocks.i.ffn.". */
  readonly a: string;
  readonly f: string;
  /** "ratio_0_to_1" = i/(L-1) (0 for L = 1, where RWKV-LM divides by zero). */
  readonly r01: number;
  /** "ratio_1_to_almost0" = 1 - i/L. */
  readonly r1: number;
}

export interface TrainSupport {
  readonly blocks: TrainBlocks;
  /** Adds layer i's att and ffn parameters as RWKV-LM initialises them, in state-dict order. */
  initLayer(ctx: InitContext, layer: InitLayer): void;
  /** Half-width a of the embedding's U(±a) init (`lrInit`: the run's learning rate, for versions that use it). */
  embInit(lrInit: number | undefined): number;
  /** This version's optimizer group of a parameter; undefined for the common rule (≥2-D ".weight" decayed). */
  paramGroup(name: string): ParamGroup | undefined;
  /** Multiply-adds per channel and step of one WKV forward. */
  wkvMacsPerChannel(cfg: ModelConfig): number;
}

/** LR multipliers of RWKV-LM's groups. */
export const LR_2X = 2, LR_3X = 3;

/**
 * The v4/v5/v6 trainers' groups: *_w1/*_w2 1×; time_mix/time_maa 1×; time_decay 2×; time_faaaa 1×;
 * time_first 3×; none decayed.
 */
export function timeParamGroup(name: string): ParamGroup | undefined {
  if (name.includes("_w1") || name.includes("_w2")) return { lrScale: 1, decay: false };
  if (name.includes("time_mix") || name.includes("time_maa")) return { lrScale: 1, decay: false };
  if (name.includes("time_decay") || name.includes("time_daaaa")) return { lrScale: LR_2X, decay: false };
  if (name.includes("time_faaaa")) return { lrScale: 1, decay: false };
  if (name.includes("time_first")) return { lrScale: LR_3X, decay: false };
  return undefined;
}

/** The v4/v5 channel mix: σ(W_r mix_r) ⊙ W_v relu²(W_k mix_k). */
export function channelMixTimeMix(g: Graph, P: ParamVar, i: number, xx: Var, _cfg: ModelConfig, { B, T }: TrainCtx): Var {
  const f = `blocks.${i}.ffn.`;
  const sx = g.tokenShift(xx, B, T); // (R, C)
  const k = g.act("relu2", g.linear(g.mix(xx, sx, P(f + "time_mix_k")), P(f + "key.weight"))); // (R, F)
  const kv = g.linear(k, P(f + "value.weight")); // (R, C)
  const r = g.act("sigmoid", g.linear(g.mix(xx, sx, P(f + "time_mix_r")), P(f + "receptance.weight"))); // (R, C)
  return g.mul(r, kv); // (R, C)
}

/** The v5+ embedding init U(±1e-4) (RWKV-LM generate_init_weight). */
export const EMB_INIT = 1e-4;
