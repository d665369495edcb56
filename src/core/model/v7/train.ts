import type { ModelConfig } from "../model.js";
import type { Graph, Var } from "../../train/graph.js";
import type { InitContext, InitLayer, ParamVar, TrainCtx } from "../../train/version.js";
import { GROUP_NORM_EPS, loraWidths, MIX_NAMES } from "./sizes.js";

/*
 * RWKV-7 training (SPEC §6, §7): the block of infer.ts written with the ops of graph.ts so that
 * each has its backward, and RWKV-LM train_temp's initialisation.
 * Letters: R = B·T rows, C = n_embd, H heads, N head size, F = dim_ffn.
 */

export function timeMixV7(g: Graph, P: ParamVar, i: number, xx: Var, cfg: ModelConfig, ctx: TrainCtx): Var {
  const a = `blocks.${i}.att.`, { nHead: H, headSize: N } = cfg, { B, T } = ctx;
  const sx = g.tokenShift(xx, B, T); // (R, C)
  const [xr, xw, xk, xv, xa, xg] = MIX_NAMES.map((m) => g.lerp(xx, sx, P(a + m))); // (R, C) each
  const r = g.linear(xr, P(a + "receptance.weight")); // (R, C)
  const wl = g.project(g.act("tanh", g.project(xw, P(a + "w1"))), P(a + "w2")); // (R, C)
  const wraw = g.act("v7decay", g.add(wl, P(a + "w0"))); // (R, C) soft-clamped log-log decay
  const k = g.linear(xk, P(a + "key.weight")); // (R, C)
  let v = g.linear(xv, P(a + "value.weight")); // (R, C)
  if (i === 0) {
    ctx.vFirst = v;
  } else {
    const gate = g.act("sigmoid", g.add(g.project(g.project(xv, P(a + "v1")), P(a + "v2")), P(a + "v0"))); // (R, C)
    v = g.residualMix(v, ctx.vFirst!, gate); // (R, C)
  }
  const iclr = g.act("sigmoid", g.add(g.project(g.project(xa, P(a + "a1")), P(a + "a2")), P(a + "a0"))); // (R, C)
  const gate = g.project(g.act("sigmoid", g.project(xg, P(a + "g1"))), P(a + "g2")); // (R, C)
  const kk = g.l2Normalize(g.mul(k, P(a + "k_k")), N); // (R, C)
  const k2 = g.keyUpdate(k, iclr, P(a + "k_a")); // (R, C)
  const s0 = ctx.has(a + "time_state") ? P(a + "time_state") : undefined; // (H, N, N) state tuning
  const y = g.wkv7(B, T, H, N, r, wraw, k2, v, g.scale(kk, -1), g.mul(kk, iclr), s0); // (R, C)
  const yn = g.groupNorm(y, H, N, P(a + "ln_x.weight"), P(a + "ln_x.bias"), GROUP_NORM_EPS); // (R, C)
  const out = g.add(yn, g.bonus(r, k2, v, P(a + "r_k"), H, N)); // (R, C)
  return g.linear(g.mul(out, gate), P(a + "output.weight")); // (R, C)
}

export function channelMixV7(g: Graph, P: ParamVar, i: number, xx: Var, _cfg: ModelConfig, { B, T }: TrainCtx): Var {
  const f = `blocks.${i}.ffn.`;
  const sx = g.tokenShift(xx, B, T); // (R, C)
  const k = g.act("relu2", g.linear(g.lerp(xx, sx, P(f + "x_k")), P(f + "key.weight"))); // (R, F)
  return g.linear(k, P(f + "value.weight")); // (R, C)
}

/** Gain of train_temp's LoRA second factors (ortho_init(·, 0.1)). */
const LORA_INIT_SCALE = 0.1;

/** RWKV_Tmix_x070 / RWKV_CMix_x070 `__init__`, then generate_init_weight's Linear rule. */
export function initLayerV7(ctx: InitContext, { i, a, f, r01, r1 }: InitLayer): void {
  const { C, H, N, F } = ctx;
  const pow = Math.pow;
  const ddd = (c: number) => c / C;
  const lin = (n: number) => n / (C - 1) - 0.5;
  const zig = (n: number) => { const z = ((n % N) - (N - 1) / 2) / ((N - 1) / 2); return z * Math.abs(z); };
  const www = (n: number) => -6 + 6 * pow(n / (C - 1), 1 + pow(r01, 0.3));
  ctx.vec(a + "x_r", (c) => 1 - pow(ddd(c), 0.2 * r1));
  ctx.vec(a + "x_w", (c) => 1 - pow(ddd(c), 0.9 * r1));
  ctx.vec(a + "x_k", (c) => 1 - pow(ddd(c), 0.7 * r1));
  ctx.vec(a + "x_v", (c) => 1 - pow(ddd(c), 0.7 * r1));
  ctx.vec(a + "x_a", (c) => 1 - pow(ddd(c), 0.9 * r1));
  ctx.vec(a + "x_g", (c) => 1 - pow(ddd(c), 0.2 * r1));
  /** ortho_init(zeros(D, C), 0.1): gain sqrt(D/C) when D > C. */
  const lora = (p: string, D: number) => {
    ctx.zeros(a + p + "1", [C, D]);
    ctx.ortho(a + p + "2", D, C, (D > C ? Math.sqrt(D / C) : 1) * LORA_INIT_SCALE);
  };
  const D = loraWidths(C);
  lora("w", D.w);
  ctx.vec(a + "w0", (n) => www(n) + 0.5 + zig(n) * 2.5);
  lora("a", D.a);
  ctx.vec(a + "a0", (n) => -0.19 + zig(n) * 0.3 + lin(n) * 0.4);
  lora("v", D.v);
  ctx.vec(a + "v0", (n) => 0.73 - lin(n) * 0.4);
  lora("g", D.g);
  ctx.vec(a + "k_k", (n) => 0.71 - lin(n) * 0.1);
  ctx.vec(a + "k_a", () => 1.02);
  ctx.vec(a + "r_k", () => -0.04, [H, N]);
  for (const m of ["receptance", "key", "value", "output"]) ctx.linear(`${a}${m}.weight`, C, C);
  ctx.lnX(a, i);
  ctx.vec(f + "x_k", (c) => 1 - pow(ddd(c), pow(r1, 4)));
  ctx.linear(f + "key.weight", F, C);
  ctx.linear(f + "value.weight", C, F);
}
