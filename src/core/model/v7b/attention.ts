import type { Arena, Backend, Matrix, Tensor } from "../../backend/backend.js";
import { type Architecture, type Block, eachSequence, LAYER_NORM_EPS, type LayerState, type ModelConfig } from "../model.js";
import { foldedTable, gatherRows } from "../v7a/deep-embed.js";
import type { TensorShapes } from "../shapes.js";
import type { Weights } from "../weights.js";
import { rwkv7, v7TimeMix } from "../v7/infer.js";

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
 * token id per token per layer. The official code recomputes k and v over the whole context from
 * them each call; here each sequence's normalized k and v rows are also kept in backend memory
 * between calls (Derived), so a step computes its own rows only (a state met for the first time,
 * e.g. a clone or a restored file, is recomputed in full once).
 */

/** The q/k width the official files hard-code (LayerNorm over 256). */
export const ATTENTION_WIDTH = 256;
/** The cached width of k and v (k1/k2, v1/v2 and the hybrid's kk/vv), as the official files hard-code it. */
export const CACHE_WIDTH = 32;
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

/** A layer's cache arrays at the start: no tokens seen. */
function emptyCache(): LayerState {
  return { k_cache: new Float32Array(0), v_cache: new Float32Array(0), ctx_tokens: new Float32Array(0) };
}

/** One block part of a layer, as an Architecture's block builds it. */
type PartOf<K extends keyof Block> = (w: Weights, i: number, cfg: ModelConfig, be: Backend) => NonNullable<Block[K]>;

/**
 * RWKV-7 with an attention in every block and the state growing by its KV cache (7b and the 8
 * hybrid): per block x += TimeMix(LN1(x)) + attention; x += channelMix(LN2(x)), RWKV-7's time mix.
 * E (the cache width per token) is read from the weights by `cacheWidth`; `extraState` are the
 * layer state's arrays besides RWKV-7's and the cache; `overrides` other Architecture fields.
 */
export function attentionArchitecture(a: {
  readonly name: string;
  readonly attention: PartOf<"attention">;
  readonly channelMix: PartOf<"channelMix">;
  readonly cacheWidth: (w: Pick<TensorShapes, "shape">) => number;
  readonly extraState?: () => LayerState;
}, overrides: Partial<Architecture> = {}): Architecture {
  return {
    ...rwkv7,
    ...overrides,
    name: a.name,
    initLayerState: (cfg) => ({ ...rwkv7.initLayerState(cfg), ...a.extraState?.(), ...emptyCache() }),
    growingState: CACHE_FIELDS,
    checkGrowingState: checkCache,
    stateFloatsPerToken: (w, cfg) => cacheFloatsPerToken(a.cacheWidth(w), cfg),
    block: (w, i, cfg, be) => ({ attention: a.attention(w, i, cfg, be), timeMix: v7TimeMix(w, i, cfg, be), channelMix: a.channelMix(w, i, cfg, be) }),
  };
}

/** Random-model ranges of the attention's LayerNorms (lnq, lnk, lnv): weights near 1, biases near 0. */
export function attentionNormRandom(name: string): readonly [number, number] | undefined {
  if (/\.qkv\.ln[qkv]\.weight$/.test(name)) return [0.8, 1.2];
  if (/\.qkv\.ln[qkv]\.bias$/.test(name)) return [-0.1, 0.1];
  return undefined;
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

/**
 * One sequence's normalized keys (Tk, D) and values (Tk, C) in backend memory, kept between calls
 * so a step computes only its own rows (each row depends on its cache rows, token ids and, through
 * the shift, the previous row only). Derived from the state, never saved: valid while the state's
 * k_cache is still the array this was computed from (the forward replaces, never edits, it).
 */
interface Derived {
  rows: number; // Tk filled
  cache: Float32Array; // the k_cache array they were computed from
  arena: Arena; // holds k, v and the shifts' carried rows; replaced (and disposed) when it grows
  k: Tensor; v: Tensor; // (capacity, D), (capacity, C)
  kPrev: Tensor; vPrev: Tensor; // (1, D), (1, C): the last row before LN (the shift's carry)
}

/** Rows of the first Derived allocation; it doubles when full. */
const DERIVED_MIN_ROWS = 64;

function contextAttention(m: Parts, i: number, cfg: ModelConfig, be: Backend): NonNullable<Block["attention"]> {
  const { nEmbd: C } = cfg;
  const K = be.tensors;
  const D = m.q.rows, E = m.kDown.rows;
  const rowK = new Float32Array(D), rowV = new Float32Array(C), zeros = new Float32Array(Math.max(D, C));
  const derived = new WeakMap<LayerState, Derived>(); // per state layer, for this layer of this model

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
      const known = derived.get(l);
      const d = known && known.rows === P && known.cache === l.k_cache ? known : fresh(known);
      const from = d.rows; // P, or 0 for a state seen for the first time (a clone, a restored file)
      l.k_cache = appended(l.k_cache, newK.subarray(b * T * E, (b + 1) * T * E)); // (Tk, E)
      l.v_cache = appended(l.v_cache, newV.subarray(b * T * E, (b + 1) * T * E)); // (Tk, E)
      l.ctx_tokens = appended(l.ctx_tokens, Float32Array.from(tokens.slice(b * T, (b + 1) * T))); // (Tk)
      reserve(d, Tk);
      const mark = A.mark();
      extend(d.k, d.kPrev, l.k_cache, m.kUp, null, m.kTable, l.ctx_tokens, rowK, m.shift?.k ?? null, m.lnk, from, Tk);
      extend(d.v, d.vPrev, l.v_cache, m.vUp, "tanh", m.vTable, l.ctx_tokens, rowV, m.shift?.v ?? null, m.lnv, from, Tk);
      d.rows = Tk;
      d.cache = l.k_cache;
      derived.set(l, d);
      // The kernel reads keys 0 … P+t only: the tensors' spare capacity rows are never touched.
      if (B === 1) {
        K.softcapAttention(y, qn, d.k, d.v, m.cap, m.scale, P);
      } else {
        const qb = A.take(T, D), yb = A.take(T, C); // this sequence's rows
        K.copyRows(qb, 0, qn, b * T, T);
        K.softcapAttention(yb, qb, d.k, d.v, m.cap, m.scale, P);
        K.copyRows(y, b * T, yb, 0, T);
      }
      A.rewind(mark);
    }
    return y;

    /**
     * Rows from … Tk-1 of LN(shift(act(cache W_up) ⊙ table[ids])) into `out` (capacity, W); `prev`
     * carries the shift's last row across calls.
     */
    function extend(out: Tensor, prev: Tensor, cache: Float32Array, up: Matrix, act: "tanh" | null, table: Matrix, ids: Float32Array,
      row: Float32Array, mix: Tensor | null, ln: Norm, from: number, Tk: number): void {
      const W = up.rows, n = Tk - from;
      const c = A.take(n, E); // (n, E)
      K.write(c, 0, cache, from * E, n * E);
      let h = A.take(n, W); // (n, W)
      K.matmul(h, c, up);
      if (act) K.activate(act, h);
      const e = A.take(n, W); // (n, W) the tokens' table rows
      gatherRows(K, e, table, ids.subarray(from, Tk), row);
      K.mul(h, e);
      if (mix) {
        const sh = A.take(n, W), mixed = A.take(n, W); // (n, W)
        K.shift(sh, h, prev, 0, n); // the context's first row has a zero predecessor (prev starts at zero)
        K.lerp([mixed], h, sh, [mix]);
        h = mixed;
      }
      const normed = A.take(n, W); // (n, W)
      K.layerNorm(normed, h, ln.weight, ln.bias, LAYER_NORM_EPS);
      K.copyRows(out, from, normed, 0, n);
    }
  };

  /** Empty derived rows (the previous ones' memory released). */
  function fresh(old: Derived | undefined): Derived {
    old?.arena.dispose();
    const arena = K.arena();
    const d: Derived = { rows: 0, cache: new Float32Array(0), arena, k: arena.take(DERIVED_MIN_ROWS, D), v: arena.take(DERIVED_MIN_ROWS, C), kPrev: arena.take(1, D), vPrev: arena.take(1, C) };
    K.write(d.kPrev, 0, zeros, 0, D);
    K.write(d.vPrev, 0, zeros, 0, C);
    return d;
  }

  /** Room for Tk rows: a larger arena (doubling), the filled rows and carries copied over. */
  function reserve(d: Derived, Tk: number): void {
    if (Tk <= d.k.rows) return;
    const rows = Math.max(Tk, 2 * d.k.rows);
    const arena = K.arena();
    const k = arena.take(rows, D), v = arena.take(rows, C), kPrev = arena.take(1, D), vPrev = arena.take(1, C);
    if (d.rows) { K.copyRows(k, 0, d.k, 0, d.rows); K.copyRows(v, 0, d.v, 0, d.rows); }
    K.copyRows(kPrev, 0, d.kPrev, 0, 1);
    K.copyRows(vPrev, 0, d.vPrev, 0, 1);
    d.arena.dispose();
    Object.assign(d, { arena, k, v, kPrev, vPrev });
  }
}

/** a followed by b, in a new array. */
function appended(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
