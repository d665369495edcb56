import type { Activation, Arena, Backend, Matrix, Tensor, TensorKernels } from "../../backend/backend.js";
import { type Architecture, type Block, eachSequence, type LayerTensors, type ModelConfig } from "../model.js";
import type { Weights } from "../weights.js";

/*
 * RWKV-4 (the paper's model; SPEC §3).  Letters: T tokens, C = n_embd, A = dim_att, F = dim_ffn.
 *
 * Time mix:  k = W_k mix(xx, sx; time_mix_k), v likewise, r = σ(W_r mix(...))
 *            wkv_t = (Σ_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (same without v)
 *            out   = W_o (r ⊙ wkv),   w = -exp(time_decay), u = time_first
 * Channel mix: out = σ(W_r mix(..r)) ⊙ W_v relu²(W_k mix(..k))
 * with mix(xx, sx; m) = xx·m + sx·(1-m) (v4/v5 semantics).
 */

/** Initial running max of the WKV exponent (pip); any very negative value makes e^{pp-p} underflow to 0. */
const PP_INIT = -1e30;

export const rwkv4: Architecture = {
  name: "RWKV-4",

  initLayerState(cfg: ModelConfig) {
    const { nEmbd: C, dimAtt: A } = cfg;
    return {
      att_xx: new Float32Array(C), att_aa: new Float32Array(A), att_bb: new Float32Array(A),
      att_pp: new Float32Array(A).fill(PP_INIT), ffn_xx: new Float32Array(C),
    };
  },

  block(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block {
    const { nEmbd: C, dimAtt: A } = cfg;
    const a = `blocks.${i}.att.`;
    const K = be.tensors;
    const vec = (name: string, n = C): Tensor => K.constant(w.vec(name, n)); // (1, n)
    const att = {
      mixK: vec(a + "time_mix_k"), mixV: vec(a + "time_mix_v"), mixR: vec(a + "time_mix_r"),
      w: K.constant(w.vec(a + "time_decay", A).map((d) => -Math.exp(d))), // (1, A) log-space decay
      u: vec(a + "time_first", A), // (1, A) log-space bonus
      key: w.linear(a + "key.weight", A, C), value: w.linear(a + "value.weight", A, C),
      receptance: w.linear(a + "receptance.weight", A, C), output: w.linear(a + "output.weight", C, A),
    };
    return {
      timeMix(xx, T, s, { arena: Ar }) {
        const R = xx.rows; // B·T rows
        const { xs } = shiftMix(K, Ar, xx, T, s, "att_xx", [att.mixK, att.mixV, att.mixR]); // (B·T, C) each
        const [k, v, r] = project(K, Ar, xs, [att.key, att.value, att.receptance]); // (B·T, A) each
        const wkv = Ar.take(R, A); // (B·T, A)
        eachSequence(s.length, T, (b, row0) => K.wkv4(wkv, att.w, att.u, k, v, s[b].att_aa, s[b].att_bb, s[b].att_pp, row0, T));
        return gatedOutput(K, Ar, wkv, r, "sigmoid", att.output);
      },
      channelMix: channelMixV4(w, i, cfg, be, "ffn_xx"),
    };
  },
};

/**
 * The last step of the v4 to v6 time mix: (R, C) = W_o (y ⊙ f(gate)), f = σ on v4's receptance,
 * silu on the v5.2/v6 gate; without a gate (v5.1) W_o y. The gate is overwritten.
 */
export function gatedOutput(K: TensorKernels, Ar: Arena, y: Tensor, gate: Tensor | null, f: Activation, output: Matrix): Tensor {
  if (gate) {
    K.activate(f, gate);
    K.mul(y, gate);
  }
  const o = Ar.take(y.rows, output.rows); // (R, C)
  K.matmul(o, y, output);
  return o;
}

/**
 * The v4 channel mix, also v5's (SPEC §4): out = σ(W_r mix(..r)) ⊙ W_v relu²(W_k mix(..k)).
 * `prevKey` names the layer state's token-shift entry (v4 ffn_xx, v5 ffn_x_prev).
 */
export function channelMixV4(w: Weights, i: number, cfg: ModelConfig, be: Backend, prevKey: string): Block["channelMix"] {
  const { nEmbd: C, dimFfn: F } = cfg;
  const K = be.tensors;
  const f = `blocks.${i}.ffn.`;
  const ffn = {
    mixK: K.constant(w.vec(f + "time_mix_k", C)), mixR: K.constant(w.vec(f + "time_mix_r", C)),
    key: w.linear(f + "key.weight", F, C), receptance: w.linear(f + "receptance.weight", C, C),
    value: w.linear(f + "value.weight", C, F),
  };
  return (xx, T, s, { arena: Ar }) => {
    const { xs: [xk, xr] } = shiftMix(K, Ar, xx, T, s, prevKey, [ffn.mixK, ffn.mixR]); // (B·T, C) each
    return receptanceFfn(K, Ar, xk, xr, ffn);
  };
}

/**
 * The token shift and the interpolations of v4/v5 (v6 and v7 reuse the shift): sx (B·T, C) is the
 * previous token's xx (from the layer state `prevKey` for each sequence's first row), and
 * xs[i] = mix(xx, sx; mixes[i]). Arena tensors, valid until the block's arena is rewound.
 */
export function shiftMix(K: TensorKernels, Ar: Arena, xx: Tensor, T: number, s: readonly LayerTensors[], prevKey: string,
  mixes: readonly Tensor[]): { sx: Tensor; xs: Tensor[] } {
  const R = xx.rows, C = xx.cols; // B·T rows
  const sx = Ar.take(R, C); // (B·T, C)
  eachSequence(s.length, T, (b, row0) => K.shift(sx, xx, s[b][prevKey], row0, T));
  const xs = mixes.map(() => Ar.take(R, C)); // (B·T, C) each
  K.mix(xs, xx, sx, mixes);
  return { sx, xs };
}

/** ys[i] (R, O_i) = xs[i] W_iᵀ: a block's projections of its interpolated inputs. */
export function project(K: TensorKernels, Ar: Arena, xs: readonly Tensor[], Ws: readonly Matrix[]): Tensor[] {
  return Ws.map((W, i) => {
    const y = Ar.take(xs[i].rows, W.rows); // (R, O)
    K.matmul(y, xs[i], W);
    return y;
  });
}

/** σ(W_r xr) ⊙ W_v relu²(W_k xk), the v4/v5/v6 channel mix after its interpolations. (R, C) -> (R, C) */
export function receptanceFfn(K: TensorKernels, Ar: Arena, xk: Tensor, xr: Tensor, ffn: Record<"key" | "value" | "receptance", Matrix>): Tensor {
  const R = xk.rows, C = xk.cols;
  const k = Ar.take(R, ffn.key.rows); // (R, F)
  K.matmul(k, xk, ffn.key);
  K.activate("relu2", k);
  const kv = Ar.take(R, C), r = Ar.take(R, C); // (R, C)
  K.matmul(kv, k, ffn.value);
  K.matmul(r, xr, ffn.receptance);
  K.activate("sigmoid", r);
  K.mul(kv, r);
  return kv;
}
