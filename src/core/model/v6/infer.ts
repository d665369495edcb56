import type { Backend, Tensor } from "../../backend/backend.js";
import { FormatError } from "../../errors.js";
import { type Architecture, type Block, eachSequence, type ModelConfig } from "../model.js";
import { gatedOutput, receptanceFfn } from "../v4/infer.js";
import { headedLayerState } from "../v5/infer.js";
import { transpose, type Weights } from "../weights.js";
import { GROUP_NORM_EPS } from "./sizes.js";

/*
 * RWKV-6 "Finch" (SPEC §5).  Letters: T tokens, C = n_embd, A = dim_att, F = dim_ffn, H heads,
 * N = A/H head size, Dm = maa LoRA width, Dd = decay LoRA width.
 *
 * Time mix (data-dependent token shift and decay), with d = sx - xx (sx = previous token's xx):
 *   m      = tanh((xx + d·time_maa_x) @ time_maa_w1)          (5·Dm) = 5 blocks in order w,k,v,r,g
 *   m_f    = m[f] @ time_maa_w2[f]                            (C) each
 *   f_x    = xx + d·(time_maa_f + m_f)                        for f in w,k,v,r,g
 *   r = W_r r_x,  k = W_k k_x,  v = W_v v_x,  g = silu(W_g g_x)
 *   wlog   = time_decay + tanh(w_x @ time_decay_w1) @ time_decay_w2
 *   w      = exp(-exp(wlog))                                 per channel and per token
 *   per head, S[j=key][i=value]:
 *     out[i] = Σ_j r[j] (u[j] k[j] v[i] + S[j,i]);   S[j,i] <- k[j] v[i] + w[j] S[j,i],   u = time_faaaa
 *   out = W_o (GN(out; H) ⊙ g)
 * Channel mix: out = σ(W_r (xx + d·time_maa_r)) ⊙ W_v relu²(W_k (xx + d·time_maa_k))
 *
 * State per layer (pip layout): att_x_prev (C), att_kv (H·N·N) [h][key j][value i], ffn_x_prev (C).
 * State-tuned checkpoints carry `att.time_state` (H,N,N) in [h][value][key] order: the initial att_kv.
 */

export const rwkv6: Architecture = {
  name: "RWKV-6",

  initLayerState: headedLayerState,

  timeStateToKv(cfg: ModelConfig, st: Float32Array): Float32Array {
    // File layout [h][value i][key j] -> pip's [h][key j][value i] (SPEC §2.4).
    const { nHead: H, headSize: N } = cfg;
    const kv = new Float32Array(H * N * N); // (H, N, N)
    for (let h = 0; h < H; h++) kv.set(transpose(st.subarray(h * N * N, (h + 1) * N * N), N, N), h * N * N);
    return kv;
  },

  block(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block {
    const { nEmbd: C, dimAtt: A, dimFfn: F, nHead: H, headSize: N } = cfg;
    const a = `blocks.${i}.att.`, f = `blocks.${i}.ffn.`;
    const Dm = w.shape(a + "time_maa_w1")[1] / 5, Dd = w.shape(a + "time_decay_w1")[1];
    if (!Number.isInteger(Dm)) throw new FormatError(w.ckpt.source, `tensor ${a}time_maa_w1 has shape [${w.shape(a + "time_maa_w1")}]: width not a multiple of 5`);
    const K = be.tensors;
    const vec = (name: string, n = C): Tensor => K.constant(w.vec(name, n)); // (1, n)
    const att = {
      maaX: vec(a + "time_maa_x"),
      // Static part of each mix, in time_maa_w1's block order w,k,v,r,g.
      maa: ["w", "k", "v", "r", "g"].map((n) => vec(a + "time_maa_" + n)),
      maaW1: w.projection(a + "time_maa_w1", C, 5 * Dm), // (5·Dm, C)
      maaW2: w.projections(a + "time_maa_w2", 5, Dm, C), // 5 × (C, Dm)
      decay: vec(a + "time_decay", A), // (1, A) log-log decay base
      decayW1: w.projection(a + "time_decay_w1", C, Dd), // (Dd, C)
      decayW2: w.projection(a + "time_decay_w2", Dd, A), // (A, Dd)
      u: K.constant(w.heads(a + "time_faaaa", H, N)), // (1, A) bonus, used as is
      key: w.linear(a + "key.weight", A, C), value: w.linear(a + "value.weight", A, C),
      receptance: w.linear(a + "receptance.weight", A, C), gate: w.linear(a + "gate.weight", A, C),
      output: w.linear(a + "output.weight", C, A),
      lnX: { weight: vec(a + "ln_x.weight", A), bias: vec(a + "ln_x.bias", A) },
    };
    // The checkpoint's numerics where its format states them, else the official eps.
    const eps = w.ckpt.numerics?.groupNormEps ?? GROUP_NORM_EPS;
    const ffn = {
      maaK: vec(f + "time_maa_k"), maaR: vec(f + "time_maa_r"),
      key: w.linear(f + "key.weight", F, C), receptance: w.linear(f + "receptance.weight", C, C),
      value: w.linear(f + "value.weight", C, F),
    };
    return {
      timeMix(xx, T, s, { arena: Ar }) {
        const R = xx.rows; // B·T rows
        const d = Ar.take(R, C); // (B·T, C) previous xx ...
        eachSequence(s.length, T, (b, row0) => K.shift(d, xx, s[b].att_x_prev, row0, T));
        K.sub(d, d, xx); // (B·T, C) ... minus xx
        const xm = Ar.take(R, C); // (B·T, C)
        K.lerpBy(xm, xx, d, att.maaX, null);
        const m = Ar.take(R, 5 * Dm); // (B·T, 5·Dm)
        K.matmul(m, xm, att.maaW1);
        K.activate("tanh", m);
        const mb = Ar.take(R, Dm), dyn = Ar.take(R, C); // (B·T, Dm), (B·T, C)
        const [wx, kx, vx, rx, gx] = att.maa.map((maa, b) => {
          const out = Ar.take(R, C); // (B·T, C)
          K.columns(mb, m, b * Dm);
          K.matmul(dyn, mb, att.maaW2[b]);
          K.lerpBy(out, xx, d, maa, dyn);
          return out;
        });
        const r = Ar.take(R, A), k = Ar.take(R, A), v = Ar.take(R, A), g = Ar.take(R, A); // (B·T, A) each
        K.matmul(r, rx, att.receptance);
        K.matmul(k, kx, att.key);
        K.matmul(v, vx, att.value);
        K.matmul(g, gx, att.gate);
        const lw = Ar.take(R, Dd); // (B·T, Dd)
        K.matmul(lw, wx, att.decayW1);
        K.activate("tanh", lw);
        const decay = Ar.take(R, A); // (B·T, A)
        K.matmul(decay, lw, att.decayW2);
        K.addRow(decay, att.decay);
        K.activate("exp", decay);
        K.activate("exp", decay, -1); // exp(-exp(w))
        const out = Ar.take(R, A); // (B·T, A)
        eachSequence(s.length, T, (b, row0) => K.wkv5(out, r, k, v, decay, att.u, s[b].att_kv, H, row0, T));
        const y = Ar.take(R, A); // (B·T, A)
        K.groupNorm(y, out, H, att.lnX.weight, att.lnX.bias, eps);
        return gatedOutput(K, Ar, y, g, "silu", att.output);
      },
      channelMix(xx, T, s, { arena: Ar }) {
        const R = xx.rows; // B·T rows
        const d = Ar.take(R, C); // (B·T, C)
        eachSequence(s.length, T, (b, row0) => K.shift(d, xx, s[b].ffn_x_prev, row0, T));
        K.sub(d, d, xx);
        const xk = Ar.take(R, C), xr = Ar.take(R, C); // (B·T, C)
        K.lerpBy(xk, xx, d, ffn.maaK, null);
        K.lerpBy(xr, xx, d, ffn.maaR, null);
        return receptanceFfn(K, Ar, xk, xr, ffn);
      },
    };
  },
};
