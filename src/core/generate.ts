import { RwkvInputError } from "./errors.js";
import type { Model } from "./model/model.js";
import type { State } from "./model/state.js";
import type { PrefixCache } from "./prefix-cache.js";
import { Decoding, type DecodingOptions, type FinishReason } from "./decoding.js";
import type { Penalties, Rng } from "./sampling.js";
import type { Tokenizer } from "./tokenizer/types.js";
import { yieldToEventLoop } from "./yield.js";

/*
 * Text generation: prefill the prompt with the parallel form in chunks, then sample one token at a
 * time with the recurrent form, streaming UTF-8-safe text. Deterministic for a given seed.
 */

/** The official PIPELINE's prefill chunk: long prompts run as forward() calls of this many tokens. */
export const DEFAULT_CHUNK_LEN = 256;

export interface GenerateOptions extends DecodingOptions {
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

export type { FinishReason } from "./decoding.js";

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
    logits = await model.forward(tokens.slice(i, i + chunkLen), state);
    if (i + chunkLen < tokens.length) await yieldToEventLoop();
  }
  return logits;
}

export async function* generate(model: Model, tokenizer: Tokenizer, input: GenerateInput, options: GenerateOptions = {}): AsyncGenerator<GenerationPiece, GenerationResult, void> {
  // Built first so bad sampling options fail before any prompt is processed.
  const dec = new Decoding(tokenizer, Math.min(tokenizer.vocabSize, model.config.vocabSize), options);
  const chunkLen = options.chunkLen ?? DEFAULT_CHUNK_LEN;
  if (!Number.isSafeInteger(chunkLen) || chunkLen <= 0) throw new RwkvInputError("chunk_len", `must be a positive integer, got ${chunkLen}`);
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
  const fed = [...prompt]; // tokens behind `state`, for the prefix cache
  const done = (finishReason: FinishReason): GenerationResult => {
    if (!input.state && input.cache && logits && fed.length > prompt.length) input.cache.store(fed, state, logits);
    return {
      text: dec.output, tokens: dec.generated, finishReason, promptTokens: prompt.length, promptTokensProcessed: processed,
      state, unfed: dec.generated.slice(fed.length - prompt.length), logits: logits ?? new Float32Array(model.config.vocabSize),
      rng: dec.rng, penalties: dec.penalties,
    };
  };
  if (logits === null) {
    if (options.signal?.aborted) return done("cancelled");
    throw new RwkvInputError("prompt", "is empty and no next-token logits were given");
  }
  while (!dec.finishReason) {
    if (options.signal?.aborted) { dec.cancel(); break; }
    const step = dec.next(logits);
    if (step.token !== null || step.text) yield { text: step.text, token: step.token, logprob: step.logprob };
    if (!step.feed) break;
    logits = await model.step(step.token!, state);
    fed.push(step.token!);
    // Every token, so an AbortSignal (Ctrl-C, a closed socket), timers and other requests get a turn.
    await yieldToEventLoop();
  }
  return done(dec.finishReason ?? "cancelled");
}
