import type { ModelConfig } from "../model.js";
import type { Graph, Var } from "../../train/graph.js";
import type { InitContext, InitLayer, ParamVar, TrainCtx } from "../../train/version.js";

/*
 * RWKV-4 training (SPEC §3, §7): the time mix of infer.ts with the ops of graph.ts, and
 * RWKV-v4neo's initialisation. Letters: R = B·T rows, C = n_embd, A = dim_att, F = dim_ffn.
 */

export function timeMixV4(g: Graph, P: ParamVar, i: number, xx: Var, _cfg: ModelConfig, { B, T }: TrainCtx): Var {
  const a = `blocks.${i}.att.`;
  const sx = g.tokenShift(xx, B, T); // (R, C)
  const k = g.linear(g.mix(xx, sx, P(a + "time_mix_k")), P(a + "key.weight")); // (R, A)
  const v = g.linear(g.mix(xx, sx, P(a + "time_mix_v")), P(a + "value.weight")); // (R, A)
  const r = g.act("sigmoid", g.linear(g.mix(xx, sx, P(a + "time_mix_r")), P(a + "receptance.weight"))); // (R, A)
  const wkv = g.wkv4(B, T, P(a + "time_decay"), P(a + "time_first"), k, v); // (R, A)
  return g.linear(g.mul(r, wkv), P(a + "output.weight")); // (R, C)
}

/** RWKV_TimeMix / RWKV_ChannelMix `__init__` of RWKV-v4neo, then its generate_init_weight rule. */
export function initLayerV4(ctx: InitContext, { a, f, r01, r1 }: InitLayer): void {
  const { C, F } = ctx;
  const pow = Math.pow;
  const ddd = (c: number) => c / C;
  const zig3 = (n: number) => ((n + 1) % 3) - 1;
  /** v4neo: orthogonal with gain sqrt(rows/cols) (if rows > cols), zero for the output-side matrices. */
  const linear = (name: string, rows: number, cols: number) => {
    if (/\.att\.(key|receptance|output)\.|\.ffn\.(value|receptance)\./.test(name)) return ctx.zeros(name, [rows, cols]);
    return ctx.ortho(name, rows, cols, rows > cols ? Math.sqrt(rows / cols) : 1);
  };
  ctx.vec(a + "time_decay", (h) => -5 + 8 * pow(h / (C - 1), 0.7 + 1.3 * r01), [C]);
  ctx.vec(a + "time_first", (h) => Math.log(0.3) + zig3(h) * 0.5, [C]);
  ctx.vec(a + "time_mix_k", (c) => pow(ddd(c), r1));
  ctx.vec(a + "time_mix_v", (c) => pow(ddd(c), r1) + 0.3 * r01);
  ctx.vec(a + "time_mix_r", (c) => pow(ddd(c), 0.5 * r1));
  for (const m of ["key", "value", "receptance"]) linear(`${a}${m}.weight`, C, C);
  linear(a + "output.weight", C, C);
  ctx.vec(f + "time_mix_k", (c) => pow(ddd(c), r1));
  ctx.vec(f + "time_mix_r", (c) => pow(ddd(c), r1));
  linear(f + "key.weight", F, C);
  linear(f + "receptance.weight", C, C);
  linear(f + "value.weight", C, F);
}
