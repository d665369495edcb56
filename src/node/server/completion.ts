import { randomBytes, randomInt } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { TURN_SEPARATOR } from "../../core/chat.js";
import { type DecodeStep, Decoding } from "../../core/decoding.js";
import { RwkvInputError } from "../../core/errors.js";
import { CompiledGrammar, JSON_BASE_GBNF, jsonSchemaRules, parseGbnf, TokenGrammar } from "../../core/grammar/index.js";
import type { Model } from "../../core/model/model.js";
import type { Tokenizer } from "../../core/tokenizer/types.js";
import { type ChatNames, renderChatPrompt, replyContinuation, trimReplyStart } from "./chat-format.js";
import { ApiError, HTTP, invalidParam, sendJson } from "./errors.js";
import type { GenerationRequest, Limits } from "./params.js";
import type { Job, JobResult, JobSpec, Scheduler } from "./scheduler.js";
import { endEventStream, sendEvent, startEventStream } from "./sse.js";
import { ToolCallParser, toolGrammar } from "./tools.js";

/*
 * One /v1/completions or /v1/chat/completions request: prompt, constraint (response_format or
 * tools), n choices forked from one prefill, logprobs, streaming or not. The HTTP plumbing stays
 * in server.ts; the Scheduler runs the model.
 */

export interface CompletionContext {
  readonly model: Model;
  readonly tokenizer: Tokenizer;
  readonly modelName: string;
  readonly scheduler: Scheduler;
  /** The unmerged adapter the request named (its scheduler serves the base too). */
  readonly adapter?: string;
  readonly limits: Limits;
  readonly names: ChatNames;
  readonly stopTokens: readonly number[];
  readonly choosable: number;
  readonly grammars: GrammarCache;
  readonly log?: (line: string) => void;
}

/** OpenAI's `created` is in whole seconds. */
const MS_PER_S = 1000;
const ID_BYTES = 12;
/** Seeds drawn for requests without one: below crypto.randomInt's 2^48 range limit. */
const RANDOM_SEED_LIMIT = 2 ** 47;
/** Compiled grammars kept (their masks are the expensive part to rebuild). */
const GRAMMAR_CACHE_SIZE = 16;

/** Compiled grammars by their GBNF text, least recently used dropped first. */
export class GrammarCache {
  private readonly map = new Map<string, TokenGrammar>();
  get(text: string, subject: string, tokenizer: Tokenizer, choosable: number): TokenGrammar {
    let g = this.map.get(text);
    if (g) { this.map.delete(text); this.map.set(text, g); return g; }
    try {
      g = new TokenGrammar(new CompiledGrammar(parseGbnf(text, subject), subject), tokenizer, choosable);
    } catch (e) {
      if (e instanceof RwkvInputError) throw invalidParam(subject, e.message);
      throw e;
    }
    if (this.map.size >= GRAMMAR_CACHE_SIZE) this.map.delete(this.map.keys().next().value!);
    this.map.set(text, g);
    return g;
  }
}

/** The reply's grammar (GBNF text and the parameter it comes from), or null for free text. */
function replyGrammar(request: GenerationRequest): { text: string; subject: string } | null {
  if (request.kind !== "chat") return null;
  if (request.tools) {
    const text = toolGrammar(request.tools);
    return text ? { text, subject: "tools" } : null;
  }
  const c = request.extras.constraint;
  if (!c) return null;
  // The reply follows "Assistant:", so it may start with the space the model writes there.
  if (c.kind === "json_object") return { text: `root ::= " "? object\n${JSON_BASE_GBNF}`, subject: "response_format" };
  if (c.kind !== "json_schema") return null;
  const subject = "response_format.json_schema.schema";
  let r: { root: string; rules: string };
  try {
    r = jsonSchemaRules(c.schema, subject, "s");
  } catch (e) {
    if (e instanceof RwkvInputError) throw invalidParam(subject, e.message);
    throw e;
  }
  return { text: `root ::= " "? ${r.root}\n${r.rules}\n${JSON_BASE_GBNF}`, subject };
}

interface ChatLogprob { token: string; logprob: number; bytes: number[]; top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }> }

/** Per-choice bookkeeping while the reply streams. */
interface Choice {
  readonly index: number;
  job: Job | null;
  started: boolean;
  readonly tools: ToolCallParser | null;
  /** Logprob entries not yet sent (streaming) / all entries (non-streaming). */
  pending: DecodeStep[];
  all: DecodeStep[];
}

export async function runCompletion(ctx: CompletionContext, request: GenerationRequest, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { tokenizer } = ctx;
  const chat = request.kind === "chat";
  const source = chat ? renderChatPrompt(request.messages, ctx.names) : request.prompt;
  const promptText = typeof source === "string" ? source : null;
  const prompt = typeof source === "string" ? tokenizer.encode(source) : [...source];
  if (prompt.length === 0) throw invalidParam(chat ? "messages" : "prompt", "the prompt is empty (no tokens)");
  if (prompt.length > ctx.limits.maxPromptTokens) {
    throw invalidParam(chat ? "messages" : "prompt", `the prompt has ${prompt.length} tokens; this server accepts at most ${ctx.limits.maxPromptTokens}`,
      "context_length_exceeded");
  }
  const { n, topLogprobs, echo } = request.extras;
  const g = replyGrammar(request);
  const grammar = g ? ctx.grammars.get(g.text, g.subject, tokenizer, ctx.choosable) : undefined;
  const maxTokens = request.maxTokens ?? ctx.limits.maxTokensLimit;
  const seed = request.seed ?? randomInt(0, RANDOM_SEED_LIMIT); // no seed: a fresh random stream, as OpenAI does
  const decodings: Decoding[] = [];
  try {
    for (let i = 0; i < n; i++) {
      decodings.push(new Decoding(tokenizer, ctx.choosable, {
        maxTokens, sampler: request.sampler, penalties: request.penalties, seed: seed + i, grammar, topLogprobs: topLogprobs ?? 0,
        // Chat replies end where the model starts a new turn ("\n\n"), as in the official chat.
        stop: chat ? [TURN_SEPARATOR, ...request.stop] : request.stop, stopTokens: ctx.stopTokens,
      }));
    }
  } catch (e) {
    if (e instanceof RwkvInputError) throw invalidParam(e.subject, e.message);
    throw e;
  }

  const id = (chat ? "chatcmpl-" : "cmpl-") + randomBytes(ID_BYTES).toString("hex");
  const created = Math.floor(Date.now() / MS_PER_S);
  const base = { id, object: chat ? "chat.completion.chunk" : "text_completion", created, model: ctx.modelName, system_fingerprint: ctx.model.fingerprint };
  const stream = request.stream;
  const echoText = echo ? (promptText ?? tokenizer.decode(prompt)) : "";
  const choices: Choice[] = decodings.map((_, index) => ({
    index, job: null, started: !chat, tools: chat && request.tools ? new ToolCallParser() : null, pending: [], all: [],
  }));
  const offsets = choices.map(() => echoText.length);

  const chatLogprobs = (steps: DecodeStep[]): { content: ChatLogprob[] } => ({ content: steps.map((s) => {
    const tok = (t: number) => ({ token: tokenizer.decode([t]), bytes: Array.from(tokenizer.decodeBytes([t])) });
    return { ...tok(s.token!), logprob: s.logprob!, top_logprobs: s.top.map((t) => ({ ...tok(t.token), logprob: t.logprob })) };
  }) });
  const completionLogprobs = (steps: DecodeStep[], c: Choice) => {
    const tokens = steps.map((s) => tokenizer.decode([s.token!]));
    const text_offset = tokens.map((t) => { const o = offsets[c.index]; offsets[c.index] += t.length; return o; });
    return {
      tokens, token_logprobs: steps.map((s) => s.logprob!), text_offset,
      top_logprobs: steps.map((s) => Object.fromEntries(s.top.map((t) => [tokenizer.decode([t.token]), t.logprob]))),
    };
  };
  const takeLogprobs = (c: Choice) => {
    if (topLogprobs === null) return null;
    const steps = c.pending;
    c.pending = [];
    return chat ? chatLogprobs(steps) : completionLogprobs(steps, c);
  };

  const send = (c: Choice, delta: Record<string, unknown>, text: string | null): void => {
    const logprobs = takeLogprobs(c);
    const choice = chat ? { index: c.index, delta, logprobs, finish_reason: null } : { text, index: c.index, logprobs, finish_reason: null };
    sendEvent(res, { ...base, choices: [choice] });
  };
  const onText = (c: Choice) => (text: string): void => {
    if (!stream) return;
    if (!c.started) {
      text = trimReplyStart(text);
      if (text === "") return;
      c.started = true;
    }
    if (!c.tools) return send(c, { content: text }, text);
    const out = c.tools.push(text);
    if (out.content) send(c, { content: out.content }, null);
    for (const s of out.started) send(c, { tool_calls: [{ index: s.index, id: s.id, type: "function", function: { name: s.name, arguments: "" } }] }, null);
    for (const a of out.args) send(c, { tool_calls: [{ index: a.index, function: { arguments: a.args } }] }, null);
  };
  const onToken = (c: Choice) => (step: DecodeStep): void => {
    if (topLogprobs === null) return;
    c.pending.push(step);
    c.all.push(step);
  };
  // For chat: the next turn's prompt will start with this prompt + " {reply}\n\n" (chat-format.ts).
  const continuation = chat && promptText !== null
    ? (output: string) => tokenizer.encode(promptText + replyContinuation(trimReplyStart(output)))
    : undefined;
  const specs: JobSpec[] = choices.map((c, i) => ({
    prompt, decoding: decodings[i], onText: onText(c), onToken: onToken(c), continuation, cachePrompt: !chat, ...(ctx.adapter !== undefined ? { adapter: ctx.adapter } : {}),
  }));
  // Another replica may have computed a longer prefix (--state-store, which holds base states only).
  if (ctx.adapter === undefined) await ctx.scheduler.cache?.prefetch(prompt);
  const jobs = n === 1 ? [ctx.scheduler.submit(specs[0])] : ctx.scheduler.submitForked(specs);
  jobs.forEach((job, i) => { choices[i].job = job; });
  res.setHeader("X-Request-Id", id); // before the first turn of the loop can write anything (scheduler.ts)
  const t0 = Date.now();
  // A client that goes away cancels its generation and frees its slots at once.
  res.on("close", () => { if (!res.writableFinished) for (const job of jobs) job.cancel("client"); });
  if (stream) {
    startEventStream(res);
    if (chat) for (const c of choices) sendEvent(res, { ...base, choices: [{ index: c.index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }] });
    if (echoText) for (const c of choices) sendEvent(res, { ...base, choices: [{ text: echoText, index: c.index, logprobs: null, finish_reason: null }] });
  }
  let results: JobResult[];
  try {
    results = await Promise.all(jobs.map((j) => j.done));
  } catch (e) {
    for (const job of jobs) job.cancel("client");
    if (!stream) throw e;
    sendEvent(res, internalError(e).toBody());
    return endEventStream(res);
  }
  const first = results[0];
  const completionTokens = results.reduce((s, r) => s + r.completionTokens, 0);
  ctx.log?.(`${req.method} ${req.url} ${id} n=${n} prompt=${first.promptTokens} cached=${first.cachedTokens} ` +
    `completion=${completionTokens} finish=${results.map((r) => r.finishReason).join(",")}${first.cancelReason ? `(${first.cancelReason})` : ""} ` +
    `wait=${first.waitMs.toFixed(0)}ms first_text=${first.firstTextMs.toFixed(0)}ms total=${Date.now() - t0}ms`);
  const cancelled = results.find((r) => r.finishReason === "cancelled");
  if (cancelled) {
    if (cancelled.cancelReason === "client") return; // nobody to answer
    const error = new ApiError(HTTP.unavailable, "the server shut down before the request finished", "server_error", null, "shutting_down");
    if (!stream) throw error;
    sendEvent(res, error.toBody());
    return endEventStream(res);
  }
  const usage = {
    prompt_tokens: first.promptTokens, completion_tokens: completionTokens, total_tokens: first.promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: first.cachedTokens },
  };
  const finishOf = (c: Choice, r: JobResult) => {
    if (c.tools && !stream) c.tools.push(trimReplyStart(r.text)); // the same parser as streaming, so both agree
    if (c.tools?.finalCalls()) return "tool_calls";
    return r.finishReason === "length" ? "length" : "stop";
  };
  if (stream) {
    for (const c of choices) {
      const held = c.tools?.flush() ?? "";
      if (held) send(c, { content: held }, null);
      const finish = finishOf(c, results[c.index]);
      const logprobs = takeLogprobs(c);
      const last = chat ? { index: c.index, delta: {}, logprobs, finish_reason: finish } : { text: "", index: c.index, logprobs, finish_reason: finish };
      sendEvent(res, { ...base, choices: [last] });
    }
    if (request.includeUsage) sendEvent(res, { ...base, choices: [], usage });
    return endEventStream(res);
  }
  const out = choices.map((c) => {
    const r = results[c.index];
    const finish = finishOf(c, r);
    c.pending = c.all;
    const logprobs = takeLogprobs(c);
    if (!chat) return { text: echoText + r.text, index: c.index, logprobs, finish_reason: finish };
    const calls = finish === "tool_calls" ? c.tools!.finalCalls()! : null;
    const message = calls
      ? { role: "assistant", content: null, refusal: null, tool_calls: calls.map((t) => ({ id: t.id, type: "function", function: { name: t.name, arguments: t.arguments } })) }
      : { role: "assistant", content: trimReplyStart(r.text), refusal: null };
    return { index: c.index, message, logprobs, finish_reason: finish };
  });
  sendJson(res, HTTP.ok, { ...base, object: chat ? "chat.completion" : "text_completion", choices: out, usage });
}

function internalError(e: unknown): ApiError {
  return new ApiError(HTTP.internal, `internal error: ${e instanceof Error ? e.message : String(e)}`, "server_error", null, "internal_error");
}
