import type { Activation, Arena, Backend, Matrix, Tensor, TensorKernels } from "../../backend/backend.js";
import { type Architecture, type Block, eachSequence, type LayerTensors, type ModelConfig } from "../model.js";
import { headedLayerState } from "../v5/infer.js";
import type { Weights } from "../weights.js";
import { GROUP_NORM_EPS, MIX_NAMES } from "./sizes.js";

/*
 * RWKV-7 "Goose" (SPEC §6).  Letters: T tokens, C = n_embd, H heads, N head size (C = H·N),
 * F = dim_ffn, D* the LoRA widths (Dw decay, Da in-context rate, Dv value residual, Dg gate).
 *
 * Time mix, per token (xx = LN1 output, d = x_prev - xx):
 *   x_f = xx + d ⊙ x_f                      for f in r, w, k, v, a, g
 *   r = W_r x_r;  k = W_k x_k;  v = W_v x_v
 *   decay = exp(-e^{-1/2} σ(w0 + tanh(x_w w1) w2))        "vector-valued decay", in (0.545, 1)
 *   a = σ(a0 + (x_a a1) a2)                                 in-context learning rate
 *   g = σ(x_g g1) g2
 *   kk = normalize_per_head(k ⊙ k_k);   k = k ⊙ (1 + (a - 1) ⊙ k_a)
 *   v = v + (v_first - v) ⊙ σ(v0 + (x_v v1) v2)           (layer 0: v_first = v)
 *   per head, S[i=value][j=key]:  S = S diag(decay) - (S kk)(kk ⊙ a)ᵀ + v kᵀ;  y = S r
 *   out = W_o ((GN(y) + (Σ_j r_j k_j r_k,j) v) ⊙ g)
 * Channel mix: out = W_v relu²(W_k (xx + d ⊙ x_k)), no receptance.
 */

/** The decay bound: decay = exp(-e^{-0.5} σ(·)) keeps every channel's decay in (exp(-e^{-0.5}), 1). */
const DECAY_SCALE = Math.exp(-0.5);

export const rwkv7: Architecture = {
  name: "RWKV-7",

  // Part of the released layout but unused: layer 0 takes v from its own values (the reference ignores these).
  unusedByDesign: /^blocks\.0\.att\.v[012]$/,

  initLayerState: headedLayerState,

  // State tuning trains the kernel's own state, already [h][value i][key j]: used as is.
  timeStateToKv: (_cfg: ModelConfig, st: Float32Array) => st.slice(),

  // Layer 0's v, which every later layer mixes into its own (the "value residual").
  sequenceTensors: (cfg: ModelConfig) => ({ v_first: cfg.nEmbd }),

  block(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block {
    return { timeMix: v7TimeMix(w, i, cfg, be), channelMix: v7ChannelMix(w, i, cfg, be) };
  },
};

/** The RWKV-7 time mix of layer i (also the time mix of 7a, 7b and RWKV-8 rc00). */
export function v7TimeMix(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block["timeMix"] {
  const { nEmbd: C, nHead: H, headSize: N } = cfg;
  const K = be.tensors;
  const a = `blocks.${i}.att.`;
  const vec = (name: string, n = C): Tensor => K.constant(w.vec(name, n)); // (1, n)
  const lora = (n1: string, n2: string): [Matrix, Matrix] => {
    const D = w.shape(a + n1)[1];
    return [w.projection(a + n1, C, D), w.projection(a + n2, D, C)];
  };
  const att = {
    // The six token-shift mixes, in the order of lerp's outputs r, w, k, v, a, g.
    shift: MIX_NAMES.map((n) => vec(a + n)),
    w0: vec(a + "w0"), wLora: lora("w1", "w2"),
    a0: vec(a + "a0"), aLora: lora("a1", "a2"),
    // Layer 0 carries v0/v1/v2 in checkpoints but never uses them (its v *is* v_first).
    v0: i > 0 ? vec(a + "v0") : null, vLora: i > 0 ? lora("v1", "v2") : null,
    gLora: lora("g1", "g2"),
    k_k: vec(a + "k_k"), k_a: vec(a + "k_a"), r_k: K.constant(w.heads(a + "r_k", H, N)),
    receptance: w.linear(a + "receptance.weight", C, C), key: w.linear(a + "key.weight", C, C),
    value: w.linear(a + "value.weight", C, C), output: w.linear(a + "output.weight", C, C),
    lnW: vec(a + "ln_x.weight"), lnB: vec(a + "ln_x.bias"),
  };
  // The checkpoint's numerics where its format states them (e.g. rwkv.cpp's graph), else the official eps.
  const eps = w.ckpt.numerics?.groupNormEps ?? GROUP_NORM_EPS;
  return (xx, T, s, { arena: A, shared }) => {
    const R = xx.rows; // B·T rows
    const sx = A.take(R, C); // (B·T, C) the previous token's xx
    eachSequence(s.length, T, (b, row0) => K.shift(sx, xx, s[b].att_x_prev, row0, T));
    const [xr, xw, xk, xv, xa, xg] = att.shift.map(() => A.take(R, C)); // (B·T, C) each
    K.lerp([xr, xw, xk, xv, xa, xg], xx, sx, att.shift);

    const r = A.take(R, C), k = A.take(R, C), v = A.take(R, C); // (B·T, C) each
    K.matmul(r, xr, att.receptance);
    K.matmul(k, xk, att.key);
    K.matmul(v, xv, att.value);
    const decay = loraApply(K, A, xw, att.wLora, "tanh", att.w0); // (B·T, C)
    K.activate("sigmoid", decay);
    K.activate("exp", decay, -DECAY_SCALE);
    const iclr = loraApply(K, A, xa, att.aLora, null, att.a0); // (B·T, C) the rate a
    K.activate("sigmoid", iclr);
    const g = loraApply(K, A, xg, att.gLora, "sigmoid", null); // (B·T, C)
    let vGate: Tensor | null = null; // (B·T, C)
    if (i === 0) {
      K.copyRows(shared.v_first, 0, v, 0, R);
    } else {
      vGate = loraApply(K, A, xv, att.vLora!, null, att.v0!);
      K.activate("sigmoid", vGate);
    }
    const kkNeg = xr, kkA = xw; // (B·T, C), reusing tensors no longer needed
    K.v7Keys(kkNeg, kkA, k, v, iclr, att.k_k, att.k_a, vGate, vGate ? shared.v_first : null, N);

    const y = A.take(R, C); // (B·T, C)
    eachSequence(s.length, T, (b, row0) => K.wkv7(y, r, decay, k, v, kkNeg, kkA, s[b].att_kv, H, row0, T));
    const out = A.take(R, C); // (B·T, C)
    K.groupNorm(out, y, H, att.lnW, att.lnB, eps);
    K.v7Bonus(out, r, k, v, g, att.r_k, N);
    const o = A.take(R, C); // (B·T, C)
    K.matmul(o, out, att.output);
    return o;
  };
}

/** The RWKV-7 channel mix of layer i: W_v relu²(W_k (xx + d ⊙ x_k)). */
export function v7ChannelMix(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block["channelMix"] {
  const { nEmbd: C, dimFfn: F } = cfg;
  const K = be.tensors;
  const f = `blocks.${i}.ffn.`;
  const ffn = { x_k: K.constant(w.vec(f + "x_k", C)), key: w.linear(f + "key.weight", F, C), value: w.linear(f + "value.weight", C, F) };
  return (xx, T, s, { arena: A }) => {
    const k = v7FfnKey(K, A, xx, T, s, ffn.x_k, ffn.key); // (B·T, F)
    const out = A.take(xx.rows, C); // (B·T, C)
    K.matmul(out, k, ffn.value);
    return out;
  };
}

/**
 * The RWKV-7 channel mix up to its value projection, which 7a and 8 keep too:
 * k = relu²(W_k lerp(xx, sx; x_k)) with sx the token shift from the state's ffn_x_prev. (B·T, C) -> (B·T, F)
 */
export function v7FfnKey(K: TensorKernels, A: Arena, xx: Tensor, T: number, s: readonly LayerTensors[], x_k: Tensor, key: Matrix): Tensor {
  const R = xx.rows, C = xx.cols; // B·T rows
  const sx = A.take(R, C), xk = A.take(R, C); // (B·T, C)
  eachSequence(s.length, T, (b, row0) => K.shift(sx, xx, s[b].ffn_x_prev, row0, T));
  K.lerp([xk], xx, sx, [x_k]);
  const k = A.take(R, key.rows); // (B·T, F)
  K.matmul(k, xk, key);
  K.activate("relu2", k);
  return k;
}

/** bias + act(x M1) M2 for a low-rank pair; `act` applies between the factors. (T, C) -> (T, C) */
function loraApply(K: TensorKernels, A: Arena, x: Tensor, [m1, m2]: [Matrix, Matrix], act: Activation | null, bias: Tensor | null): Tensor {
  const h = A.take(x.rows, m1.rows); // (T, D)
  K.matmul(h, x, m1);
  if (act) K.activate(act, h);
  const y = A.take(x.rows, m2.rows); // (T, C)
  K.matmul(y, h, m2);
  if (bias) K.addRow(y, bias);
  return y;
}
