import type { Backend } from "../backend/backend.js";
import { FormatError } from "../errors.js";
import { type Architecture, type Block, type ModelConfig, bySequence, tokenShift, type Version } from "./model.js";
import { GROUP_NORM_EPS, headedConfig, headedLayerState } from "./v5.js";
import { transpose, type Weights } from "./weights.js";

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

  inferConfig: (w: Weights, version: Version) => headedConfig(w, version, "blocks.0.att.time_faaaa"), // (H,N)
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
    const att = {
      maaX: w.vec(a + "time_maa_x", C),
      // Static part of each mix, in time_maa_w1's block order w,k,v,r,g.
      maa: ["w", "k", "v", "r", "g"].map((n) => w.vec(a + "time_maa_" + n, C)),
      maaW1: w.projection(a + "time_maa_w1", C, 5 * Dm), // (5·Dm, C)
      maaW2: w.projections(a + "time_maa_w2", 5, Dm, C), // 5 × (C, Dm)
      decay: w.vec(a + "time_decay", A), // (A) log-log decay base
      decayW1: w.projection(a + "time_decay_w1", C, Dd), // (Dd, C)
      decayW2: w.projection(a + "time_decay_w2", Dd, A), // (A, Dd)
      u: w.heads(a + "time_faaaa", H, N), // (A) bonus, used as is
      key: w.linear(a + "key.weight", A, C), value: w.linear(a + "value.weight", A, C),
      receptance: w.linear(a + "receptance.weight", A, C), gate: w.linear(a + "gate.weight", A, C),
      output: w.linear(a + "output.weight", C, A),
      lnX: { weight: w.vec(a + "ln_x.weight", A), bias: w.vec(a + "ln_x.bias", A) },
    };
    const ffn = {
      maaK: w.vec(f + "time_maa_k", C), maaR: w.vec(f + "time_maa_r", C),
      key: w.linear(f + "key.weight", F, C), receptance: w.linear(f + "receptance.weight", C, C),
      value: w.linear(f + "value.weight", C, F),
    };
    return {
      timeMix(xx, T, s) {
        const R = xx.length / C; // B·T rows
        const d = tokenShift(xx, T, C, s.map((l) => l.att_x_prev)); // (B·T, C) previous xx ...
        for (let n = 0; n < R * C; n++) d[n] -= xx[n]; // (B·T, C) ... minus xx
        const m = be.activate("tanh", be.matmul(lerp(xx, d, att.maaX, C), R, att.maaW1)); // (B·T, 5·Dm)
        const [wx, kx, vx, rx, gx] = att.maa.map((maa, b) => {
          const mb = be.matmul(columns(m, R, 5 * Dm, b * Dm, Dm), R, att.maaW2[b]); // (B·T, C)
          for (let n = 0; n < R * C; n++) mb[n] = xx[n] + d[n] * (maa[n % C] + mb[n]);
          return mb; // (B·T, C)
        });
        const r = be.matmul(rx, R, att.receptance); // (B·T, A)
        const k = be.matmul(kx, R, att.key); // (B·T, A)
        const v = be.matmul(vx, R, att.value); // (B·T, A)
        const g = be.matmul(gx, R, att.gate); // (B·T, A)
        const lw = be.activate("tanh", be.matmul(wx, R, att.decayW1)); // (B·T, Dd)
        const decay = be.matmul(lw, R, att.decayW2); // (B·T, A)
        for (let n = 0; n < R * A; n++) decay[n] += att.decay[n % A];
        be.activate("exp", be.activate("exp", decay), -1); // (B·T, A) exp(-exp(w))
        const out = bySequence(s.length, T, A, (b, rows) => be.wkv5(T, H, N, rows(r), rows(k), rows(v), rows(decay), att.u, s[b].att_kv)); // (B·T, A)
        const y = be.groupNorm(out, R, H, N, att.lnX.weight, att.lnX.bias, GROUP_NORM_EPS); // (B·T, A)
        be.activate("silu", g); // (B·T, A)
        for (let n = 0; n < R * A; n++) y[n] *= g[n];
        return be.matmul(y, R, att.output); // (B·T, C)
      },
      channelMix(xx, T, s) {
        const R = xx.length / C; // B·T rows
        const d = tokenShift(xx, T, C, s.map((l) => l.ffn_x_prev)); // (B·T, C)
        for (let n = 0; n < R * C; n++) d[n] -= xx[n]; // (B·T, C)
        const k = be.matmul(lerp(xx, d, ffn.maaK, C), R, ffn.key); // (B·T, F)
        const kv = be.matmul(be.activate("relu2", k), R, ffn.value); // (B·T, C)
        const r = be.activate("sigmoid", be.matmul(lerp(xx, d, ffn.maaR, C), R, ffn.receptance)); // (B·T, C)
        for (let n = 0; n < R * C; n++) kv[n] *= r[n];
        return kv;
      },
    };
  },
};

/** v6/v7 token-shift interpolation: xx + d·m with d = previous xx - xx, per channel. (T, C) */
export function lerp(xx: Float32Array, d: Float32Array, m: Float32Array, C: number): Float32Array {
  const out = new Float32Array(xx.length); // (T, C)
  for (let n = 0; n < xx.length; n++) out[n] = xx[n] + d[n] * m[n % C];
  return out;
}

/** Columns [c0, c0+n) of a (T, W) matrix as (T, n). */
function columns(x: Float32Array, T: number, W: number, c0: number, n: number): Float32Array {
  const out = new Float32Array(T * n); // (T, n)
  for (let t = 0; t < T; t++) out.set(x.subarray(t * W + c0, t * W + c0 + n), t * n);
  return out;
}
