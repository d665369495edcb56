import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test, type TestContext } from "node:test";
import OpenAI from "openai";
import type { Model } from "../src/core/model/model.js";
import type { Tokenizer } from "../src/core/tokenizer/types.js";
import { loadModel } from "../src/node/load.js";
import { RwkvServer } from "../src/node/server/server.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { runCaptured } from "./run-cli.js";
import { SHARED } from "./shared.js";

/*
 * logprobs, n > 1, echo, response_format and tools, through the official `openai` client against
 * the tiny byte-level RWKV-7 (barely trained: valid output comes only from the constraints).
 */

const MODEL_PATH = join(SHARED, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
const NAME = "tiny";
let model: Model | null = null;
let tok: Tokenizer;
let server: RwkvServer | null = null;
let client: OpenAI;
let url = "";

before(async () => {
  try { model = await loadModel(MODEL_PATH); } catch {
    if (process.env.CI === "true") throw new Error(`missing fixture ${MODEL_PATH}`);
    return;
  }
  tok = loadTokenizer({ kind: "bytes" });
  server = new RwkvServer({ model, tokenizer: tok, modelName: NAME, port: 0, slots: 8 });
  const { port } = await server.listen();
  url = `http://127.0.0.1:${port}`;
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
});
after(async () => { await server?.shutdown(0); });

function ready(t: TestContext): boolean {
  if (!server) t.skip(`fixture ${MODEL_PATH} not found; set RWKV_SHARED`);
  return server !== null;
}

/** log-softmax in double precision, written here independently of the server's code. */
function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(logits, (x) => x - lse);
}

test("logprobs: each token's logprob and top_logprobs equal the log-softmax of the model's logits (1e-5), streaming too", async (t) => {
  if (!ready(t)) return;
  const prompt = "The cat sat on";
  // Bytes >= 0x80 banned so the text maps back to its tokens; logit_bias does not change logprobs (the model's own distribution).
  const ascii = Object.fromEntries(Array.from({ length: 128 }, (_, i) => [String(128 + i), -100]));
  const body = { model: NAME, prompt, max_tokens: 12, seed: 5, temperature: 0.8, logprobs: 3, logit_bias: ascii };
  const res = await client.completions.create(body);
  const lp = res.choices[0].logprobs!;
  assert.equal(lp.tokens!.length, 12);
  // Replay: the prompt, then each generated token, through the model; compare every step.
  const state = model!.initState();
  let logits = await model!.forward(tok.encode(prompt), state);
  const text = res.choices[0].text;
  const ids = tok.encode(text);
  assert.equal(ids.length, 12, "byte tokens of the text are the generated tokens");
  for (let i = 0; i < ids.length; i++) {
    const ls = logSoftmax(logits);
    assert.ok(Math.abs(lp.token_logprobs![i] - ls[ids[i]]) < 1e-5, `token ${i}: ${lp.token_logprobs![i]} vs ${ls[ids[i]]}`);
    const top = [...ls.keys()].sort((a, b) => ls[b] - ls[a]).slice(0, 3);
    const got = lp.top_logprobs![i];
    assert.equal(Object.keys(got).length, 3);
    for (const id of top) {
      const key = tok.decode([id]);
      assert.ok(Math.abs(got[key] - ls[id]) < 1e-5, `top ${key}: ${got[key]} vs ${ls[id]}`);
    }
    logits = await model!.step(ids[i], state);
  }
  // Chat, streaming and not, same seed: the same tokens and logprobs, with bytes.
  const chatBody = { model: NAME, messages: [{ role: "user" as const, content: "hi" }], max_tokens: 10, seed: 9, logprobs: true, top_logprobs: 2 };
  const whole = await client.chat.completions.create(chatBody);
  const stream = await client.chat.completions.create({ ...chatBody, stream: true });
  const streamed: OpenAI.Chat.ChatCompletionTokenLogprob[] = [];
  for await (const chunk of stream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
  const content = whole.choices[0].logprobs!.content!;
  assert.equal(content.length, whole.usage!.completion_tokens);
  assert.deepEqual(streamed, content);
  for (const c of content) { assert.equal(c.top_logprobs.length, 2); assert.equal(c.bytes!.length, 1); assert.ok(c.logprob <= 0); }
});

test("n: 3 with a seed gives the choices of three n: 1 requests with seeds seed, seed+1, seed+2 (one prefill)", async (t) => {
  if (!ready(t)) return;
  const messages = [{ role: "user" as const, content: "Tell me a story" }];
  const together = await client.chat.completions.create({ model: NAME, messages, n: 3, seed: 40, max_tokens: 20 });
  assert.equal(together.choices.length, 3);
  // One prefill: a fresh prompt asked with n: 3 is processed once.
  const metric = async () => ((await (await fetch(`${url}/metrics?format=json`)).json()) as Record<string, number>).prompt_tokens_processed_total;
  const before = await metric();
  const fresh = await client.chat.completions.create({ model: NAME, messages: [{ role: "user", content: "A fresh prompt, never sent before" }], n: 3, seed: 1, max_tokens: 3 });
  assert.equal(await metric() - before, fresh.usage!.prompt_tokens);
  const separate = await Promise.all([40, 41, 42].map((seed) => client.chat.completions.create({ model: NAME, messages, seed, max_tokens: 20 })));
  assert.deepEqual(together.choices.map((c) => c.message.content), separate.map((r) => r.choices[0].message.content));
  assert.equal(new Set(together.choices.map((c) => c.message.content)).size, 3, "different seeds give different choices");
  assert.equal(together.usage!.completion_tokens, separate.reduce((s, r) => s + r.usage!.completion_tokens, 0));
  // Streaming n: 3 delivers the same three texts, by index.
  const texts = ["", "", ""];
  for await (const chunk of await client.chat.completions.create({ model: NAME, messages, n: 3, seed: 40, max_tokens: 20, stream: true })) {
    for (const c of chunk.choices) texts[c.index] += c.delta.content ?? "";
  }
  assert.deepEqual(texts, together.choices.map((c) => c.message.content));
  // Completions: echo puts the prompt in front.
  const echoed = await client.completions.create({ model: NAME, prompt: "abc", max_tokens: 5, seed: 1, echo: true });
  const plain = await client.completions.create({ model: NAME, prompt: "abc", max_tokens: 5, seed: 1 });
  assert.equal(echoed.choices[0].text, `abc${plain.choices[0].text}`);
});

/** Three tools; every argument check below is independent of the grammar code. */
const TOOLS: OpenAI.Chat.ChatCompletionTool[] = [
  { type: "function", function: { name: "get_weather", description: "Weather for a city", parameters: { type: "object", properties: { city: { type: "string", maxLength: 10 }, unit: { enum: ["C", "F"] } }, required: ["city", "unit"] } } },
  { type: "function", function: { name: "add", parameters: { type: "object", properties: { a: { type: "integer" }, b: { type: "integer" } }, required: ["a", "b"] } } },
  { type: "function", function: { name: "flag", parameters: { type: "object", properties: { on: { type: "boolean" }, tags: { type: "array", items: { type: "string", maxLength: 4 }, maxItems: 2 } }, required: ["on"] } } },
];

type FnCall = OpenAI.Chat.ChatCompletionMessageFunctionToolCall;
const fnCalls = (m: OpenAI.Chat.ChatCompletionMessage): FnCall[] => (m.tool_calls ?? []).map((c) => { assert.equal(c.type, "function"); return c as FnCall; });

function checkArgs(name: string, args: string): void {
  const v = JSON.parse(args) as Record<string, unknown>;
  const keys = Object.keys(v);
  if (name === "get_weather") {
    assert.ok(typeof v.city === "string" && [...v.city].length <= 10 && (v.unit === "C" || v.unit === "F"), args);
    assert.ok(keys.every((k) => k === "city" || k === "unit"), args);
  } else if (name === "add") {
    assert.ok(Number.isInteger(v.a) && Number.isInteger(v.b) && keys.length === 2, args);
  } else {
    assert.equal(name, "flag");
    assert.ok(typeof v.on === "boolean", args);
    if (v.tags !== undefined) assert.ok(Array.isArray(v.tags) && v.tags.length <= 2 && v.tags.every((s) => typeof s === "string" && [...s].length <= 4), args);
  }
}

test("tools: required/named calls have valid arguments for the chosen function; streaming deltas agree; a tool result continues from the cache", async (t) => {
  if (!ready(t)) return;
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: "user", content: "What is the weather in Paris?" }];
  const names = new Set<string>();
  for (let seed = 0; seed < 8; seed++) {
    const body = { model: NAME, messages, tools: TOOLS, tool_choice: "required" as const, seed, max_tokens: 300 };
    const r = await client.chat.completions.create(body);
    const c = r.choices[0];
    assert.equal(c.finish_reason, "tool_calls", JSON.stringify(c.message));
    assert.equal(c.message.content, null);
    for (const call of fnCalls(c.message)) {
      assert.match(call.id, /^call_[0-9a-f]{24}$/);
      names.add(call.function.name);
      checkArgs(call.function.name, call.function.arguments);
    }
    // Streaming: tool-call deltas assemble to the same calls.
    const calls: Array<{ name: string; arguments: string; id: string }> = [];
    let finish: string | null = null;
    for await (const chunk of await client.chat.completions.create({ ...body, stream: true })) {
      const ch = chunk.choices[0];
      if (!ch) continue;
      for (const d of ch.delta.tool_calls ?? []) {
        if (d.id) calls[d.index] = { id: d.id, name: d.function!.name!, arguments: "" };
        calls[d.index].arguments += d.function?.arguments ?? "";
      }
      finish = ch.finish_reason ?? finish;
    }
    assert.equal(finish, "tool_calls");
    assert.deepEqual(calls.map((x) => [x.name, x.arguments]), fnCalls(c.message).map((x) => [x.function.name, x.function.arguments]));
  }
  assert.ok(names.size >= 2, `several tools were chosen over 8 seeds: ${[...names].join(", ")}`);

  // A named function, one call only.
  const named = await client.chat.completions.create({ model: NAME, messages, tools: TOOLS, tool_choice: { type: "function", function: { name: "add" } }, parallel_tool_calls: false, seed: 3, max_tokens: 200 });
  const nc = fnCalls(named.choices[0].message);
  assert.equal(nc.length, 1);
  assert.equal(nc[0].function.name, "add");
  checkArgs("add", nc[0].function.arguments);

  // The tool's answer continues the conversation; its prompt starts with the previous turn, so the cache has it.
  const next = await client.chat.completions.create({
    model: NAME, tools: TOOLS, tool_choice: "none", seed: 3, max_tokens: 5,
    messages: [...messages, named.choices[0].message, { role: "tool", tool_call_id: nc[0].id, content: "42" }],
  });
  assert.equal(next.choices[0].finish_reason === "tool_calls", false);
  const cached = (next.usage as unknown as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details.cached_tokens;
  const firstPrompt = named.usage!.prompt_tokens;
  assert.ok(cached > firstPrompt, `cached ${cached} tokens, more than the first prompt's ${firstPrompt}`);
});

test("response_format json_schema: chat replies parse and validate", async (t) => {
  if (!ready(t)) return;
  const schema = { type: "object", properties: { answer: { type: "integer" }, sure: { type: "boolean" } }, required: ["answer", "sure"], additionalProperties: false };
  for (let seed = 0; seed < 5; seed++) {
    const r = await client.chat.completions.create({ model: NAME, messages: [{ role: "user", content: "2+2?" }], seed, max_tokens: 200,
      response_format: { type: "json_schema", json_schema: { name: "a", schema, strict: true } } });
    const v = JSON.parse(r.choices[0].message.content!) as Record<string, unknown>;
    assert.ok(Number.isInteger(v.answer) && typeof v.sure === "boolean" && Object.keys(v).length === 2, r.choices[0].message.content!);
  }
  const obj = await client.chat.completions.create({ model: NAME, messages: [{ role: "user", content: "json" }], seed: 2, max_tokens: 400, response_format: { type: "json_object" } });
  if (obj.choices[0].finish_reason === "stop") assert.equal(typeof JSON.parse(obj.choices[0].message.content!), "object");
  else assert.equal(obj.choices[0].finish_reason, "length");
});

test("bad input: invalid schema, unsupported keyword, never-finishing schema, unknown tool: 400 naming the parameter; CLI: one line", async (t) => {
  if (!ready(t)) return;
  const post = async (body: Record<string, unknown>) => {
    const res = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: NAME, messages: [{ role: "user", content: "hi" }], ...body }) });
    const j = (await res.json()) as { error: { param: string; message: string } };
    return { status: res.status, ...j.error };
  };
  const rf = (schema: unknown) => ({ response_format: { type: "json_schema", json_schema: { name: "x", schema } } });
  let e = await post(rf({ type: "strin" }));
  assert.deepEqual([e.status, e.param], [400, "response_format.json_schema.schema"]);
  assert.match(e.message, /type: must be one of/);
  e = await post(rf({ type: "string", pattern: "^a+$" }));
  assert.deepEqual([e.status, e.param], [400, "response_format.json_schema.schema"]);
  assert.match(e.message, /unsupported keyword pattern/);
  e = await post(rf({ $defs: { a: { type: "object", properties: { x: { $ref: "#/$defs/a" } }, required: ["x"] } }, $ref: "#/$defs/a" }));
  assert.deepEqual([e.status, e.param], [400, "response_format.json_schema.schema"]);
  assert.match(e.message, /can never finish/);
  e = await post({ tools: TOOLS, tool_choice: { type: "function", function: { name: "launch" } } });
  assert.deepEqual([e.status, e.param], [400, "tool_choice"]);
  assert.match(e.message, /"launch", which is not in tools/);
  e = await post({ tools: TOOLS, messages: [{ role: "user", content: "x" }, { role: "assistant", content: null, tool_calls: [{ id: "c", type: "function", function: { name: "launch", arguments: "{}" } }] }] });
  assert.deepEqual([e.status, e.param], [400, "messages[1].tool_calls[0].function.name"]);
  e = await post({ tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { x: { type: "number", minimum: 0 } } } } }] });
  assert.deepEqual([e.status, e.param], [400, "tools[0].function.parameters"]);
  assert.match(e.message, /unsupported keyword minimum/);
  e = await post({ logprobs: true, top_logprobs: 21 });
  assert.deepEqual([e.status, e.param], [400, "top_logprobs"]);

  const dir = mkdtempSync(join(tmpdir(), "rwkv-grammar-"));
  const bad = join(dir, "bad.json");
  writeFileSync(bad, JSON.stringify({ type: "object", properties: { s: { type: "string", format: "email" } } }));
  const never = join(dir, "never.gbnf");
  writeFileSync(never, "root ::= \"(\" root \")\"\n");
  for (const [flag, file, re] of [["--json-schema", bad, /^--json-schema .*bad\.json: \/properties\/s\/format: unsupported format "email"/], ["--grammar", never, /^--grammar .*never\.gbnf: can never finish/]] as const) {
    const r = await runCaptured(["generate", MODEL_PATH, "--prompt", "x", "--tokenizer-kind", "bytes", flag, file]);
    assert.notEqual(r.code, 0);
    assert.equal(r.err.trim().split("\n").length, 1, r.err);
    assert.match(r.err.trim().replace(/^rwkv: /, ""), re);
  }
  // And a good one: the CLI's output follows the grammar.
  const good = join(dir, "good.gbnf");
  writeFileSync(good, "root ::= \"<\" [a-z]{2,4} \">\"\n");
  const r = await runCaptured(["generate", MODEL_PATH, "--prompt", "x", "--tokenizer-kind", "bytes", "--grammar", good, "--seed", "3"]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out.trim(), /^<[a-z]{2,4}>$/);
});
