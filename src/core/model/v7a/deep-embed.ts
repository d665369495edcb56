import type { Backend, Matrix, Tensor, TensorKernels } from "../../backend/backend.js";
import { decodeWeightRow } from "../../backend/weight-rows.js";
import { type Block, lnZeroEmbedding, type ModelConfig } from "../model.js";
import { v7FfnKey } from "../v7/infer.js";
import type { Weights } from "../weights.js";

/*
 * DeepEmbed (RWKV-7a, 7b): the channel mix's hidden layer gated per token by a learned 32x32 matrix
 * read from a per-layer table indexed by the token id. Letters: R rows (B·T), C = n_embd, F = dim_ffn,
 * V vocabulary, E = 32 the gate width (the table rows are E·E = 1024 wide).
 *
 *   k = relu²(W_k (xx + d ⊙ x_k))                       (R, F), d the token shift as in RWKV-7
 *   s = (xx s1) S[token]                                  (R, E), S[token] (E, E) — from the un-shifted xx
 *   out = W_v (k ⊙ (s s2 + s0))
 *
 * At load, S = s_emb + LN0(emb) @ s_emb_xᵀ (the official code folds the embedding's contribution in
 * once); the table stays in a compact type on the JavaScript side and only the token's row is read.
 */

/** The gate width the official files hard-code (s_emb rows are GATE·GATE). */
export const GATE = 32;

/** Rows `ids` of a per-token table written into t (ids.length, table.cols); `buf` (cols) a scratch row. */
export function gatherRows(K: TensorKernels, t: Tensor, table: Matrix, ids: readonly number[] | Float32Array, buf: Float32Array): void {
  const W = table.cols;
  for (let r = 0; r < ids.length; r++) K.write(t, r * W, decodeWeightRow(table, ids[r], buf), 0, W);
}

/**
 * A DeepEmbed-style table `name` (V, W) with LN0(emb) @ `foldName`ᵀ added at load (the official
 * "merge emb residual"): `foldName` is (W, C).
 */
export function foldedTable(w: Weights, name: string, foldName: string, cfg: ModelConfig, be: Backend): Matrix {
  const { vocabSize: V, nEmbd: C } = cfg;
  const W = w.shape(name)[1];
  const emb = lnZeroEmbedding(w, be, cfg); // (V, C)
  // A product on the CPU (Backend.matmul), the matrix's only use: read for the host, so a backend
  // that keeps its adopted weights on a GPU keeps this one readable (Weights.hostLinear).
  const fold = be.matmul(emb, V, w.hostLinear(foldName, W, C)); // (V, W)
  return w.table(name, V, W, fold);
}

/** The DeepEmbed channel mix of layer i. */
export function deepEmbedChannelMix(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block["channelMix"] {
  const { nEmbd: C, dimFfn: F } = cfg;
  const K = be.tensors;
  const f = `blocks.${i}.ffn.`;
  const x_k = K.constant(w.vec(f + "x_k", C)); // (1, C)
  const key = w.linear(f + "key.weight", F, C), value = w.linear(f + "value.weight", C, F);
  const s1 = w.projection(f + "s1", C, GATE), s2 = w.projection(f + "s2", GATE, F);
  const s0 = K.constant(w.vec(f + "s0", F)); // (1, F)
  const table = foldedTable(w, f + "s_emb.weight", f + "s_emb_x.weight", cfg, be); // (V, E·E)
  const row = new Float32Array(GATE * GATE);

  return (xx, T, s, { arena: A, tokens }) => {
    const R = xx.rows;
    const k = v7FfnKey(K, A, xx, T, s, x_k, key); // (R, F)
    const ss = A.take(R, GATE); // (R, E)
    K.matmul(ss, xx, s1);
    const m = A.take(R, GATE * GATE); // (R, E·E) each row's S[token]
    gatherRows(K, m, table, tokens, row);
    const sm = A.take(R, GATE); // (R, E)
    K.rowMatVec(sm, ss, m);
    const gate = A.take(R, F); // (R, F)
    K.matmul(gate, sm, s2);
    K.addRow(gate, s0);
    K.mul(k, gate);
    const out = A.take(R, C); // (R, C)
    K.matmul(out, k, value);
    return out;
  };
}
