import type { ConstraintSpec } from "../../core/grammar/index.js";
import { invalidParam } from "./errors.js";
import type { Json, JsonObject } from "./params.js";

/*
 * Request parameters beyond plain sampling: n, logprobs/top_logprobs, echo, response_format.
 *
 * logprobs are the log-softmax of the model's logits for the step, in double precision, before
 * temperature, penalties, logit_bias, top-p/top-k/min-p and any grammar: the model's own
 * distribution, which is what OpenAI's logprobs report (they do not change with temperature).
 *
 * n > 1: choice i is sampled with seed + i (seed = the request's, or one drawn at random), so a
 * request with n: k and seed s returns the same choices as k requests with n: 1 and seeds s, s+1,
 * ..., s+k-1. The prompt is processed once and its state copied to every choice.
 */

/** OpenAI's limits: chat top_logprobs 0..20, completions logprobs 0..5. */
const MAX_CHAT_TOP_LOGPROBS = 20;
const MAX_COMPLETION_LOGPROBS = 5;
/** More choices than this per request is refused (each is a decode slot). */
export const MAX_N = 16;

export interface Extras {
  readonly n: number;
  /** null: no logprobs; else how many alternatives per token (0 = only the sampled token's). */
  readonly topLogprobs: number | null;
  readonly echo: boolean;
  readonly constraint: ConstraintSpec | null;
}

const given = (body: JsonObject, key: string): boolean => body[key] !== undefined && body[key] !== null;
const isObject = (v: Json | undefined): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v);

function intIn(body: JsonObject, key: string, min: number, max: number): number | undefined {
  if (!given(body, key)) return undefined;
  const v = body[key];
  if (typeof v !== "number" || !Number.isSafeInteger(v)) throw invalidParam(key, `${key} must be an integer`, "invalid_type");
  if (v < min || v > max) throw invalidParam(key, `${key} must be between ${min} and ${max}, got ${v}`);
  return v;
}

export function parseExtras(body: JsonObject, kind: "chat" | "completion"): Extras {
  const n = intIn(body, "n", 1, MAX_N) ?? 1;
  let topLogprobs: number | null = null;
  if (kind === "chat") {
    if (given(body, "logprobs") && typeof body.logprobs !== "boolean") throw invalidParam("logprobs", "logprobs must be a boolean", "invalid_type");
    const top = intIn(body, "top_logprobs", 0, MAX_CHAT_TOP_LOGPROBS);
    if (top !== undefined && body.logprobs !== true) throw invalidParam("top_logprobs", "top_logprobs needs logprobs: true");
    if (body.logprobs === true) topLogprobs = top ?? 0;
  } else {
    if (given(body, "top_logprobs")) throw invalidParam("top_logprobs", "top_logprobs is a chat parameter; completions take logprobs: N");
    const lp = intIn(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS);
    if (lp !== undefined) topLogprobs = lp;
  }
  let echo = false;
  if (given(body, "echo")) {
    if (kind === "chat") throw invalidParam("echo", "echo is a completions parameter");
    if (typeof body.echo !== "boolean") throw invalidParam("echo", "echo must be a boolean", "invalid_type");
    echo = body.echo;
    // The prompt's own logprobs would need a forward pass per prompt token; not offered.
    if (echo && topLogprobs !== null) throw invalidParam("echo", "echo together with logprobs is not supported");
  }
  return { n, topLogprobs, echo, constraint: kind === "chat" ? parseResponseFormat(body) : null };
}

function parseResponseFormat(body: JsonObject): ConstraintSpec | null {
  if (!given(body, "response_format")) return null;
  const rf = body.response_format;
  if (!isObject(rf)) throw invalidParam("response_format", "response_format must be an object", "invalid_type");
  if (rf.type === "text") return null;
  if (rf.type === "json_object") return { kind: "json_object" };
  if (rf.type === "json_schema") {
    const js = rf.json_schema;
    if (!isObject(js)) throw invalidParam("response_format.json_schema", "response_format.json_schema must be an object {name, schema, strict}", "invalid_type");
    if (typeof js.name !== "string" || !/^[a-zA-Z0-9_-]{1,64}$/.test(js.name)) throw invalidParam("response_format.json_schema.name", "response_format.json_schema.name must be 1-64 letters, digits, _ or -");
    if (js.schema === undefined) throw invalidParam("response_format.json_schema.schema", "response_format.json_schema.schema is required", "missing_required_parameter");
    return { kind: "json_schema", schema: js.schema };
  }
  throw invalidParam("response_format.type", `response_format.type must be text, json_object or json_schema, got ${JSON.stringify(rf.type ?? null)}`);
}
