import type { Backend } from "../../backend/backend.js";
import { gatherRows } from "../v7a/deep-embed.js";
import { type Architecture, type Block, type ModelConfig } from "../model.js";
import { rwkv7, v7FfnKey, v7TimeMix } from "../v7/infer.js";
import type { TensorLayout } from "../shapes.js";
import { v7Successor } from "../v7/index.js";
import type { VersionModule } from "../versions.js";
import type { Weights } from "../weights.js";

/*
 * RWKV-8 "Heron" rc00 (../shared/reference/rwkv-lm/rwkv_v8_rc00_demo.py): the RWKV-7 time mix and
 * state; the channel mix's output scaled per channel by the token's row of a per-layer table.
 * Letters: R rows (B·T), C = n_embd, F = dim_ffn, V vocabulary.
 *
 *   out = (W_v relu²(W_k (xx + d ⊙ x_k))) ⊙ enn[token]          enn (V, C)
 */

/** The RWKV-8 rc00 channel mix of layer i. */
export function ennChannelMix(w: Weights, i: number, cfg: ModelConfig, be: Backend): Block["channelMix"] {
  const { nEmbd: C, dimFfn: F, vocabSize: V } = cfg;
  const K = be.tensors;
  const f = `blocks.${i}.ffn.`;
  const x_k = K.constant(w.vec(f + "x_k", C)); // (1, C)
  const key = w.linear(f + "key.weight", F, C), value = w.linear(f + "value.weight", C, F);
  const enn = w.table(f + "enn.weight", V, C); // (V, C) read one row per token
  const row = new Float32Array(C);

  return (xx, T, s, { arena: A, tokens }) => {
    const R = xx.rows;
    const k = v7FfnKey(K, A, xx, T, s, x_k, key); // (R, F)
    const out = A.take(R, C); // (R, C)
    K.matmul(out, k, value);
    const e = A.take(R, C); // (R, C) enn[token] of each row
    gatherRows(K, e, enn, tokens, row);
    K.mul(out, e);
    return out;
  };
}

export const rwkv8: Architecture = {
  ...rwkv7,
  name: "RWKV-8 rc00",
  block(w, i, cfg, be) {
    return { timeMix: v7TimeMix(w, i, cfg, be), channelMix: ennChannelMix(w, i, cfg, be) };
  },
};

/** RWKV-8 rc00's tensor of layer i beyond RWKV-7's: the channel mix's per-token scale ffn.enn (V, C). */
export function ennLayout(i: number, cfg: ModelConfig): TensorLayout[] {
  return [{ name: `blocks.${i}.ffn.enn.weight`, shape: [cfg.vocabSize, cfg.nEmbd] }];
}

/** Random enn rows near 1 (they scale the channel mix's output). */
export function ennRandom(name: string): readonly [number, number] | undefined {
  return /\.ffn\.enn\.weight$/.test(name) ? [0.8, 1.2] : undefined;
}

export const v8: VersionModule = v7Successor({
  id: "8",
  name: "RWKV-8 rc00",
  marker: "blocks.0.ffn.enn.weight",
  architecture: rwkv8,
  extraLayer: ennLayout,
  randomOverride: ennRandom,
});
