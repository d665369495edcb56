import { RwkvInputError } from "./errors.js";
import type { Model } from "./model/model.js";
import type { Tokenizer } from "./tokenizer/types.js";

/*
 * Text embeddings from a language model's final hidden state: LN(x; ln_out), the C-wide vector the
 * head turns into logits, taken at every position of the input (run from the model's initial state)
 * and then pooled:
 *   "mean" (the default): the average over all positions, so every token counts and the vector is
 *          not dominated by what the model expects to come next;
 *   "last": the last position only, which for a recurrent model has seen the whole input.
 * The pooled vector is scaled to unit L2 length (as OpenAI's embeddings are), so a dot product is the
 * cosine similarity. Dimension: the model's width C (config.nEmbd). Each input is embedded on its own,
 * so a batch gives exactly the vectors the inputs give one by one.
 */

export type Pooling = "mean" | "last";
export const POOLINGS: readonly Pooling[] = ["mean", "last"];
export const DEFAULT_POOLING: Pooling = "mean";
/** Tokens per forward: bounds the (T, C) activations of a long input. */
export const DEFAULT_EMBED_CHUNK = 256;

export interface EmbedOptions {
  readonly pooling?: Pooling;
  /** Scale to unit length (default true). */
  readonly normalize?: boolean;
  readonly chunkLen?: number;
}

/** Accumulates the hidden rows of one input chunk by chunk and pools them. */
export class HiddenPool {
  private readonly sum: Float64Array;
  private readonly last: Float32Array;
  private rows = 0;

  constructor(private readonly width: number, private readonly pooling: Pooling = DEFAULT_POOLING) {
    this.sum = new Float64Array(width);
    this.last = new Float32Array(width);
  }

  /** Adds rows (T, C) of hidden states. */
  add(hidden: Float32Array): void {
    const C = this.width;
    const T = hidden.length / C;
    if (!Number.isInteger(T) || T === 0) throw new RwkvInputError("embedding", `hidden states of ${hidden.length} values are not rows of width ${C}`);
    // Summed in f64 so that the mean does not depend on how the input was chunked beyond f32 rounding of each row.
    for (let n = 0; n < hidden.length; n += C) for (let c = 0; c < C; c++) this.sum[c] += hidden[n + c];
    this.last.set(hidden.subarray((T - 1) * C));
    this.rows += T;
  }

  /** The pooled embedding (C), unit length when `normalize`. */
  result(normalize = true): Float32Array {
    if (this.rows === 0) throw new RwkvInputError("embedding", "no tokens to embed");
    const out = this.pooling === "last" ? Float64Array.from(this.last) : this.sum.map((v) => v / this.rows);
    if (normalize) {
      let ss = 0;
      for (const v of out) ss += v * v;
      const norm = Math.sqrt(ss);
      if (norm > 0) for (let c = 0; c < out.length; c++) out[c] /= norm;
    }
    return Float32Array.from(out);
  }
}

/** The model's hidden-state method, or a clear error for a Model that does not expose it. */
export function hiddenOf(model: Model): NonNullable<Model["hidden"]> {
  const hidden = model.hidden?.bind(model);
  if (!hidden) throw new RwkvInputError("embedding", "this model object does not expose hidden states (Model.hidden)");
  return hidden;
}

/** The embedding (C) of one token sequence, from the model's initial state. */
export async function embedTokens(model: Model, tokens: readonly number[], options: EmbedOptions = {}): Promise<Float32Array> {
  if (tokens.length === 0) throw new RwkvInputError("embedding", "the input has no tokens");
  const chunk = options.chunkLen ?? DEFAULT_EMBED_CHUNK;
  if (!Number.isSafeInteger(chunk) || chunk <= 0) throw new RwkvInputError("chunkLen", `must be a positive integer, got ${chunk}`);
  const hidden = hiddenOf(model);
  const pool = new HiddenPool(model.config.nEmbd, options.pooling);
  const state = model.initState();
  for (let i = 0; i < tokens.length; i += chunk) pool.add(await hidden(tokens.slice(i, i + chunk), state, { allLogits: true }));
  return pool.result(options.normalize ?? true);
}

/** Embeddings of several texts, each on its own (the result for a text does not depend on the others). */
export async function embedTexts(model: Model, tokenizer: Tokenizer, texts: readonly string[], options: EmbedOptions = {}): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const [i, text] of texts.entries()) {
    const tokens = tokenizer.encode(text);
    if (tokens.length === 0) throw new RwkvInputError(texts.length === 1 ? "input" : `input[${i}]`, "encodes to no tokens");
    out.push(await embedTokens(model, tokens, options));
  }
  return out;
}
