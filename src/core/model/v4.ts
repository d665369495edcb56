import type { Backend } from "../backend/backend.js";
import { type Architecture, type Block, type ModelConfig, bySequence, tokenShift, type Version } from "./model.js";
import type { Weights } from "./weights.js";

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

  inferConfig(w: Weights, version: Version): ModelConfig {
    const [V, C] = w.shape("emb.weight");
    const A = w.shape("blocks.0.att.key.weight")[0];
    return {
      version, nLayer: countLayers(w), nEmbd: C, vocabSize: V, dimAtt: A,
      dimFfn: w.shape("blocks.0.ffn.key.weight")[0],
      nHead: 1, headSize: A, // v4 has no heads: one "head" spanning all channels
    };
  },

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
    const att = {
      mixK: w.vec(a + "time_mix_k", C), mixV: w.vec(a + "time_mix_v", C), mixR: w.vec(a + "time_mix_r", C),
      w: w.vec(a + "time_decay", A).map((d) => -Math.exp(d)), // (A) log-space decay
      u: w.vec(a + "time_first", A), // (A) log-space bonus
      key: w.linear(a + "key.weight", A, C), value: w.linear(a + "value.weight", A, C),
      receptance: w.linear(a + "receptance.weight", A, C), output: w.linear(a + "output.weight", C, A),
    };
    return {
      timeMix(xx, T, s) {
        const R = xx.length / C; // B·T rows
        const sx = tokenShift(xx, T, C, s.map((l) => l.att_xx)); // (B·T, C)
        const k = be.matmul(mix(xx, sx, att.mixK, C), R, att.key); // (B·T, A)
        const v = be.matmul(mix(xx, sx, att.mixV, C), R, att.value); // (B·T, A)
        const r = be.matmul(mix(xx, sx, att.mixR, C), R, att.receptance); // (B·T, A)
        const wkv = bySequence(s.length, T, A, (b, rows) =>
          be.wkv4(T, A, att.w, att.u, rows(k), rows(v), { aa: s[b].att_aa, bb: s[b].att_bb, pp: s[b].att_pp })); // (B·T, A)
        be.activate("sigmoid", r); // (B·T, A)
        for (let n = 0; n < wkv.length; n++) wkv[n] *= r[n];
        return be.matmul(wkv, R, att.output); // (B·T, C)
      },
      channelMix: channelMixV4(w, i, cfg, be, "ffn_xx"),
    };
  },
};

/**
 * The v4 channel mix, also v5's (SPEC §4): out = σ(W_r mix(..r)) ⊙ W_v relu²(W_k mix(..k)).
 * `prevKey` names the layer state's token-shift entry (v4 ffn_xx, v5 ffn_x_prev).
 */
export function channelMixV4(w: Weights, i: number, cfg: ModelConfig, be: Backend, prevKey: string): Block["channelMix"] {
  const { nEmbd: C, dimFfn: F } = cfg;
  const f = `blocks.${i}.ffn.`;
  const ffn = {
    mixK: w.vec(f + "time_mix_k", C), mixR: w.vec(f + "time_mix_r", C),
    key: w.linear(f + "key.weight", F, C), receptance: w.linear(f + "receptance.weight", C, C),
    value: w.linear(f + "value.weight", C, F),
  };
  return (xx, T, s) => {
    const R = xx.length / C; // B·T rows
    const sx = tokenShift(xx, T, C, s.map((l) => l[prevKey])); // (B·T, C)
    const k = be.matmul(mix(xx, sx, ffn.mixK, C), R, ffn.key); // (B·T, F)
    const kv = be.matmul(be.activate("relu2", k), R, ffn.value); // (B·T, C)
    const r = be.activate("sigmoid", be.matmul(mix(xx, sx, ffn.mixR, C), R, ffn.receptance)); // (B·T, C)
    for (let n = 0; n < kv.length; n++) kv[n] *= r[n];
    return kv;
  };
}

/** v4/v5 token-shift interpolation: xx·m + sx·(1-m), per channel. (T, C) */
export function mix(xx: Float32Array, sx: Float32Array, m: Float32Array, C: number): Float32Array {
  const out = new Float32Array(xx.length); // (T, C)
  for (let n = 0; n < xx.length; n++) {
    const c = n % C;
    out[n] = xx[n] * m[c] + sx[n] * (1 - m[c]);
  }
  return out;
}

/** L = 1 + max i over `blocks.i.*`. */
export function countLayers(w: Weights): number {
  let L = 0;
  for (const name of w.ckpt.tensors.keys()) {
    const m = /^blocks\.(\d+)\./.exec(name);
    if (m) L = Math.max(L, Number(m[1]) + 1);
  }
  return L;
}
