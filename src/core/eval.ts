// Language-model evaluation: perplexity / bits per byte over documents, the "uncheatable eval"
// compression measure, and LAMBADA last-word accuracy. Browser-safe (no Node imports).
//
// Every method runs the model in its parallel form, one `forward(piece, state, { allLogits: true })`
// per piece, and turns each logits row into a log-probability with a float64 log-softmax: the
// model computes in float32, but summing thousands of per-token log-probabilities (and exp/log of
// values near the largest logit) in float32 would lose digits the figures are reported with.
import type { Model } from "./model/model.js";
import type { State } from "./model/state.js";
import type { Tokenizer } from "./tokenizer/types.js";
import { yieldToEventLoop } from "./yield.js";

/**
 * RWKV's document separator: the official training data puts token 0 (`<|endoftext|>` in the 20B
 * vocabulary, unused in World) between documents, and the official evaluation code feeds
 * `[0] + encode(text)` so that the first token of the text is predicted too. In a byte-level
 * (vocab 256) model token 0 is the NUL byte, which also never occurs in ordinary text, so the
 * same convention applies unchanged.
 */
export const DOCUMENT_SEPARATOR = 0;

/** Tokens per forward call unless told otherwise (also the upstream uncheatable-eval chunk). */
export const DEFAULT_PIECE_LEN = 1024;

const LN2 = Math.LN2;
const encoder = new TextEncoder();

export interface EvalCallbacks {
  /** Called after every forward with tokens fed so far and the total to feed. */
  readonly onProgress?: (done: number, total: number) => void;
  /**
   * Cancels between forward calls (the signal's reason is thrown). The evaluation yields to the
   * event loop between calls, so timers and signal handlers which abort it get a chance to run.
   */
  readonly signal?: AbortSignal;
}

export interface DocumentsOptions extends EvalCallbacks {
  /** Tokens per forward call (default 1024); the state is carried between pieces, which is exact for an RNN. */
  readonly pieceLen?: number;
  /** Carry the state from one document into the next (a stream of documents) instead of starting each fresh. */
  readonly carryState?: boolean;
}

export interface UncheatableOptions extends EvalCallbacks {
  /** Tokens per independently scored piece (default 1024). */
  readonly pieceLen?: number;
}

export interface DocumentScore {
  /** Tokens of the text (without any separator). */
  readonly inputTokens: number;
  /** Tokens whose probability was scored. */
  readonly scoredTokens: number;
  /** UTF-8 bytes of the text. */
  readonly bytes: number;
  /** Unicode code points of the text (Python's len(str)). */
  readonly chars: number;
  /** Sum of -ln p over the scored tokens (nats). */
  readonly nll: number;
}

export interface PerplexityResult {
  readonly documents: number;
  readonly inputTokens: number;
  readonly scoredTokens: number;
  readonly bytes: number;
  readonly chars: number;
  /** Sum of -ln p over all scored tokens (nats). */
  readonly sumNll: number;
  /** sumNll / scoredTokens (nats per token; tokenizer-dependent). */
  readonly meanNll: number;
  /** exp(meanNll). */
  readonly perplexity: number;
  /** sumNll / ln 2 / bytes. */
  readonly bitsPerByte: number;
  /** sumNll / ln 2 / chars. */
  readonly bitsPerChar: number;
  /** Mean over documents of each document's sum NLL (the uncheatable eval's "neg_log_prob_sum"). */
  readonly meanDocumentNll: number;
  readonly perDocument: readonly DocumentScore[];
}

export interface LambadaItemScore {
  /** Sum of ln p of the target tokens. */
  readonly logProb: number;
  /** Every target token was the greedy (argmax) choice. */
  readonly hit: boolean;
  readonly contextTokens: number;
  readonly targetTokens: number;
}

export interface LambadaResult {
  readonly items: number;
  readonly hits: number;
  readonly accuracy: number;
  /** Sum over items of the target's ln p. */
  readonly sumLogProb: number;
  /** exp(-sumLogProb / items): per item (per word), as the official benchmark reports it, not per token. */
  readonly perplexity: number;
  readonly targetTokens: number;
  readonly perItem: readonly LambadaItemScore[];
}

/** ln p(target) from one logits row, in float64, and the row's argmax (first on ties, like torch.argmax). */
export function logProbAt(logits: Float32Array, offset: number, vocab: number, target: number): { logProb: number; argmax: number } {
  let max = -Infinity, argmax = 0;
  for (let i = 0; i < vocab; i++) {
    const v = logits[offset + i];
    if (v > max) { max = v; argmax = i; }
  }
  let sum = 0;
  for (let i = 0; i < vocab; i++) sum += Math.exp(logits[offset + i] - max);
  return { logProb: logits[offset + target] - max - Math.log(sum), argmax };
}

/** Unicode code points (a surrogate pair is one; a lone surrogate counts as one, as in Python). */
export function countCodePoints(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const pair = c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
    if (pair) i++;
    n++;
  }
  return n;
}

function checkPieceLen(pieceLen: number): number {
  if (!Number.isSafeInteger(pieceLen) || pieceLen < 1) throw new RangeError(`pieceLen must be a positive integer, got ${pieceLen}`);
  return pieceLen;
}

/** Runs before every forward: a turn of the event loop (a server stays responsive, cancellation can arrive), then the cancellation point. */
async function checkpoint(signal: AbortSignal | undefined): Promise<void> {
  signal?.throwIfAborted();
  await yieldToEventLoop();
  signal?.throwIfAborted();
}

/** Rows of an allLogits result: (T, V) with V taken from the result so padded vocabularies work. */
function rowWidth(logits: Float32Array, rows: number): number {
  return logits.length / rows;
}

function summarize(perDocument: DocumentScore[]): PerplexityResult {
  let inputTokens = 0, scoredTokens = 0, bytes = 0, chars = 0, sumNll = 0;
  for (const d of perDocument) {
    inputTokens += d.inputTokens; scoredTokens += d.scoredTokens; bytes += d.bytes; chars += d.chars; sumNll += d.nll;
  }
  const meanNll = sumNll / scoredTokens;
  return {
    documents: perDocument.length, inputTokens, scoredTokens, bytes, chars, sumNll, meanNll,
    perplexity: Math.exp(meanNll),
    bitsPerByte: sumNll / LN2 / bytes,
    bitsPerChar: sumNll / LN2 / chars,
    meanDocumentNll: sumNll / perDocument.length,
    perDocument,
  };
}

/**
 * Perplexity and bits per byte / character of whole documents: each is fed as
 * `[0] + encode(text)` (see DOCUMENT_SEPARATOR) so every token of the text is scored, in pieces of
 * `pieceLen` tokens with the state carried between pieces — for an RNN that is exactly the same as
 * one forward over the whole document, at bounded memory (pieceLen x vocab logits). A document that
 * encodes to no tokens is recorded with zeros and not fed at all.
 */
export async function evaluateDocuments(model: Model, tokenizer: Tokenizer, docs: readonly string[], options: DocumentsOptions = {}): Promise<PerplexityResult> {
  const pieceLen = checkPieceLen(options.pieceLen ?? DEFAULT_PIECE_LEN);
  const encoded = docs.map((d) => tokenizer.encode(d));
  const total = encoded.reduce((n, ids) => n + (ids.length > 0 ? ids.length + 1 : 0), 0);
  let done = 0;
  let state: State = model.initState();
  const perDocument: DocumentScore[] = [];
  for (let d = 0; d < docs.length; d++) {
    const ids = encoded[d];
    let nll = 0;
    if (ids.length > 0) {
      if (!options.carryState && d > 0) state = model.initState();
      const seq = [DOCUMENT_SEPARATOR, ...ids];
      for (let begin = 0; begin < seq.length; begin += pieceLen) {
        await checkpoint(options.signal);
        const piece = seq.slice(begin, begin + pieceLen);
        const logits = await model.forward(piece, state, { allLogits: true }); // (T, V)
        const V = rowWidth(logits, piece.length);
        // Row r predicts seq[begin + r + 1]; the last row of a piece predicts the first token of
        // the next one, so piece boundaries lose nothing.
        for (let r = 0; r < piece.length && begin + r + 1 < seq.length; r++) {
          nll -= logProbAt(logits, r * V, V, seq[begin + r + 1]).logProb;
        }
        done += piece.length;
        options.onProgress?.(done, total);
      }
    }
    perDocument.push({ inputTokens: ids.length, scoredTokens: ids.length, bytes: encoder.encode(docs[d]).length, chars: countCodePoints(docs[d]), nll });
  }
  return summarize(perDocument);
}

/**
 * The "uncheatable eval" compression measure as our issue states it (and as the original
 * Jellyfish042/uncheatable_eval `eval_model.py` did): each document is tokenized and cut into
 * `pieceLen`-token pieces (default 1024); each piece is run from a fresh state and scored without
 * its first token (nothing predicts it). Figures: per-document sum NLL, bits per character
 * (sum NLL / ln 2 / code points of the whole documents) and bits per byte.
 *
 * Differences from the current upstream evaluator.py: it feeds `[0] + piece` so that every token,
 * including each piece's first, is scored; its default piece is 4000 tokens; and it computes the
 * cross-entropy in bfloat16 on fp16 CUDA logits. The figures are therefore not directly comparable:
 * the unscored first token of each piece lowers ours, the shorter pieces (less context) raise them,
 * and ours carry no bfloat16 rounding. Like upstream, the byte and character counts are those of
 * the whole documents, unscored tokens included.
 */
export async function evaluateUncheatable(model: Model, tokenizer: Tokenizer, docs: readonly string[], options: UncheatableOptions = {}): Promise<PerplexityResult> {
  const pieceLen = checkPieceLen(options.pieceLen ?? DEFAULT_PIECE_LEN);
  // A one-token piece has nothing to score: such a piece length would score nothing at all.
  if (pieceLen < 2) throw new RangeError(`pieceLen must be at least 2 for the uncheatable eval, got ${pieceLen}`);
  const encoded = docs.map((d) => tokenizer.encode(d));
  // A trailing one-token piece scores nothing and is not run.
  const fed = (n: number) => n - (n % pieceLen === 1 ? 1 : 0);
  const total = encoded.reduce((n, ids) => n + fed(ids.length), 0);
  let done = 0;
  const perDocument: DocumentScore[] = [];
  for (let d = 0; d < docs.length; d++) {
    const ids = encoded[d];
    let nll = 0, scored = 0;
    for (let begin = 0; begin < ids.length; begin += pieceLen) {
      const piece = ids.slice(begin, begin + pieceLen);
      if (piece.length < 2) continue;
      await checkpoint(options.signal);
      const logits = await model.forward(piece, model.initState(), { allLogits: true }); // (T, V)
      const V = rowWidth(logits, piece.length);
      for (let r = 0; r + 1 < piece.length; r++) nll -= logProbAt(logits, r * V, V, piece[r + 1]).logProb;
      scored += piece.length - 1;
      done += piece.length;
      options.onProgress?.(done, total);
    }
    perDocument.push({ inputTokens: ids.length, scoredTokens: scored, bytes: encoder.encode(docs[d]).length, chars: countCodePoints(docs[d]), nll });
  }
  return summarize(perDocument);
}

/** LAMBADA's split: context = text before the last space, target = " " + the last word. */
export function splitLambada(text: string): { context: string; target: string } {
  const cut = text.lastIndexOf(" ");
  // Python's ' '.join(text.split(' ')[:-1]) and ' ' + text.split(' ')[-1], which the official code uses.
  return cut < 0 ? { context: "", target: " " + text } : { context: text.slice(0, cut), target: text.slice(cut) };
}

/**
 * LAMBADA as the official RWKV benchmark (ChatRWKV / RWKV-LM) scores it: src = [0] + encode(context),
 * dst = encode(" " + word); one forward over src + dst from a fresh state; the item's log-probability
 * is the sum of ln p(dst[i]) from the row before each target token, and it is a hit only when every
 * target token is also the row's argmax. Perplexity is exp(-sum log p / items).
 */
export async function evaluateLambada(model: Model, tokenizer: Tokenizer, items: readonly string[], options: EvalCallbacks = {}): Promise<LambadaResult> {
  const encoded = items.map((text) => {
    const { context, target } = splitLambada(text);
    return { src: [DOCUMENT_SEPARATOR, ...tokenizer.encode(context)], dst: tokenizer.encode(target) };
  });
  const total = encoded.reduce((n, e) => n + e.src.length + e.dst.length, 0);
  let done = 0, hits = 0, sumLogProb = 0, targetTokens = 0;
  const perItem: LambadaItemScore[] = [];
  for (const { src, dst } of encoded) {
    await checkpoint(options.signal);
    const seq = [...src, ...dst];
    const logits = await model.forward(seq, model.initState(), { allLogits: true }); // (T, V)
    const V = rowWidth(logits, seq.length);
    let logProb = 0, hit = true;
    for (let i = 0; i < dst.length; i++) {
      const r = logProbAt(logits, (src.length - 1 + i) * V, V, dst[i]);
      logProb += r.logProb;
      if (r.argmax !== dst[i]) hit = false;
    }
    if (hit) hits++;
    sumLogProb += logProb;
    targetTokens += dst.length;
    perItem.push({ logProb, hit, contextTokens: src.length - 1, targetTokens: dst.length });
    done += seq.length;
    options.onProgress?.(done, total);
  }
  return {
    items: items.length, hits, accuracy: hits / items.length, sumLogProb,
    perplexity: Math.exp(-sumLogProb / items.length), targetTokens, perItem,
  };
}
