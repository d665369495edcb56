import { randomBytes } from "node:crypto";
import { RwkvInputError } from "../../core/errors.js";
import { JSON_BASE_GBNF, jsonSchemaRules } from "../../core/grammar/json-schema.js";
import { invalidParam } from "./errors.js";
import type { Json, JsonObject } from "./params.js";

/*
 * Tool (function) calling for /v1/chat/completions.
 *
 * There is no official tool-calling template for RWKV-7 G1 (its model card documents only the
 * System/User/Assistant turns and <think>), so this server uses its own, in the G1 chat format and
 * with the <tool_call> JSON convention common to open chat models:
 *
 *   System: {the client's system message, if any}
 *   # Tools
 *   You may call one or more functions. Their definitions (JSON):
 *   {"type":"function","function":{"name":...,"description":...,"parameters":{...}}}     (one line per tool)
 *   To call functions, reply with one line per call: <tool_call>{"name": NAME, "arguments": ARGUMENTS}</tool_call>
 *
 *   User: ...
 *
 *   Assistant: <tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>
 *
 *   User: <tool_response>{the tool message's content}</tool_response>
 *
 *   Assistant:
 *
 * (turns joined by "\n\n" and cleaned as every chat message is). An assistant message with
 * tool_calls renders exactly as the model writes them, so the next turn's prompt extends this one
 * and hits the prefix cache. The reply is constrained by a grammar: with tool_choice "required" or
 * a named function it must be tool calls (one, unless parallel_tool_calls), with "auto" it is
 * either tool calls or text, and each call's arguments follow that function's JSON Schema.
 */

export interface ToolDef { readonly name: string; readonly description?: string; readonly parameters: JsonObject }
export type ToolChoice = { readonly kind: "auto" | "none" | "required" } | { readonly kind: "named"; readonly name: string };
export interface ToolSettings { readonly tools: readonly ToolDef[]; readonly choice: ToolChoice; readonly parallel: boolean }
export interface ToolCall { readonly id: string; readonly name: string; readonly arguments: string }

export const TOOL_CALL_OPEN = "<tool_call>";
export const TOOL_CALL_CLOSE = "</tool_call>";
const NAME_RE = /^[a-zA-Z0-9_-]{1,64}$/;

const isObject = (v: Json | undefined): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v);

/** tools, tool_choice, parallel_tool_calls; null when no tools are given. */
export function parseTools(body: JsonObject): ToolSettings | null {
  const list = body.tools;
  const choiceGiven = body.tool_choice !== undefined && body.tool_choice !== null;
  if (list === undefined || list === null || (Array.isArray(list) && list.length === 0)) {
    if (choiceGiven && body.tool_choice !== "none") throw invalidParam("tool_choice", "tool_choice needs tools");
    return null;
  }
  if (!Array.isArray(list)) throw invalidParam("tools", "tools must be an array", "invalid_type");
  const tools = list.map((t, i): ToolDef => {
    const where = `tools[${i}]`;
    if (!isObject(t) || t.type !== "function" || !isObject(t.function)) throw invalidParam(where, `${where} must be {"type": "function", "function": {...}}`);
    const f = t.function;
    if (typeof f.name !== "string" || !NAME_RE.test(f.name)) throw invalidParam(`${where}.function.name`, `${where}.function.name must be 1-64 letters, digits, _ or -`);
    const parameters = f.parameters ?? { type: "object", properties: {} };
    if (!isObject(parameters)) throw invalidParam(`${where}.function.parameters`, `${where}.function.parameters must be a JSON Schema object`, "invalid_type");
    if (f.description !== undefined && typeof f.description !== "string") throw invalidParam(`${where}.function.description`, `${where}.function.description must be a string`, "invalid_type");
    return { name: f.name, description: f.description, parameters };
  });
  const names = new Set<string>();
  for (const [i, t] of tools.entries()) {
    if (names.has(t.name)) throw invalidParam(`tools[${i}].function.name`, `tool name ${t.name} is used twice`);
    names.add(t.name);
  }
  let choice: ToolChoice = { kind: "auto" };
  if (choiceGiven) {
    const c = body.tool_choice;
    if (c === "auto" || c === "none" || c === "required") choice = { kind: c };
    else if (isObject(c) && c.type === "function" && isObject(c.function) && typeof c.function.name === "string") {
      if (!names.has(c.function.name)) throw invalidParam("tool_choice", `tool_choice names the function ${JSON.stringify(c.function.name)}, which is not in tools`);
      choice = { kind: "named", name: c.function.name };
    } else throw invalidParam("tool_choice", "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}");
  }
  const p = body.parallel_tool_calls;
  if (p !== undefined && p !== null && typeof p !== "boolean") throw invalidParam("parallel_tool_calls", "parallel_tool_calls must be a boolean", "invalid_type");
  return { tools, choice, parallel: p !== false };
}

/** The text of a tool call as the model writes it (compact JSON arguments as given). */
export function renderToolCall(name: string, args: string): string {
  return `${TOOL_CALL_OPEN}{"name":${JSON.stringify(name)},"arguments":${args}}${TOOL_CALL_CLOSE}`;
}

/** The "# Tools" section appended to the system message. */
export function renderToolsSection(tools: readonly ToolDef[]): string {
  const defs = tools.map((t) => JSON.stringify({ type: "function", function: { name: t.name, ...(t.description ? { description: t.description } : {}), parameters: t.parameters } }));
  return ["# Tools", "You may call one or more functions. Their definitions (JSON):", ...defs,
    `To call functions, reply with one line per call: ${TOOL_CALL_OPEN}{"name": NAME, "arguments": ARGUMENTS}${TOOL_CALL_CLOSE}`].join("\n");
}

/** An assistant message's tool_calls as rendered text; unknown function names are refused. */
export function renderAssistantToolCalls(v: Json | undefined, where: string, known: ReadonlySet<string> | null): string {
  if (!Array.isArray(v)) throw invalidParam(where, `${where} must be an array`, "invalid_type");
  return v.map((c, j) => {
    const w = `${where}[${j}]`;
    if (!isObject(c) || !isObject(c.function) || typeof c.function.name !== "string" || typeof c.function.arguments !== "string") {
      throw invalidParam(w, `${w} must be {"id", "type": "function", "function": {"name", "arguments": string}}`);
    }
    if (known && !known.has(c.function.name)) throw invalidParam(`${w}.function.name`, `${w}.function.name ${JSON.stringify(c.function.name)} is not one of the tools`);
    try { JSON.parse(c.function.arguments); } catch { throw invalidParam(`${w}.function.arguments`, `${w}.function.arguments is not valid JSON`); }
    // Verbatim: the text the model generated, so the next turn's prompt extends this one's (prefix cache).
    return renderToolCall(c.function.name, c.function.arguments);
  }).join("\n");
}

export function renderToolResult(content: string): string {
  return `<tool_response>${content}</tool_response>`;
}

/**
 * The GBNF of the reply (after "Assistant:", so it starts with an optional space). Null when the
 * reply is free text (tool_choice "none").
 */
export function toolGrammar(settings: ToolSettings): string | null {
  const { choice } = settings;
  if (choice.kind === "none") return null;
  const tools = choice.kind === "named" ? settings.tools.filter((t) => t.name === choice.name) : settings.tools;
  const rules: string[] = [];
  const alts = tools.map((t, i) => {
    let r: { root: string; rules: string };
    try {
      r = jsonSchemaRules(t.parameters, "parameters", `t${i}-`);
    } catch (e) {
      if (e instanceof RwkvInputError) throw invalidParam(`tools[${settings.tools.indexOf(t)}].function.parameters`, `tools[${settings.tools.indexOf(t)}].function.${e.message}`);
      throw e;
    }
    if (r.rules) rules.push(r.rules);
    return `"{\\"name\\":" ${gbnfLiteral(JSON.stringify(t.name))} ",\\"arguments\\":" ${r.root} "}"`;
  });
  const call = `${gbnfLiteral(TOOL_CALL_OPEN)} (${alts.join(" | ")}) ${gbnfLiteral(TOOL_CALL_CLOSE)}`;
  // After a call another may follow on the next line; "\n\n" (the chat's end-of-turn stop string)
  // lets a vocabulary without an end-of-text token (bytes) end the list.
  const calls = settings.parallel ? "call (\"\\n\" call)* \"\\n\\n\"?" : "call";
  // "auto": text that does not start with "<" (so it cannot be a malformed call), or calls.
  const root = choice.kind === "auto" ? `" "? (calls | [^<] .*)` : `" "? calls`;
  return [`root ::= ${root}`, `calls ::= ${calls}`, `call ::= ${call}`, ...rules, JSON_BASE_GBNF].join("\n");
}

function gbnfLiteral(text: string): string {
  return `"${text.replace(/\\/g, "\\\\").replace(/"/g, "\\\"")}"`;
}

export const newToolCallId = (): string => `call_${randomBytes(12).toString("hex")}`;

/**
 * Splits a reply into text or tool calls as it grows (for streaming deltas, and the same code for
 * the final answer, so both agree). The grammar guarantees the shape; the parser only needs to
 * find the boundaries: `<tool_call>{"name":"NAME","arguments":` ARGS `}</tool_call>`.
 */
export class ToolCallParser {
  /** "pending" until the first non-space characters tell text from calls. */
  mode: "pending" | "text" | "calls" = "pending";
  readonly calls: Array<{ id: string; name: string; args: string; closed: boolean }> = [];
  private buf = "";
  private pos = 0; // parsed up to here (calls mode)

  /** Adds text; returns what to send: text content, new calls (index, id, name) and argument pieces. */
  push(text: string): { content: string; started: Array<{ index: number; id: string; name: string }>; args: Array<{ index: number; args: string }> } {
    this.buf += text;
    const out = { content: "", started: [] as Array<{ index: number; id: string; name: string }>, args: [] as Array<{ index: number; args: string }> };
    if (this.mode === "pending") {
      const t = this.buf.trimStart();
      if (t === "") return out;
      if (TOOL_CALL_OPEN.startsWith(t) && t.length < TOOL_CALL_OPEN.length) return out;
      if (t.startsWith(TOOL_CALL_OPEN)) { this.mode = "calls"; this.pos = this.buf.length - t.length; }
      else { this.mode = "text"; out.content = t; return out; }
    }
    if (this.mode === "text") { out.content = text; return out; }
    for (;;) {
      const open = this.calls.at(-1);
      if (open && !open.closed) {
        const end = this.buf.indexOf(`}${TOOL_CALL_CLOSE}`, this.pos);
        // Hold back a tail that may be the start of "}</tool_call>".
        const upTo = end >= 0 ? end : this.buf.length - heldBack(this.buf.slice(this.pos), `}${TOOL_CALL_CLOSE}`);
        if (upTo > this.pos) { const piece = this.buf.slice(this.pos, upTo); open.args += piece; out.args.push({ index: this.calls.length - 1, args: piece }); this.pos = upTo; }
        if (end < 0) return out;
        open.closed = true;
        this.pos = end + 1 + TOOL_CALL_CLOSE.length;
        continue;
      }
      const m = /^\s*<tool_call>\{"name":("(?:[^"\\]|\\.)*"),"arguments":/.exec(this.buf.slice(this.pos));
      if (!m) return out;
      const name = JSON.parse(m[1]) as string;
      const call = { id: newToolCallId(), name, args: "", closed: false };
      this.calls.push(call);
      out.started.push({ index: this.calls.length - 1, id: call.id, name });
      this.pos += m[0].length;
    }
  }

  /** At the end: text still held back because it might have started a call. */
  flush(): string {
    if (this.mode !== "pending") return "";
    this.mode = "text";
    return this.buf.trimStart();
  }

  /** The complete calls (all closed), or null when the reply is text or was cut off. */
  finalCalls(): ToolCall[] | null {
    if (this.mode !== "calls" || this.calls.length === 0 || !this.calls.every((c) => c.closed)) return null;
    return this.calls.map((c) => ({ id: c.id, name: c.name, arguments: c.args }));
  }
}

/** Length of the longest suffix of `s` that is a proper prefix of `marker`. */
function heldBack(s: string, marker: string): number {
  for (let n = Math.min(marker.length - 1, s.length); n > 0; n--) if (s.endsWith(marker.slice(0, n))) return n;
  return 0;
}
