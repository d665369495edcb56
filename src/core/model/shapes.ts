import { FormatError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import type { ModelConfig, Version } from "./model.js";

/* Tensor names and shapes as the version modules read and describe them. */

/** Names and shapes of a checkpoint's tensors, as detection and config inference read them. */
export interface TensorShapes {
  readonly source: string;
  has(name: string): boolean;
  /** The shape of a tensor that must exist (a clear error names it when it does not). */
  shape(name: string): readonly number[];
  names(): Iterable<string>;
}

/** One tensor of a version's layout: its official name and shape. */
export interface TensorLayout {
  readonly name: string;
  readonly shape: readonly number[];
}

/** A checkpoint's names and shapes as TensorShapes. */
export function checkpointShapes(ckpt: Checkpoint): TensorShapes {
  return {
    source: ckpt.source,
    has: (n) => ckpt.tensors.has(n),
    shape: (n) => {
      const t = ckpt.tensors.get(n);
      if (!t) throw new FormatError(ckpt.source, `missing tensor ${n}`);
      return t.shape;
    },
    names: () => ckpt.tensors.keys(),
  };
}

/** L = 1 + max i over `blocks.i.*`. */
export function countLayers(t: Pick<TensorShapes, "names">): number {
  let L = 0;
  for (const name of t.names()) {
    const m = /^blocks\.(\d+)\./.exec(name);
    if (m) L = Math.max(L, Number(m[1]) + 1);
  }
  return L;
}

/** Head size of every released v5/v6/v7 model, and the default of new ones. */
export const DEFAULT_HEAD_SIZE = 64;

/** Sizes of a model with heads; `headTensor`'s first axis is the number of heads. */
export function headedConfig(t: TensorShapes, version: Version, headTensor: string, dimAtt?: number): ModelConfig {
  const [V, C] = t.shape("emb.weight");
  const A = dimAtt ?? t.shape("blocks.0.att.key.weight")[0];
  const H = t.shape(headTensor)[0];
  if (!(H > 0) || A % H !== 0) {
    throw new FormatError(t.source, `${headTensor} has ${H} heads, which do not divide dim_att ${A}`);
  }
  return {
    version, nLayer: countLayers(t), nEmbd: C, vocabSize: V, dimAtt: A,
    dimFfn: t.shape("blocks.0.ffn.key.weight")[0],
    nHead: H, headSize: A / H,
  };
}

/**
 * The tensors every version has, in the official state-dict order: emb, then per layer ln1, ln2
 * (layer 0 also ln0) followed by `layer(i)`, then ln_out and head.
 */
export function skeletonLayout(cfg: ModelConfig, layer: (i: number) => TensorLayout[]): TensorLayout[] {
  const { nLayer: L, nEmbd: C, vocabSize: V } = cfg;
  const t = (name: string, shape: readonly number[]): TensorLayout => ({ name, shape });
  const out: TensorLayout[] = [t("emb.weight", [V, C])];
  for (let i = 0; i < L; i++) {
    const b = `blocks.${i}.`;
    out.push(t(b + "ln1.weight", [C]), t(b + "ln1.bias", [C]), t(b + "ln2.weight", [C]), t(b + "ln2.bias", [C]));
    if (i === 0) out.push(t(b + "ln0.weight", [C]), t(b + "ln0.bias", [C]));
    out.push(...layer(i));
  }
  out.push(t("ln_out.weight", [C]), t("ln_out.bias", [C]), t("head.weight", [V, C]));
  return out;
}
