import type { Backend, Matrix, Tensor } from "../../backend/backend.js";
import { type Block, eachSequence, LAYER_NORM_EPS, type LayerState, type ModelConfig } from "../model.js";
import { foldedTable, gatherRows } from "../v7a/deep-embed.js";
import type { Weights } from "../weights.js";

/*
 * DeepEmbedAttention (RWKV-7b, ../shared/reference/rwkv-lm/rwkv_v7b_demo.py) and the RWKV-8 rc00
 * hybrid's attention (rwkv_v8_rc00_hybrid_demo.py): a small causal softmax attention over the whole
 * context, computed from the block's input x and added to the residual beside the time mix.
 * Letters: R rows (B·T), C = n_embd, D = 256 the q/k width, E = 32 the cached width, P tokens
 * already in the context, Tk = P + T keys.
 *
 *   q = LN(shift_q(x W_q))                                          (R, D)
 *   cache: e_k = x W_kd, e_v = x W_vd appended per token            (Tk, E) each, with the token ids
 *   k = LN(shift_k((e_k W_ku) ⊙ kEmb[id]))                          (Tk, D)
 *   v = LN(shift_v(tanh(e_v W_vu) ⊙ vEmb[id]))                      (Tk, C)
 *   out_t = Σ_{j ≤ P+t} softmax_j(cap · tanh(scale · q_t·k_j)) v_j
 *
 * 7b: shift_q is the token shift with the state q_prev (lerp by x_q); shift_k, shift_v shift along
 * the context from a zero row (lerp by x_k, x_v); kEmb, vEmb are folded with LN0(emb) at load like
 * DeepEmbed's table. The hybrid: no shifts, no fold. The state grows: E floats of k and of v and one
 * token id per token per layer (k and v are recomputed from them each call, as the official code does).
 */

/** The q/k width the official files hard-code (LayerNorm over 256). */
export const ATTENTION_WIDTH = 256;
/** The state arrays that grow by a row per token. */
export const CACHE_FIELDS = ["k_cache", "v_cache", "ctx_tokens"] as const;

interface Norm { weight: Tensor; bias: Tensor } // (1, n) each

/**
 * A layer's cache must hold the same number of tokens in k_cache, v_cache (E floats each per
 * token) and ctx_tokens (valid ids): anything else is a damaged or foreign state.
 */
export function checkCache(cfg: ModelConfig, l: LayerState): string | null {
  const n = l.ctx_tokens.length;
  if (l.k_cache.length !== l.v_cache.length) return `k_cache has ${l.k_cache.length} values but v_cache ${l.v_cache.length}`;
  if (n === 0 ? l.k_cache.length !== 0 : l.k_cache.length % n !== 0) return `k_cache has ${l.k_cache.length} values for ${n} tokens`;
  for (const id of l.ctx_tokens) if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) return `ctx_tokens holds ${id}, not a token id`;
  return null;
}

/** Floats per token a layer's cache gains: E of k, E of v, one token id. */
export function cacheFloatsPerToken(E: number, cfg: ModelConfig): number {
  return cfg.nLayer * (2 * E + 1);
}

/** One layer's attention parameters in a form both variants share. */
interface Parts {
  q: Matrix; kDown: Matrix; kUp: Matrix; kTable: Matrix; vDown: Matrix; vUp: Matrix; vTable: Matrix; // kTable (V, D), vTable (V, C)
  lnq: Norm; lnk: Norm; lnv: Norm;
  shift: { q: Tensor; k: Tensor; v: Tensor } | null; // (1, D), (1, D), (1, C)
  cap: number; scale: number;
}

/** 7b's soft cap: scores = 64 tanh(q·k / 1024). */
const CAP_7B = 64, SCALE_7B = 1 / 1024;
/** The hybrid's soft cap: scores = 32 tanh(q·k / 512). */
const CAP_HYBRID = 32, SCALE_HYBRID = 1 / 512;

function norms(w: Weights, p: string, C: number, be: Backend): Pick<Parts, "lnq" | "lnk" | "lnv"> {
  const K = be.tensors;
  const n = (name: string, width: number): Norm => ({ weight: K.constant(w.vec(p + name + ".weight", width)), bias: K.constant(w.vec(p + name + ".bias", width)) });
  return { lnq: n("lnq", ATTENTION_WIDTH), lnk: n("lnk", ATTENTION_WIDTH), lnv: n("lnv", C) };
}

/** RWKV-7b's DeepEmbedAttention of layer i. */
export function deepEmbedAttention(w: Weights, i: number, cfg: ModelConfig, be: Backend): NonNullable<Block["attention"]> {
  const { nEmbd: C } = cfg;
  const p = `blocks.${i}.qkv.`, D = ATTENTION_WIDTH, E = w.shape(p + "k1")[1];
  const K = be.tensors;
  return contextAttention({
    q: w.linear(p + "qq.weight", D, C),
    kDown: w.projection(p + "k1", C, E), kUp: w.projection(p + "k2", E, D), kTable: foldedTable(w, p + "k_emb.weight", p + "k_emb_x.weight", cfg, be),
    vDown: w.projection(p + "v1", C, E), vUp: w.projection(p + "v2", E, C), vTable: foldedTable(w, p + "v_emb.weight", p + "v_emb_x.weight", cfg, be),
    ...norms(w, p, C, be),
    shift: { q: K.constant(w.vec(p + "x_q", D)), k: K.constant(w.vec(p + "x_k", D)), v: K.constant(w.vec(p + "x_v", C)) },
    cap: CAP_7B, scale: SCALE_7B,
  }, i, cfg, be);
}

/** The RWKV-8 rc00 hybrid's attention of layer i. */
export function hybridAttention(w: Weights, i: number, cfg: ModelConfig, be: Backend): NonNullable<Block["attention"]> {
  const { nEmbd: C, vocabSize: V } = cfg;
  const p = `blocks.${i}.qkv.`, D = ATTENTION_WIDTH, E = w.shape(p + "kk.weight")[0];
  return contextAttention({
    q: w.linear(p + "qq.weight", D, C),
    kDown: w.linear(p + "kk.weight", E, C), kUp: w.linear(p + "kkup.weight", D, E), kTable: w.table(p + "ennk.weight", V, D),
    vDown: w.linear(p + "vv.weight", E, C), vUp: w.linear(p + "vvup.weight", C, E), vTable: w.table(p + "emm.weight", V, C),
    ...norms(w, p, C, be),
    shift: null, cap: CAP_HYBRID, scale: SCALE_HYBRID,
  }, i, cfg, be);
}

function contextAttention(m: Parts, i: number, cfg: ModelConfig, be: Backend): NonNullable<Block["attention"]> {
  const { nEmbd: C } = cfg;
  const K = be.tensors;
  const D = m.q.rows, E = m.kDown.rows;
  const rowK = new Float32Array(D), rowV = new Float32Array(C), zeros = new Float32Array(Math.max(D, C));

  return (x, T, s, { arena: A, tokens, states }) => {
    const R = x.rows, B = s.length;
    let q = A.take(R, D); // (R, D)
    K.matmul(q, x, m.q);
    if (m.shift) {
      const sq = A.take(R, D), qs = A.take(R, D); // (R, D)
      eachSequence(B, T, (b, row0) => K.shift(sq, q, s[b].q_prev, row0, T));
      K.lerp([qs], q, sq, [m.shift.q]);
      q = qs;
    }
    const qn = A.take(R, D); // (R, D)
    K.layerNorm(qn, q, m.lnq.weight, m.lnq.bias, LAYER_NORM_EPS);
    const kd = A.take(R, E), vd = A.take(R, E); // (R, E) this call's cache rows
    K.matmul(kd, x, m.kDown);
    K.matmul(vd, x, m.vDown);
    const newK = K.read(kd), newV = K.read(vd);

    const y = A.take(R, C); // (R, C)
    for (let b = 0; b < B; b++) {
      const l = states[b].layers[i];
      const P = l.ctx_tokens.length, Tk = P + T;
      l.k_cache = appended(l.k_cache, newK.subarray(b * T * E, (b + 1) * T * E)); // (Tk, E)
      l.v_cache = appended(l.v_cache, newV.subarray(b * T * E, (b + 1) * T * E)); // (Tk, E)
      l.ctx_tokens = appended(l.ctx_tokens, Float32Array.from(tokens.slice(b * T, (b + 1) * T))); // (Tk)
      const mark = A.mark();
      const k = keysOrValues(l.k_cache, m.kUp, null, m.kTable, l.ctx_tokens, rowK, m.shift?.k ?? null, m.lnk, Tk); // (Tk, D)
      const v = keysOrValues(l.v_cache, m.vUp, "tanh", m.vTable, l.ctx_tokens, rowV, m.shift?.v ?? null, m.lnv, Tk); // (Tk, C)
      if (B === 1) {
        K.softcapAttention(y, qn, k, v, m.cap, m.scale, P);
      } else {
        const qb = A.take(T, D), yb = A.take(T, C); // this sequence's rows
        K.copyRows(qb, 0, qn, b * T, T);
        K.softcapAttention(yb, qb, k, v, m.cap, m.scale, P);
        K.copyRows(y, b * T, yb, 0, T);
      }
      A.rewind(mark);
    }
    return y;

    /** LN(shift(act(cache W_up) ⊙ table[ids])) over the whole context, (Tk, width). */
    function keysOrValues(cache: Float32Array, up: Matrix, act: "tanh" | null, table: Matrix, ids: Float32Array, row: Float32Array,
      mix: Tensor | null, ln: Norm, Tk: number): Tensor {
      const W = up.rows;
      const c = A.take(Tk, E); // (Tk, E)
      K.write(c, 0, cache, 0, Tk * E);
      let h = A.take(Tk, W); // (Tk, W)
      K.matmul(h, c, up);
      if (act) K.activate(act, h);
      const e = A.take(Tk, W); // (Tk, W) the tokens' table rows
      gatherRows(K, e, table, ids, row);
      K.mul(h, e);
      if (mix) {
        const sh = A.take(Tk, W), first = A.take(1, W), out = A.take(Tk, W);
        K.write(first, 0, zeros, 0, W); // the context's first key has a zero predecessor
        K.shift(sh, h, first, 0, Tk);
        K.lerp([out], h, sh, [mix]);
        h = out;
      }
      const n = A.take(Tk, W); // (Tk, W)
      K.layerNorm(n, h, ln.weight, ln.bias, LAYER_NORM_EPS);
      return n;
    }
  };
}

/** a followed by b, in a new array. */
function appended(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
