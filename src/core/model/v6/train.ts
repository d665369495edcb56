import type { ModelConfig } from "../model.js";
import { type Graph, Var } from "../../train/graph.js";
import type { InitContext, InitLayer, ParamVar, TrainCtx } from "../../train/version.js";
import { DECAY_LORA, GROUP_NORM_EPS, MIX_BLOCKS, MIX_LORA } from "./sizes.js";

/*
 * RWKV-6 training (SPEC §5, §7): the block of infer.ts with the ops of graph.ts, and RWKV-LM's
 * RWKV_Tmix_x060 initialisation. Letters: R = B·T rows, C = n_embd, A = dim_att, F = dim_ffn,
 * H heads, N head size, Dm the mix LoRA width.
 */

export function timeMixV6(g: Graph, P: ParamVar, i: number, xx: Var, cfg: ModelConfig, { B, T }: TrainCtx): Var {
  const a = `blocks.${i}.att.`, { nHead: H, headSize: N } = cfg;
  const sx = g.tokenShift(xx, B, T); // (R, C)
  const d = g.sub(sx, xx); // (R, C)
  const w1 = P(a + "time_maa_w1"); // (C, 5·Dm)
  const Dm = w1.cols / MIX_BLOCKS.length;
  const m = g.act("tanh", g.project(g.lerp(xx, sx, P(a + "time_maa_x")), w1)); // (R, 5·Dm)
  const w2 = P(a + "time_maa_w2"); // (5, Dm, C) as (5·Dm, C)
  const [xw, xk, xv, xr, xg] = MIX_BLOCKS.map((name, f) => {
    const mf = g.project(g.sliceCols(m, f * Dm, Dm), rowBlock(w2, f * Dm, Dm)); // (R, C)
    return g.lerpDyn(xx, d, P(a + "time_maa_" + name), mf); // (R, C)
  });
  const r = g.linear(xr, P(a + "receptance.weight")); // (R, A)
  const k = g.linear(xk, P(a + "key.weight")); // (R, A)
  const v = g.linear(xv, P(a + "value.weight")); // (R, A)
  const gate = g.act("silu", g.linear(xg, P(a + "gate.weight"))); // (R, A)
  const ww = g.project(g.act("tanh", g.project(xw, P(a + "time_decay_w1"))), P(a + "time_decay_w2")); // (R, A)
  const wraw = g.add(ww, P(a + "time_decay")); // (R, A)
  const y = g.wkv5(B, T, H, N, r, k, v, wraw, P(a + "time_faaaa")); // (R, A)
  const yn = g.groupNorm(y, H, N, P(a + "ln_x.weight"), P(a + "ln_x.bias"), GROUP_NORM_EPS); // (R, A)
  return g.linear(g.mul(yn, gate), P(a + "output.weight")); // (R, C)
}

export function channelMixV6(g: Graph, P: ParamVar, i: number, xx: Var, _cfg: ModelConfig, { B, T }: TrainCtx): Var {
  const f = `blocks.${i}.ffn.`;
  const sx = g.tokenShift(xx, B, T); // (R, C)
  const k = g.act("relu2", g.linear(g.lerp(xx, sx, P(f + "time_maa_k")), P(f + "key.weight"))); // (R, F)
  const kv = g.linear(k, P(f + "value.weight")); // (R, C)
  const r = g.act("sigmoid", g.linear(g.lerp(xx, sx, P(f + "time_maa_r")), P(f + "receptance.weight"))); // (R, C)
  return g.mul(r, kv); // (R, C)
}

/** Rows [r0, r0+n) of a parameter Var as a Var sharing its storage and gradient. */
function rowBlock(p: Var, r0: number, n: number): Var {
  const C = p.cols;
  const grad = p.requiresGrad ? p.g()!.subarray(r0 * C, (r0 + n) * C) : null;
  return new Var(p.data.subarray(r0 * C, (r0 + n) * C), n, C, p.requiresGrad, grad);
}

/** RWKV_Tmix_x060's w2 init U(±0.01). */
const W2_INIT = 0.01;

/** RWKV_Tmix_x060 / RWKV_CMix_x060 `__init__`, then generate_init_weight's Linear rule. */
export function initLayerV6(ctx: InitContext, { i, a, f, r01, r1 }: InitLayer): void {
  const { C, H, N, F } = ctx;
  const pow = Math.pow;
  const ddd = (c: number) => c / C;
  const zig3 = (n: number) => ((n + 1) % 3) - 1;
  ctx.vec(a + "time_maa_x", (c) => 1 - pow(ddd(c), r1));
  ctx.vec(a + "time_maa_w", (c) => 1 - pow(ddd(c), r1));
  ctx.vec(a + "time_maa_k", (c) => 1 - pow(ddd(c), r1));
  ctx.vec(a + "time_maa_v", (c) => 1 - (pow(ddd(c), r1) + 0.3 * r01));
  ctx.vec(a + "time_maa_r", (c) => 1 - pow(ddd(c), 0.5 * r1));
  ctx.vec(a + "time_maa_g", (c) => 1 - pow(ddd(c), 0.5 * r1));
  ctx.zeros(a + "time_maa_w1", [C, MIX_BLOCKS.length * MIX_LORA]);
  ctx.uniform(a + "time_maa_w2", [MIX_BLOCKS.length, MIX_LORA, C], W2_INIT);
  ctx.vec(a + "time_decay", (n) => -6 + 5 * pow(n / (C - 1), 0.7 + 1.3 * r01));
  ctx.zeros(a + "time_decay_w1", [C, DECAY_LORA]);
  ctx.uniform(a + "time_decay_w2", [DECAY_LORA, C], W2_INIT);
  ctx.vec(a + "time_faaaa", (n) => r01 * (1 - n / (C - 1)) + zig3(n) * 0.1, [H, N]);
  for (const m of ["receptance", "key", "value", "output", "gate"]) ctx.linear(`${a}${m}.weight`, C, C);
  ctx.lnX(a, i);
  ctx.vec(f + "time_maa_k", (c) => 1 - pow(ddd(c), r1));
  ctx.vec(f + "time_maa_r", (c) => 1 - pow(ddd(c), r1));
  ctx.linear(f + "key.weight", F, C);
  ctx.linear(f + "receptance.weight", C, C);
  ctx.linear(f + "value.weight", C, F);
}
