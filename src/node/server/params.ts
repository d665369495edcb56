import type { PenaltyOptions, SamplerOptions } from "../../core/sampling.js";
import type { ChatMessage, ChatRole } from "./chat-format.js";
import { ApiError, HTTP, invalidParam } from "./errors.js";
import { type Extras, parseExtras } from "./extras.js";
import { parseTools, renderAssistantToolCalls, renderToolResult, renderToolsSection, type ToolSettings } from "./tools.js";

/*
 * Validation of the OpenAI request bodies into typed requests. Ranges follow OpenAI (temperature
 * 0..2, top_p 0..1, penalties -2..2, logit_bias -100..100, at most 4 stop sequences, n = 1), with
 * 400 invalid_request_error naming the parameter. n, logprobs, echo and response_format are parsed in
 * extras.ts, tools in tools.ts. Parameters we cannot honour (suffix, best_of, functions ...) are refused rather than silently ignored; unknown fields are ignored, as
 * clients add new optional fields faster than servers learn them.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** OpenAI's documented ranges. */
const MAX_TEMPERATURE = 2;
const MAX_ABS_PENALTY = 2;
const MAX_ABS_LOGIT_BIAS = 100;
const MAX_STOP_SEQUENCES = 4;
/** OpenAI's completions default when max_tokens is omitted. */
const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;
/**
 * What top_p = 1 ("no nucleus filtering" to OpenAI clients) is run as. The official sampler keeps
 * tokens until an fp32 cumulative sum reaches top_p and, if the sum never gets there (it can end at
 * 0.99999994 or stall when a long tail is below fp32 resolution), keeps ONLY the top token (SPEC
 * gotcha 14): top_p = 1.0 could silently mean greedy. 0.999 is always reached in practice and cuts
 * only the last 0.1% of probability mass.
 */
export const TOP_P_CEILING = 0.999;

export interface Limits {
  readonly maxPromptTokens: number;
  readonly maxTokensLimit: number;
  readonly vocabSize: number;
  /** Decay of the presence/frequency counts (the official alpha_decay). */
  readonly penaltyDecay: number;
}

interface Common {
  readonly model: string;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  /** null: the client did not ask for a limit (chat: up to the server's limit). */
  readonly maxTokens: number | null;
  readonly sampler: SamplerOptions;
  readonly penalties: PenaltyOptions;
  /** null: none given; the server draws one. */
  readonly seed: number | null;
  readonly stop: string[];
  readonly extras: Extras;
}

export interface ChatRequest extends Common {
  readonly kind: "chat";
  readonly messages: ChatMessage[];
  /** null: no tools given. */
  readonly tools: ToolSettings | null;
}

export interface CompletionRequest extends Common {
  readonly kind: "completion";
  /** Text, or token ids given directly. */
  readonly prompt: string | number[];
}

export type GenerationRequest = ChatRequest | CompletionRequest;

/** Present and not null (OpenAI treats an explicit null as "use the default"). */
const given = (body: JsonObject, key: string): boolean => body[key] !== undefined && body[key] !== null;

function typeName(v: Json | undefined): string {
  return v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
}

function num(body: JsonObject, key: string, min: number, max: number): number | undefined {
  if (!given(body, key)) return undefined;
  const v = body[key];
  if (typeof v !== "number" || !Number.isFinite(v)) throw invalidParam(key, `${key} must be a number, got ${typeName(v)}`, "invalid_type");
  if (v < min || v > max) throw invalidParam(key, `${key} must be between ${min} and ${max}, got ${v}`);
  return v;
}

function int(body: JsonObject, key: string, min: number, max: number): number | undefined {
  const v = num(body, key, min, max);
  if (v !== undefined && !Number.isSafeInteger(v)) throw invalidParam(key, `${key} must be an integer, got ${v}`, "invalid_type");
  return v;
}

function bool(body: JsonObject, key: string): boolean | undefined {
  if (!given(body, key)) return undefined;
  const v = body[key];
  if (typeof v !== "boolean") throw invalidParam(key, `${key} must be a boolean, got ${typeName(v)}`, "invalid_type");
  return v;
}

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Parameters we cannot honour: refused when set to anything but their "off" value. */
const UNSUPPORTED: ReadonlyArray<readonly [string, (v: Json) => boolean]> = [
  ["suffix", (v) => v === ""],
  ["best_of", (v) => v === 1],
  ["functions", (v) => Array.isArray(v) && v.length === 0],
  ["function_call", (v) => v === "none"],
  ["audio", () => false],
  ["prediction", () => false],
];

function checkUnsupported(body: JsonObject): void {
  for (const [key, isOff] of UNSUPPORTED) {
    if (given(body, key) && !isOff(body[key] as Json)) throw invalidParam(key, `${key} is not supported by this server`, "unsupported_parameter");
  }
}

function parseStop(body: JsonObject): string[] {
  if (!given(body, "stop")) return [];
  const v = body.stop;
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || !list.every((s): s is string => typeof s === "string")) {
    throw invalidParam("stop", "stop must be a string or an array of strings", "invalid_type");
  }
  if (list.length > MAX_STOP_SEQUENCES) throw invalidParam("stop", `stop allows at most ${MAX_STOP_SEQUENCES} sequences, got ${list.length}`);
  return list.filter((s) => s.length > 0);
}

function parseLogitBias(body: JsonObject, vocabSize: number): Map<number, number> | undefined {
  if (!given(body, "logit_bias")) return undefined;
  const v = body.logit_bias;
  if (!isObject(v)) throw invalidParam("logit_bias", "logit_bias must be an object mapping token ids to biases", "invalid_type");
  const bias = new Map<number, number>();
  for (const [key, b] of Object.entries(v)) {
    const id = Number(key);
    if (!/^\d+$/.test(key) || !Number.isSafeInteger(id) || id >= vocabSize) {
      throw invalidParam("logit_bias", `logit_bias key "${key}" is not a token id in 0..${vocabSize - 1}`);
    }
    if (typeof b !== "number" || !Number.isFinite(b) || Math.abs(b) > MAX_ABS_LOGIT_BIAS) {
      throw invalidParam("logit_bias", `logit_bias for token ${key} must be a number between -${MAX_ABS_LOGIT_BIAS} and ${MAX_ABS_LOGIT_BIAS}`);
    }
    bias.set(id, b);
  }
  return bias;
}

function parseCommon(body: JsonObject, kind: GenerationRequest["kind"], limits: Limits): Common {
  checkUnsupported(body);
  if (!given(body, "model")) throw invalidParam("model", "you must provide a model parameter", "missing_required_parameter");
  if (typeof body.model !== "string") throw invalidParam("model", `model must be a string, got ${typeName(body.model)}`, "invalid_type");
  const extras = parseExtras(body, kind);
  const stream = bool(body, "stream") ?? false;
  let includeUsage = false;
  if (given(body, "stream_options")) {
    if (!stream) throw invalidParam("stream_options", "stream_options is only allowed when stream is true");
    const so = body.stream_options;
    if (!isObject(so)) throw invalidParam("stream_options", "stream_options must be an object", "invalid_type");
    includeUsage = bool(so, "include_usage") ?? false;
  }
  // max_completion_tokens is the newer name of max_tokens (chat); it wins when both are given.
  const maxKey = given(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const maxTokens = int(body, maxKey, 1, limits.maxTokensLimit) ?? (kind === "completion" ? Math.min(COMPLETIONS_DEFAULT_MAX_TOKENS, limits.maxTokensLimit) : null);
  const temperature = num(body, "temperature", 0, MAX_TEMPERATURE);
  const topP = num(body, "top_p", 0, 1);
  // Extensions many OpenAI-compatible servers accept: top_k (-1 or 0 = off) and min_p.
  const topK = int(body, "top_k", -1, Number.MAX_SAFE_INTEGER);
  const minP = num(body, "min_p", 0, 1);
  const seed = int(body, "seed", Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER) ?? null;
  const sampler: SamplerOptions = {
    temperature: temperature ?? 1,
    topP: Math.min(topP ?? 1, TOP_P_CEILING),
    topK: topK === undefined || topK < 0 ? 0 : topK,
    minP: minP ?? 0,
  };
  const penalties: PenaltyOptions = {
    // OpenAI's defaults (0 = off), not the official ChatRWKV 0.2: a client that sends nothing gets what it expects.
    presencePenalty: num(body, "presence_penalty", -MAX_ABS_PENALTY, MAX_ABS_PENALTY) ?? 0,
    frequencyPenalty: num(body, "frequency_penalty", -MAX_ABS_PENALTY, MAX_ABS_PENALTY) ?? 0,
    penaltyDecay: limits.penaltyDecay,
    logitBias: parseLogitBias(body, limits.vocabSize),
  };
  return { model: body.model, stream, includeUsage, maxTokens, sampler, penalties, seed, stop: parseStop(body), extras };
}

const ROLES: Readonly<Record<string, ChatRole>> = { system: "system", developer: "system", user: "user", assistant: "assistant" };

/** A message's text: a string, or an array of {type: "text", text} parts (joined by newlines). */
function contentText(v: Json | undefined, where: string, role: ChatRole): string {
  if (v === undefined || v === null) {
    if (role === "assistant") return ""; // an assistant turn that only called tools has null content
    throw invalidParam(where, `${where} is required`, "missing_required_parameter");
  }
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    return v.map((part, j) => {
      if (!isObject(part) || part.type !== "text" || typeof part.text !== "string") {
        throw invalidParam(`${where}[${j}]`, `${where}[${j}]: only text content parts are supported`, "unsupported_parameter");
      }
      return part.text;
    }).join("\n");
  }
  throw invalidParam(where, `${where} must be a string or an array of text parts`, "invalid_type");
}

export function parseChatRequest(body: JsonObject, limits: Limits): ChatRequest {
  const common = parseCommon(body, "chat", limits);
  const list = body.messages;
  if (!Array.isArray(list)) throw invalidParam("messages", given(body, "messages") ? "messages must be an array" : "you must provide a messages parameter", given(body, "messages") ? "invalid_type" : "missing_required_parameter");
  if (list.length === 0) throw invalidParam("messages", "messages must contain at least one message");
  const tools = parseTools(body);
  if (tools && common.extras.constraint) throw invalidParam("response_format", "response_format together with tools is not supported");
  const known = tools ? new Set(tools.tools.map((t) => t.name)) : null;
  const messages = list.map((m, i): ChatMessage => {
    if (!isObject(m)) throw invalidParam(`messages[${i}]`, `messages[${i}] must be an object`, "invalid_type");
    // Tool results are rendered as user turns (tools.ts has the template).
    if (m.role === "tool") return { role: "user", content: renderToolResult(contentText(m.content, `messages[${i}].content`, "user")) };
    const role = typeof m.role === "string" ? ROLES[m.role] : undefined;
    if (role === undefined) {
      throw invalidParam(`messages[${i}].role`, `messages[${i}].role must be one of system, developer, user, assistant, tool; got ${JSON.stringify(m.role ?? null)}`);
    }
    const content = contentText(m.content, `messages[${i}].content`, role);
    if (role !== "assistant" || m.tool_calls === undefined || m.tool_calls === null) return { role, content };
    const calls = renderAssistantToolCalls(m.tool_calls, `messages[${i}].tool_calls`, known);
    return { role, content: content === "" ? calls : `${content}\n${calls}` };
  });
  if (tools) {
    const section = renderToolsSection(tools.tools);
    if (messages[0].role === "system") messages[0] = { role: "system", content: `${messages[0].content}\n${section}` };
    else messages.unshift({ role: "system", content: section });
  }
  return { ...common, kind: "chat", messages, tools };
}

export function parseCompletionRequest(body: JsonObject, limits: Limits): CompletionRequest {
  const common = parseCommon(body, "completion", limits);
  let p = body.prompt;
  if (!given(body, "prompt")) throw invalidParam("prompt", "you must provide a prompt parameter", "missing_required_parameter");
  // One prompt per request: a one-element batch is unwrapped, a bigger batch refused.
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === "string" || Array.isArray(p[0]))) p = p[0];
  if (typeof p === "string") return { ...common, kind: "completion", prompt: p };
  if (Array.isArray(p) && p.every((x): x is number => typeof x === "number")) {
    const bad = p.find((x) => !Number.isSafeInteger(x) || x < 0 || x >= limits.vocabSize);
    if (bad !== undefined) throw invalidParam("prompt", `prompt token ${bad} is not a token id in 0..${limits.vocabSize - 1}`);
    return { ...common, kind: "completion", prompt: p };
  }
  if (Array.isArray(p) && p.length > 1) throw invalidParam("prompt", "batched prompts are not supported: send one prompt per request");
  throw invalidParam("prompt", "prompt must be a string or an array of token ids", "invalid_type");
}

/** The parsed JSON body, which must be an object. */
export function parseJsonBody(text: string): JsonObject {
  let body: Json;
  try {
    body = JSON.parse(text) as Json;
  } catch (e) {
    throw new ApiError(HTTP.badRequest, `request body is not valid JSON: ${(e as Error).message}`, "invalid_request_error", null, "invalid_json");
  }
  if (!isObject(body)) throw new ApiError(HTTP.badRequest, "request body must be a JSON object", "invalid_request_error", null, "invalid_json");
  return body;
}
