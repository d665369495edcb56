import { RwkvInputError } from "./errors.js";
import type { Model } from "./model/model.js";
import type { State } from "./model/state.js";
import type { PrefixCache } from "./prefix-cache.js";
import { logProb, type PenaltyOptions, Penalties, Rng, sampleLogits, type SamplerOptions, validateSamplerOptions } from "./sampling.js";
import { StreamDecoder } from "./tokenizer/stream.js";
import type { Tokenizer } from "./tokenizer/types.js";

/*
 * Text generation: prefill the prompt with the parallel form in chunks, then sample one token at a
 * time with the recurrent form, streaming UTF-8-safe text. Deterministic for a given seed.
 */

/** The official PIPELINE's prefill chunk: long prompts run as forward() calls of this many tokens. */
export const DEFAULT_CHUNK_LEN = 256;
/** Give the event loop a turn this often so an AbortSignal (Ctrl-C, a closed socket) is seen. */
const YIELD_EVERY_MS = 15;

export interface GenerateOptions {
  readonly maxTokens?: number; // default 256
  readonly sampler?: SamplerOptions;
  readonly penalties?: PenaltyOptions;
  /** Seed of a fresh RNG (default 0). Ignored when `rng` is given. */
  readonly seed?: number;
  /** Continue an existing random stream (e.g. one restored from a state file); advanced in place. */
  readonly rng?: Rng;
  /** Continue existing penalty counts (advanced in place); else fresh ones from `penalties`. */
  readonly penaltyState?: Penalties;
  /** Generation ends before the first occurrence of any of these strings (not emitted). */
  readonly stop?: readonly string[];
  /** Generation ends at these tokens (not emitted, not fed to the model). */
  readonly stopTokens?: readonly number[];
  readonly signal?: AbortSignal;
  readonly chunkLen?: number;
}

export interface GenerateInput {
  /** Text or token ids to process before generating; may be empty when `logits` are given. */
  readonly prompt: string | readonly number[];
  /** Start from this state (it is not modified; the result carries the new one). Default: initial state. */
  readonly state?: State;
  /** Next-token logits belonging to `state` (required to generate with an empty prompt). */
  readonly logits?: Float32Array;
  /** Only used when starting from the initial state: resume from the longest cached prefix. */
  readonly cache?: PrefixCache;
}

export interface GenerationPiece {
  /** Text completed by this token (may be empty while a UTF-8 character or stop string is pending). */
  readonly text: string;
  /** The sampled token, or null for text released at the end without a new token. */
  readonly token: number | null;
  /** log p(token) under the model's distribution (before penalties and sampling filters). */
  readonly logprob: number | null;
}

export type FinishReason = "length" | "stop" | "cancelled";

export interface GenerationResult {
  readonly text: string;
  readonly tokens: number[];
  readonly finishReason: FinishReason;
  readonly promptTokens: number;
  /** Prompt tokens actually run through the model (fewer when the prefix cache had the rest). */
  readonly promptTokensProcessed: number;
  /** The state after the prompt and every generated token that was fed back, and its next-token logits. */
  readonly state: State;
  /** Generated tokens not yet fed to `state` (the last one, when generation ended right after sampling it). */
  readonly unfed: number[];
  readonly logits: Float32Array;
  readonly rng: Rng;
  readonly penalties: Penalties;
}

/** Index of the largest logit (greedy decoding); the first one on ties, like torch.argmax. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/**
 * Processes `tokens` from `state` (advanced in place) in chunks with the parallel form; returns
 * the last logits. Yields to the event loop between chunks and honours `signal`.
 */
export async function prefill(model: Model, tokens: readonly number[], state: State, chunkLen = DEFAULT_CHUNK_LEN, signal?: AbortSignal): Promise<Float32Array | null> {
  let logits: Float32Array | null = null;
  for (let i = 0; i < tokens.length; i += chunkLen) {
    if (signal?.aborted) return null;
    logits = model.forward(tokens.slice(i, i + chunkLen), state);
    if (i + chunkLen < tokens.length) await yieldToEventLoop();
  }
  return logits;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

export async function* generate(model: Model, tokenizer: Tokenizer, input: GenerateInput, options: GenerateOptions = {}): AsyncGenerator<GenerationPiece, GenerationResult, void> {
  const maxTokens = options.maxTokens ?? 256;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 0) throw new RwkvInputError("max_tokens", `must be a non-negative integer, got ${maxTokens}`);
  const chunkLen = options.chunkLen ?? DEFAULT_CHUNK_LEN;
  if (!Number.isSafeInteger(chunkLen) || chunkLen <= 0) throw new RwkvInputError("chunk_len", `must be a positive integer, got ${chunkLen}`);
  validateSamplerOptions(options.sampler ?? {});
  const stops = (options.stop ?? []).filter((s) => s.length > 0);
  const stopTokens = new Set(options.stopTokens ?? []);
  const prompt = typeof input.prompt === "string" ? tokenizer.encode(input.prompt) : [...input.prompt];

  // Start: a given state, or the initial state advanced by the longest cached prefix.
  let state: State;
  let logits: Float32Array | null = input.logits ? input.logits.slice() : null;
  let todo = prompt;
  if (input.state) {
    state = input.state.clone();
  } else {
    const hit = input.cache?.lookup(prompt) ?? null;
    state = hit ? hit.state : model.initState();
    if (hit) { logits = hit.logits; todo = prompt.slice(hit.length); }
  }
  const processed = todo.length;
  if (todo.length > 0) {
    logits = await prefill(model, todo, state, chunkLen, options.signal);
    if (logits && !input.state) input.cache?.store(prompt, state, logits);
  }
  const rng = options.rng ?? new Rng(options.seed ?? 0);
  const penalties = options.penaltyState ?? new Penalties(options.penalties, (ids) => tokenizer.decode(ids));
  const finish = (finishReason: FinishReason, text: string, tokens: number[], unfed: number[] = []): GenerationResult => ({
    text, tokens, finishReason, promptTokens: prompt.length, promptTokensProcessed: processed,
    state, unfed, logits: logits ?? new Float32Array(model.config.vocabSize), rng, penalties,
  });
  if (logits === null) {
    if (options.signal?.aborted) return finish("cancelled", "", []);
    throw new RwkvInputError("prompt", "is empty and no next-token logits were given");
  }

  // Padded vocabularies have ids no tokenizer can decode: never sample them.
  const choosable = Math.min(tokenizer.vocabSize, model.config.vocabSize);
  const decoder = new StreamDecoder(tokenizer);
  const generated: number[] = [];
  const fed = [...prompt]; // tokens behind `state`, for the prefix cache
  let text = ""; // everything decoded so far
  let emitted = 0; // how much of `text` has been handed out
  let lastYield = Date.now();
  const done = (reason: FinishReason, end: number): GenerationResult => {
    if (!input.state && input.cache && fed.length > prompt.length) input.cache.store(fed, state, logits!);
    return finish(reason, text.slice(0, end), generated, generated.slice(fed.length - prompt.length));
  };

  for (let i = 0; i < maxTokens; i++) {
    if (options.signal?.aborted) return done("cancelled", emitted);
    const raw = logits.subarray(0, choosable);
    const work = raw.slice();
    penalties.apply(work);
    const token = sampleLogits(work, options.sampler, rng);
    if (stopTokens.has(token)) {
      text += decoder.flush();
      if (emitted < text.length) yield { text: text.slice(emitted), token: null, logprob: null };
      return done("stop", text.length);
    }
    const logprob = logProb(raw, token);
    penalties.record(token);
    generated.push(token);
    const last = i + 1 === maxTokens;
    text += decoder.push(token) + (last ? decoder.flush() : "");
    const hit = firstStop(text, stops, emitted);
    if (hit >= 0) {
      yield { text: text.slice(emitted, hit), token, logprob };
      return done("stop", hit);
    }
    // Hold back a tail that may turn out to be the start of a stop string.
    const safe = last ? text.length : text.length - pendingStopPrefix(text, stops, emitted);
    yield { text: text.slice(emitted, safe), token, logprob };
    emitted = safe;
    if (!last) {
      logits = model.step(token, state);
      fed.push(token);
      if (Date.now() - lastYield > YIELD_EVERY_MS) { await yieldToEventLoop(); lastYield = Date.now(); }
    }
  }
  return done("length", text.length);
}

/** Index in `text` where the earliest stop string starts (searching from `from` minus the longest stop), or -1. */
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
