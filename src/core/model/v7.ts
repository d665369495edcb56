import type { Activation, Backend, Matrix } from "../backend/backend.js";
import { type Architecture, type Block, type ModelConfig, bySequence, tokenShift, type Version } from "./model.js";
import { countLayers } from "./v4.js";
import { headedLayerState } from "./v5.js";
import type { Weights } from "./weights.js";

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

/** GroupNorm eps of `ln_x` (= 1e-5 · head_size_divisor² with divisor 8 in the training code). */
const GROUP_NORM_EPS = 64e-5;
/** The decay bound: decay = exp(-e^{-0.5} σ(·)) keeps every channel's decay in (exp(-e^{-0.5}), 1). */
const DECAY_SCALE = Math.exp(-0.5);
/** F.normalize's eps. */
const NORMALIZE_EPS = 1e-12;

export const rwkv7: Architecture = {
  name: "RWKV-7",

  inferConfig(w: Weights, version: Version): ModelConfig {
    const [V, C] = w.shape("emb.weight");
    const rk = w.shape("blocks.0.att.r_k");
    const [H, N] = rk.length === 2 ? rk : [C / 64, 64]; // r_k is (H, N); flattened copies would assume N = 64
    return {
      version, nLayer: countLayers(w), nEmbd: C, vocabSize: V, dimAtt: C, nHead: H, headSize: N,
      dimFfn: w.shape("blocks.0.ffn.key.weight")[0],
    };
  },

  initLayerState: headedLayerState,

  // State tuning trains the kernel's own state, already [h][value i][key j]: used as is.
  timeStateToKv: (_cfg: ModelConfig, st: Float32Array) => st.slice(),

  block(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block {
    const { nEmbd: C, nHead: H, headSize: N, dimFfn: F } = cfg;
    const a = `blocks.${i}.att.`, f = `blocks.${i}.ffn.`;
    const lora = (n1: string, n2: string): [Matrix, Matrix] => {
      const D = w.shape(a + n1)[1];
      return [w.projection(a + n1, C, D), w.projection(a + n2, D, C)];
    };
    const att = {
      x_r: w.vec(a + "x_r", C), x_w: w.vec(a + "x_w", C), x_k: w.vec(a + "x_k", C),
      x_v: w.vec(a + "x_v", C), x_a: w.vec(a + "x_a", C), x_g: w.vec(a + "x_g", C),
      w0: w.vec(a + "w0", C), wLora: lora("w1", "w2"),
      a0: w.vec(a + "a0", C), aLora: lora("a1", "a2"),
      // Layer 0 carries v0/v1/v2 in checkpoints but never uses them (its v *is* v_first).
      v0: i > 0 ? w.vec(a + "v0", C) : null, vLora: i > 0 ? lora("v1", "v2") : null,
      gLora: lora("g1", "g2"),
      k_k: w.vec(a + "k_k", C), k_a: w.vec(a + "k_a", C), r_k: w.heads(a + "r_k", H, N),
      receptance: w.linear(a + "receptance.weight", C, C), key: w.linear(a + "key.weight", C, C),
      value: w.linear(a + "value.weight", C, C), output: w.linear(a + "output.weight", C, C),
      lnW: w.vec(a + "ln_x.weight", C), lnB: w.vec(a + "ln_x.bias", C),
    };
    const ffn = { x_k: w.vec(f + "x_k", C), key: w.linear(f + "key.weight", F, C), value: w.linear(f + "value.weight", C, F) };

    return {
      timeMix(xx, T, s, ctx) {
        const R = xx.length / C; // B·T rows
        const sx = tokenShift(xx, T, C, s.map((l) => l.att_x_prev)); // (B·T, C)
        const [xr, xw, xk, xv, xa, xg] = lerpShift6(xx, sx, att, C); // (B·T, C) each

        const r = be.matmul(xr, R, att.receptance); // (B·T, C)
        const k = be.matmul(xk, R, att.key); // (B·T, C)
        const v = be.matmul(xv, R, att.value); // (B·T, C)
        const wl = loraApply(be, xw, R, att.wLora, "tanh", att.w0); // (B·T, C)
        const decay = be.activate("exp", be.activate("sigmoid", wl), -DECAY_SCALE); // (B·T, C)
        const iclr = be.activate("sigmoid", loraApply(be, xa, R, att.aLora, null, att.a0)); // (B·T, C) the rate a
        const g = loraApply(be, xg, R, att.gLora, "sigmoid", null); // (B·T, C)
        const vGate = i === 0 ? null : be.activate("sigmoid", loraApply(be, xv, R, att.vLora!, null, att.v0!)); // (B·T, C)
        if (i === 0) ctx.v_first = v.slice(); // (B·T, C)
        const vf = ctx.v_first; // (B·T, C)

        // One pass per head instead of one per formula: fewer temporaries, the same arithmetic.
        const kkA = xr, minusKk = xw; // (B·T, C), reusing buffers no longer needed
        for (let o = 0; o < R * C; o += N) {
          const c0 = o % C;
          let ss = 0;
          for (let j = 0; j < N; j++) ss += (k[o + j] * att.k_k[c0 + j]) ** 2;
          const inv = 1 / Math.max(Math.sqrt(ss), NORMALIZE_EPS); // F.normalize of k ⊙ k_k
          for (let j = 0, n = o, c = c0; j < N; j++, n++, c++) {
            const kk = k[n] * att.k_k[c] * inv;
            k[n] *= 1 + (iclr[n] - 1) * att.k_a[c];
            if (vGate) v[n] += (vf[n] - v[n]) * vGate[n];
            minusKk[n] = -kk;
            kkA[n] = kk * iclr[n];
          }
        }
        const y = bySequence(s.length, T, C, (b, rows) =>
          be.wkv7(T, H, N, rows(r), rows(decay), rows(k), rows(v), rows(minusKk), rows(kkA), s[b].att_kv)); // (B·T, C)
        const out = be.groupNorm(y, R, H, N, att.lnW, att.lnB, GROUP_NORM_EPS); // (B·T, C)

        for (let th = 0; th < R * H; th++) { // the per-head "bonus": (Σ_j r_j k_j r_k,j) v
          const o = th * N, c0 = (th % H) * N;
          let dot = 0;
          for (let j = 0; j < N; j++) dot += r[o + j] * k[o + j] * att.r_k[c0 + j];
          for (let j = 0; j < N; j++) out[o + j] = (out[o + j] + dot * v[o + j]) * g[o + j];
        }
        return be.matmul(out, R, att.output); // (B·T, C)
      },

      channelMix(xx, T, s) {
        const R = xx.length / C; // B·T rows
        const sx = tokenShift(xx, T, C, s.map((l) => l.ffn_x_prev)); // (B·T, C)
        const k = be.matmul(lerpShift(xx, sx, ffn.x_k, C), R, ffn.key); // (B·T, F)
        return be.matmul(be.activate("relu2", k), R, ffn.value); // (B·T, C)
      },
    };
  },
};

/** v6/v7 token-shift interpolation: xx + (sx - xx)·m. (T, C) */
export function lerpShift(xx: Float32Array, sx: Float32Array, m: Float32Array, C: number): Float32Array {
  const out = new Float32Array(xx.length); // (T, C)
  for (let n = 0; n < xx.length; n += C) for (let c = 0; c < C; c++) out[n + c] = xx[n + c] + (sx[n + c] - xx[n + c]) * m[c];
  return out;
}

/** bias + act(x M1) M2 for a low-rank pair; `act` applies between the factors. (T, C) -> (T, C) */
function loraApply(be: Backend, x: Float32Array, T: number, [m1, m2]: [Matrix, Matrix],
  act: Activation | null, bias: Float32Array | null): Float32Array {
  const h = be.matmul(x, T, m1); // (T, D)
  if (act) be.activate(act, h);
  const y = be.matmul(h, T, m2); // (T, C)
  if (bias) for (let n = 0; n < y.length; n += bias.length) for (let c = 0; c < bias.length; c++) y[n + c] += bias[c];
  return y;
}

/** The six v7 token-shift interpolations in one pass over xx and sx. (T, C) -> 6 × (T, C) */
function lerpShift6(xx: Float32Array, sx: Float32Array, m: Record<"x_r" | "x_w" | "x_k" | "x_v" | "x_a" | "x_g", Float32Array>, C: number): Float32Array[] {
  const n = xx.length;
  const out = [0, 1, 2, 3, 4, 5].map(() => new Float32Array(n)); // 6 × (T, C)
  const [or, ow, ok, ov, oa, og] = out;
  const { x_r, x_w, x_k, x_v, x_a, x_g } = m;
  for (let t = 0; t < n; t += C) {
    for (let c = 0, i = t; c < C; c++, i++) {
      const x = xx[i], d = sx[i] - x;
      or[i] = x + d * x_r[c]; ow[i] = x + d * x_w[c]; ok[i] = x + d * x_k[c];
      ov[i] = x + d * x_v[c]; oa[i] = x + d * x_a[c]; og[i] = x + d * x_g[c];
    }
  }
  return out;
}
