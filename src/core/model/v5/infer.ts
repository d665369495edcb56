import type { Backend, Tensor } from "../../backend/backend.js";
import { FormatError } from "../../errors.js";
import { numel } from "../../tensor.js";
import { type Architecture, type Block, eachSequence, type ModelConfig } from "../model.js";
import { channelMixV4, gatedOutput, project, shiftMix } from "../v4/infer.js";
import type { Weights } from "../weights.js";

/*
 * RWKV-5 "Eagle" (SPEC §4), both 5.2 and the older 5.1 (rwkv.cpp's name; pip calls it 5.0).
 * Letters: T tokens, C = n_embd, A = dim_att, F = dim_ffn, H heads, N = A/H head size.
 *
 * Time mix:  r = W_r mix(xx, sx; time_mix_r), k, v likewise (no sigmoid on r)
 *            per head, S[j=key][i=value]:
 *              out[i] = Σ_j r[j] (u[j] k[j] v[i] + S[j,i]);   S[j,i] <- k[j] v[i] + w[j] S[j,i]
 *            w = exp(-exp(time_decay)),  u = time_faaaa (5.2) or exp(time_first) (5.1)
 *            y = GN(out; H) ⊙ silu(W_g mix(..g))   (5.2; 5.1 has no gate: y = GN(out; H))
 *            out = W_o y
 * Channel mix (as v4): out = σ(W_r mix(..r)) ⊙ W_v relu²(W_k mix(..k))
 * with mix(xx, sx; m) = xx·m + sx·(1-m).
 *
 * Shapes: 5.2 time_decay/time_faaaa (H,N) (one value per channel); 5.1 time_decay/time_first
 * (H,1,1) or (H,) (one value per head, broadcast to its N channels). Either is accepted by size.
 * State per layer (pip layout): att_x_prev (C), att_kv (H·N·N) [h][key j][value i], ffn_x_prev (C).
 */

/**
 * The block of both 5.1 and 5.2; `defaultEps` is the version's official ln_x eps, used unless the
 * checkpoint states its own numerics (rwkv.cpp files: rwkv.cpp's graph).
 */
export function rwkv5(defaultEps: number): Architecture {
  return {
    name: "RWKV-5",
    initLayerState: headedLayerState,

    block(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block {
      const { nEmbd: C, dimAtt: A, nHead: H, headSize: N } = cfg;
      const a = `blocks.${i}.att.`;
      const realFirst = w.has(a + "time_faaaa"); // 5.2: u used as is; 5.1: time_first, u = exp(time_first)
      const gated = w.has(a + "gate.weight");
      const K = be.tensors;
      const vec = (name: string, n = C): Tensor => K.constant(w.vec(name, n)); // (1, n)
      const att = {
        mixK: vec(a + "time_mix_k"), mixV: vec(a + "time_mix_v"), mixR: vec(a + "time_mix_r"),
        decay: K.constant(headOrChannel(w, a + "time_decay", H, N).map((d) => Math.exp(-Math.exp(d)))), // (1, A) multiplicative
        u: K.constant(realFirst ? headOrChannel(w, a + "time_faaaa", H, N) : headOrChannel(w, a + "time_first", H, N).map(Math.exp)), // (1, A)
        key: w.linear(a + "key.weight", A, C), value: w.linear(a + "value.weight", A, C),
        receptance: w.linear(a + "receptance.weight", A, C), output: w.linear(a + "output.weight", C, A),
        gate: gated ? { mixG: vec(a + "time_mix_g"), weight: w.linear(a + "gate.weight", A, C) } : null,
        lnX: { weight: vec(a + "ln_x.weight", A), bias: vec(a + "ln_x.bias", A) },
        eps: w.ckpt.numerics?.groupNormEps ?? defaultEps,
      };
      return {
        timeMix(xx, T, s, { arena: Ar }) {
          const R = xx.rows; // B·T rows
          const { sx, xs: [xr, xk, xv] } = shiftMix(K, Ar, xx, T, s, "att_x_prev", [att.mixR, att.mixK, att.mixV]); // (B·T, C) each
          const [r, k, v] = project(K, Ar, [xr, xk, xv], [att.receptance, att.key, att.value]); // (B·T, A) each
          const out = Ar.take(R, A); // (B·T, A)
          eachSequence(s.length, T, (b, row0) => K.wkv5(out, r, k, v, att.decay, att.u, s[b].att_kv, H, row0, T));
          const y = Ar.take(R, A); // (B·T, A)
          K.groupNorm(y, out, H, att.lnX.weight, att.lnX.bias, att.eps);
          let g: Tensor | null = null;
          if (att.gate) {
            g = Ar.take(R, A); // (B·T, A)
            K.mix([xr], xx, sx, [att.gate.mixG]); // xr is free again: the gate's input
            K.matmul(g, xr, att.gate.weight);
          }
          return gatedOutput(K, Ar, y, g, "silu", att.output);
        },
        channelMix: channelMixV4(w, i, cfg, be, "ffn_x_prev"),
      };
    },
  };
}

/** Zero state of one v5/v6/v7 layer: two token-shift vectors and the per-head WKV matrices. */
export function headedLayerState(cfg: ModelConfig): Record<string, Float32Array> {
  const { nEmbd: C, nHead: H, headSize: N } = cfg;
  return { att_x_prev: new Float32Array(C), att_kv: new Float32Array(H * N * N), ffn_x_prev: new Float32Array(C) };
}

/**
 * A per-channel (H·N values, e.g. (H,N) or (H,N,1)) or per-head (H values, e.g. (H,1,1) or (H,))
 * parameter as (A): a per-head value is repeated over its head's N channels.
 */
function headOrChannel(w: Weights, name: string, H: number, N: number): Float32Array {
  const count = numel(w.shape(name));
  if (count !== H && count !== H * N) {
    throw new FormatError(w.ckpt.source, `tensor ${name} has shape [${w.shape(name)}] but RWKV-5 needs ${H} (per head) or ${H * N} (per channel) elements`);
  }
  if (count === H * N) return w.heads(name, H, N); // (A)
  const p = w.vec(name, count); // (H)
  const out = new Float32Array(H * N); // (A)
  for (let h = 0; h < H; h++) out.fill(p[h], h * N, (h + 1) * N);
  return out;
}
