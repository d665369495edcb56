import { RwkvInputError } from "./errors.js";
import { logProb, type PenaltyOptions, Penalties, Rng, sampleLogits, type SamplerOptions, validateSamplerOptions } from "./sampling.js";
import type { GrammarMatcher, TokenGrammar } from "./grammar/matcher.js";
import { StreamDecoder } from "./tokenizer/stream.js";
import type { Tokenizer } from "./tokenizer/types.js";

/*
 * One sequence's token-by-token decoding, independent of how the model is run: penalties, sampling,
 * UTF-8-safe text, stop strings (held back while they may still be forming) and stop tokens.
 * generate() drives one of these with step(); a batched server drives many with stepBatch().
 */

export type FinishReason = "length" | "stop" | "cancelled";

/** Emitted characters moved out of the searched text at a time: large enough to move rarely, small enough to slice cheaply. */
const SETTLE_CHUNK = 256;

/** One alternative of top_logprobs. */
export interface TokenLogprob { readonly token: number; readonly logprob: number }

export interface DecodingOptions {
  readonly maxTokens?: number; // default 256
  readonly sampler?: SamplerOptions;
  readonly penalties?: PenaltyOptions;
  /** Seed of a fresh RNG (default 0). Ignored when `rng` is given. */
  readonly seed?: number;
  /** Continue an existing random stream (advanced in place). */
  readonly rng?: Rng;
  /** Continue existing penalty counts (advanced in place); else fresh ones from `penalties`. */
  readonly penaltyState?: Penalties;
  /** Generation ends before the first occurrence of any of these strings (not emitted). */
  readonly stop?: readonly string[];
  /** Generation ends at these tokens (not emitted, not fed to the model). */
  readonly stopTokens?: readonly number[];
  /**
   * Constrained decoding: only tokens the grammar allows are sampled (a stop token only once the
   * text is a complete sentence), and generation stops when nothing may follow. Build one with
   * compileConstraint (src/core/grammar).
   */
  readonly grammar?: TokenGrammar;
  /** Also report the this many most likely tokens of each step with their logprobs (0 = off). */
  readonly topLogprobs?: number;
}

export interface DecodeStep {
  /** The sampled token, or null when a stop token ended generation. */
  readonly token: number | null;
  /** log p(token) under the model's distribution (before penalties and sampling filters). */
  readonly logprob: number | null;
  /** The most likely tokens of this step, when DecodingOptions.topLogprobs > 0 (else empty). */
  readonly top: readonly TokenLogprob[];
  /** Text to hand out now (may be empty while a character or stop string is pending). */
  readonly text: string;
  /** Set when this step ended generation. */
  readonly finish: FinishReason | null;
  /** Whether `token` must be fed to the model before the next step (false once finished). */
  readonly feed: boolean;
}

export class Decoding {
  readonly rng: Rng;
  readonly penalties: Penalties;
  readonly generated: number[] = [];
  private readonly maxTokens: number;
  private readonly stops: string[];
  private readonly stopTokens: Set<number>;
  private readonly decoder: StreamDecoder;
  /**
   * Everything decoded so far is settled.join("") + text; `emitted` of it (counted from the start)
   * has been handed out. Only `text` is sliced and searched per token: it keeps the unemitted part
   * and the last `keepEmitted` emitted characters (a stop string's start may lie there), and the
   * rest moves to `settled` in pieces, so a token costs the same at the 100,000th as at the first
   * (slicing one ever-growing string copies all of it every token).
   */
  private readonly settled: string[] = [];
  private settledLength = 0;
  private text = "";
  private emitted = 0;
  private readonly keepEmitted: number;
  private finished: FinishReason | null = null;
  private readonly matcher: GrammarMatcher | null;

  /** `choosable`: ids at or above it are never sampled (padded vocabularies have ids no tokenizer decodes). */
  constructor(tokenizer: Tokenizer, private readonly choosable: number, private readonly options: DecodingOptions = {}) {
    this.maxTokens = options.maxTokens ?? 256;
    if (!Number.isSafeInteger(this.maxTokens) || this.maxTokens < 0) throw new RwkvInputError("max_tokens", `must be a non-negative integer, got ${this.maxTokens}`);
    validateSamplerOptions(options.sampler ?? {});
    this.stops = (options.stop ?? []).filter((s) => s.length > 0);
    this.keepEmitted = Math.max(0, ...this.stops.map((s) => s.length));
    this.stopTokens = new Set(options.stopTokens ?? []);
    this.rng = options.rng ?? new Rng(options.seed ?? 0);
    this.penalties = options.penaltyState ?? new Penalties(options.penalties, (ids) => tokenizer.decode(ids));
    this.decoder = new StreamDecoder(tokenizer);
    const k = options.topLogprobs ?? 0;
    if (!Number.isSafeInteger(k) || k < 0) throw new RwkvInputError("top_logprobs", `must be an integer >= 0, got ${k}`);
    if (options.grammar && options.grammar.choosable !== choosable) {
      throw new RwkvInputError("grammar", `was compiled for ${options.grammar.choosable} tokens, this model samples from ${choosable}`);
    }
    this.matcher = options.grammar?.matcher() ?? null;
    if (this.maxTokens === 0) this.finished = "length";
  }

  get finishReason(): FinishReason | null { return this.finished; }
  /** The final text: everything handed out, minus a stop string and what followed it. */
  get output(): string {
    if (this.settled.length > 1) this.settled.splice(0, this.settled.length, this.settled.join(""));
    return (this.settled[0] ?? "") + this.text.slice(0, this.emitted - this.settledLength);
  }

  /** Samples the next token from `logits` (the model's output after everything fed so far). */
  next(logits: Float32Array): DecodeStep {
    if (this.finished) throw new Error("decoding already finished");
    const raw = logits.subarray(0, this.choosable);
    const work = raw.slice();
    this.penalties.apply(work);
    if (this.matcher) {
      // The text is complete and nothing may follow: end as a stop token would.
      if (this.matcher.finished) {
        this.text += this.decoder.flush();
        return this.end("stop", null, null, this.end0());
      }
      if (!this.constrain(work)) throw new RwkvInputError("grammar", "no token of the vocabulary can continue the text here");
    }
    const token = sampleLogits(work, this.options.sampler, this.rng);
    if (this.stopTokens.has(token)) {
      this.text += this.decoder.flush();
      return this.end("stop", null, null, this.end0());
    }
    const logprob = logProb(raw, token);
    const top = this.options.topLogprobs ? topLogprobs(raw, this.options.topLogprobs) : [];
    this.matcher?.accept(token);
    this.penalties.record(token);
    this.generated.push(token);
    const last = this.generated.length >= this.maxTokens;
    this.text += this.decoder.push(token) + (last ? this.decoder.flush() : "");
    const base = this.settledLength;
    const hit = firstStop(this.text, this.stops, this.emitted - base);
    if (hit >= 0) return this.end("stop", token, logprob, base + hit, top);
    if (last) return this.end("length", token, logprob, this.end0(), top);
    // Hold back a tail that may turn out to be the start of a stop string.
    const safe = this.text.length - pendingStopPrefix(this.text, this.stops, this.emitted - base);
    const text = this.text.slice(this.emitted - base, safe);
    this.emitted = base + safe;
    this.settle();
    return { token, logprob, top, text, finish: null, feed: true };
  }

  /** Where the decoded text ends, counted from its start. */
  private end0(): number {
    return this.settledLength + this.text.length;
  }

  /** Moves emitted text that no stop string can reach any more from `text` to `settled`. */
  private settle(): void {
    const drop = this.emitted - this.settledLength - this.keepEmitted;
    if (drop < SETTLE_CHUNK) return;
    this.settled.push(this.text.slice(0, drop));
    this.text = this.text.slice(drop);
    this.settledLength += drop;
  }

  /** Sets the logits of tokens the grammar forbids to -Infinity; false when none is left. */
  private constrain(work: Float32Array): boolean {
    const mask = this.matcher!.allowed();
    const stopOk = this.matcher!.accepting;
    let any = false;
    for (let i = 0; i < work.length; i++) {
      if (((mask[i >>> 5] >>> (i & 31)) & 1) === 1 || (stopOk && this.stopTokens.has(i))) { if (work[i] !== -Infinity) any = true; } else work[i] = -Infinity;
    }
    return any;
  }

  /** Ends generation from outside (client gone, Ctrl-C); returns nothing more to emit. */
  cancel(): void {
    if (!this.finished) this.finished = "cancelled";
  }

  /** `upTo`: where the output ends, counted from the start of the text (at least settledLength). */
  private end(reason: FinishReason, token: number | null, logprob: number | null, upTo: number, top: readonly TokenLogprob[] = []): DecodeStep {
    const base = this.settledLength;
    const text = this.text.slice(this.emitted - base, upTo - base);
    this.emitted = upTo;
    this.finished = reason;
    return { token, logprob, top, text, finish: reason, feed: false };
  }
}

/** Index in `text` where the earliest stop string starts (searching near the unemitted part), or -1. */
function firstStop(text: string, stops: readonly string[], from: number): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s, Math.max(0, from - s.length + 1));
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest suffix of text[from..] that is a proper prefix of some stop string. */
function pendingStopPrefix(text: string, stops: readonly string[], from: number): number {
  let keep = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length - from); n > keep; n--) {
      if (text.endsWith(s.slice(0, n))) { keep = n; break; }
    }
  }
  return keep;
}

/** The k largest log-softmax values of `logits` (double precision), largest first, ties by lower id. */
export function topLogprobs(logits: Float32Array, k: number): TokenLogprob[] {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const best: number[] = []; // ids, kept sorted by logit descending
  for (let i = 0; i < logits.length; i++) {
    if (best.length === k && logits[i] <= logits[best[k - 1]]) continue;
    let j = best.length < k ? best.length : k - 1;
    best[j] = i;
    while (j > 0 && logits[best[j - 1]] < logits[i]) { best[j] = best[j - 1]; best[j - 1] = i; j--; }
  }
  return best.map((token) => ({ token, logprob: logits[token] - max - Math.log(sum) }));
}
