import type { ModelConfig } from "../model.js";
import type { Graph, Var } from "../../train/graph.js";
import type { InitContext, InitLayer, ParamVar, TrainCtx } from "../../train/version.js";
import { GROUP_NORM_EPS_52 } from "./sizes.js";

/*
 * RWKV-5.2 training (SPEC §4, §7): the block of infer.ts with the ops of graph.ts, and RWKV-LM's
 * RWKV_TimeMix_RWKV5 initialisation. Letters: R = B·T rows, C = n_embd, A = dim_att, F = dim_ffn,
 * H heads, N head size.
 */

export function timeMixV5(g: Graph, P: ParamVar, i: number, xx: Var, cfg: ModelConfig, { B, T }: TrainCtx): Var {
  const a = `blocks.${i}.att.`, { nHead: H, headSize: N } = cfg;
  const sx = g.tokenShift(xx, B, T); // (R, C)
  const r = g.linear(g.mix(xx, sx, P(a + "time_mix_r")), P(a + "receptance.weight")); // (R, A)
  const k = g.linear(g.mix(xx, sx, P(a + "time_mix_k")), P(a + "key.weight")); // (R, A)
  const v = g.linear(g.mix(xx, sx, P(a + "time_mix_v")), P(a + "value.weight")); // (R, A)
  const gate = g.act("silu", g.linear(g.mix(xx, sx, P(a + "time_mix_g")), P(a + "gate.weight"))); // (R, A)
  const y = g.wkv5(B, T, H, N, r, k, v, P(a + "time_decay"), P(a + "time_faaaa")); // (R, A)
  const yn = g.groupNorm(y, H, N, P(a + "ln_x.weight"), P(a + "ln_x.bias"), GROUP_NORM_EPS_52); // (R, A)
  return g.linear(g.mul(yn, gate), P(a + "output.weight")); // (R, C)
}

/** RWKV_TimeMix_RWKV5 / RWKV_ChannelMix `__init__`, then generate_init_weight's Linear rule. */
export function initLayerV5(ctx: InitContext, { i, a, f, r01, r1 }: InitLayer): void {
  const { C, H, N, F } = ctx;
  const pow = Math.pow;
  const ddd = (c: number) => c / C;
  const zig3 = (n: number) => ((n + 1) % 3) - 1;
  ctx.vec(a + "time_mix_k", (c) => pow(ddd(c), r1));
  ctx.vec(a + "time_mix_v", (c) => pow(ddd(c), r1) + 0.3 * r01);
  ctx.vec(a + "time_mix_r", (c) => pow(ddd(c), 0.5 * r1));
  ctx.vec(a + "time_mix_g", (c) => pow(ddd(c), 0.5 * r1));
  ctx.vec(a + "time_decay", (n) => -6 + 5 * pow(n / (C - 1), 0.7 + 1.3 * r01), [H, N]);
  ctx.vec(a + "time_faaaa", (n) => r01 * (1 - n / (C - 1)) + zig3(n) * 0.1, [H, N]);
  for (const m of ["receptance", "key", "value", "output", "gate"]) ctx.linear(`${a}${m}.weight`, C, C);
  ctx.lnX(a, i);
  ctx.vec(f + "time_mix_k", (c) => pow(ddd(c), r1));
  ctx.vec(f + "time_mix_r", (c) => pow(ddd(c), r1));
  ctx.linear(f + "key.weight", F, C);
  ctx.linear(f + "receptance.weight", C, C);
  ctx.linear(f + "value.weight", C, F);
}
