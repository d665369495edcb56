import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { after, before, test, type TestContext } from "node:test";
import OpenAI from "openai";
import { selectBackend } from "../src/core/backend/registry.js";
import { formatConversation } from "../src/core/chat.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { generate } from "../src/core/generate.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel, type Model } from "../src/core/model/model.js";
import type { TensorEntry } from "../src/core/tensor.js";
import { WORLD_VOCAB_SIZE } from "../src/core/tokenizer/world.js";
import type { Tokenizer } from "../src/core/tokenizer/types.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { renderChatPrompt } from "../src/node/server/chat-format.js";
import { RwkvServer } from "../src/node/server/server.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { SHARED } from "./shared.js";

/*
 * The OpenAI-compatible server, driven by the official `openai` client (and raw fetch where the
 * client would not send the request) against real servers on 127.0.0.1 with ephemeral ports.
 * Model: the tiny RWKV-7 (bytes vocabulary); it is barely trained, so tests use greedy decoding
 * or seeds and compare outputs rather than expecting readable text.
 */

const MODEL_PATH = join(SHARED, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
const NAME = "tiny";
const KEY = "test-key-123";
const BODY_LIMIT = 64 * 1024;
const MAX_PROMPT_TOKENS = 2000;
const MAX_TOKENS_LIMIT = 3000;

interface Running { server: RwkvServer; url: string; client: OpenAI }

let model: Model | null = null;
let tok: Tokenizer;
let main: Running | null = null;
const started: RwkvServer[] = [];

async function start(options: Partial<ConstructorParameters<typeof RwkvServer>[0]> = {}, m: Model = model!, t: Tokenizer = tok): Promise<Running> {
  const server = new RwkvServer({ model: m, tokenizer: t, modelName: NAME, port: 0, ...options });
  started.push(server);
  const { port } = await server.listen();
  const url = `http://127.0.0.1:${port}`;
  // maxRetries 0: the client must see each 429/5xx itself rather than retrying it.
  return { server, url, client: new OpenAI({ baseURL: `${url}/v1`, apiKey: options.apiKey ?? "unused", maxRetries: 0 }) };
}

before(async () => {
  try {
    model = await loadModel(MODEL_PATH);
  } catch {
    if (process.env.CI === "true") throw new Error(`missing fixture ${MODEL_PATH}`);
    return;
  }
  tok = loadTokenizer({ kind: "bytes" });
  main = await start({ slots: 16, queue: 32, apiKey: KEY, bodyLimit: BODY_LIMIT, maxPromptTokens: MAX_PROMPT_TOKENS, maxTokensLimit: MAX_TOKENS_LIMIT });
});

after(async () => {
  await Promise.all(started.map((s) => s.shutdown(0)));
});

/** The main server, or a skip when the model fixture is missing. */
function srv(t: TestContext): Running | null {
  if (!main) t.skip(`fixture ${MODEL_PATH} not found; set RWKV_SHARED`);
  return main;
}

type Metrics = Record<string, number>;
async function metrics(r: Running): Promise<Metrics> {
  const res = await fetch(`${r.url}/metrics?format=json`, { headers: { authorization: `Bearer ${KEY}` } });
  assert.equal(res.status, 200);
  return (await res.json()) as Metrics;
}

async function until(what: string, cond: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const GREEDY = { temperature: 0 } as const;

/** A streamed chat reply: content, finish reason, usage and the number of content chunks. */
async function streamChat(r: Running, body: Omit<OpenAI.Chat.ChatCompletionCreateParamsStreaming, "model" | "stream">) {
  const stream = await r.client.chat.completions.create({ model: NAME, stream: true, ...body });
  let text = "", finish: string | null = null, usage: OpenAI.CompletionUsage | null = null, chunks = 0;
  for await (const c of stream) {
    assert.equal(c.object, "chat.completion.chunk");
    if (c.usage) usage = c.usage;
    const ch = c.choices[0];
    if (!ch) continue;
    if (ch.delta.content) { text += ch.delta.content; chunks++; }
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { text, finish, usage, chunks };
}

test("chat prompt rendering is the official World format", () => {
  const messages = [
    { role: "system", content: "Be brief." }, { role: "user", content: "Hi\r\n\n\nthere " },
    { role: "assistant", content: " Hello." }, { role: "user", content: "Bye" },
  ] as const;
  assert.equal(renderChatPrompt(messages), formatConversation("Be brief.", [{ user: "Hi\nthere", assistant: " Hello." }, { user: "Bye" }]));
  assert.equal(renderChatPrompt(messages), "System: Be brief.\n\nUser: Hi\nthere\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:");
  assert.equal(renderChatPrompt([{ role: "user", content: "x" }], { user: "Bob", assistant: "Alice", system: "Sys" }), "Bob: x\n\nAlice:");
});

test("GET /v1/models, /health, /metrics", async (t) => {
  const r = srv(t);
  if (!r) return;
  const models = await r.client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [NAME]);
  assert.equal((await r.client.models.retrieve(NAME)).id, NAME);
  const health = await fetch(`${r.url}/health`); // no key needed: load balancers probe it
  assert.equal(health.status, 200);
  assert.equal(((await health.json()) as { status: string }).status, "ok");
  const prom = await fetch(`${r.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } });
  assert.match(await prom.text(), /^rwkv_prompt_tokens_cached_total \d+$/m);
});

test("chat non-streaming and streaming agree; usage; the reply is the official generate() output", async (t) => {
  const r = srv(t);
  if (!r) return;
  const messages = [{ role: "system", content: "You are terse." }, { role: "user", content: "Tell me a story." }] as const;
  const body = { messages: [...messages], max_tokens: 24, temperature: 0.8, top_p: 0.9, seed: 42 };
  const res = await r.client.chat.completions.create({ model: NAME, ...body });
  assert.equal(res.object, "chat.completion");
  assert.match(res.id, /^chatcmpl-/);
  assert.equal(res.model, NAME);
  assert.ok(Number.isInteger(res.created));
  const choice = res.choices[0];
  assert.equal(choice.message.role, "assistant");
  const prompt = renderChatPrompt(messages);
  assert.deepEqual(res.usage && { p: res.usage.prompt_tokens, t: res.usage.total_tokens },
    { p: tok.encode(prompt).length, t: tok.encode(prompt).length + res.usage!.completion_tokens });
  assert.ok(choice.finish_reason === "length" ? res.usage!.completion_tokens === 24 : choice.finish_reason === "stop");

  // The same request through the core generator: same tokens (seeded), same stop at "\n\n".
  const it = generate(model!, tok, { prompt }, {
    maxTokens: 24, seed: 42, sampler: { temperature: 0.8, topP: 0.9, topK: 0, minP: 0 },
    penalties: { presencePenalty: 0, frequencyPenalty: 0, penaltyDecay: 0.996 }, stop: ["\n\n"],
  });
  let g = await it.next();
  while (!g.done) g = await it.next();
  assert.equal(choice.message.content, g.value.text.replace(/^\s+/, ""));

  const s = await streamChat(r, { ...body, stream_options: { include_usage: true } });
  assert.equal(s.text, choice.message.content);
  assert.equal(s.finish, choice.finish_reason);
  assert.ok(s.chunks >= 2, "streamed in pieces");
  assert.equal(s.usage?.completion_tokens, res.usage!.completion_tokens);
  const noUsage = await streamChat(r, body);
  assert.equal(noUsage.usage, null, "usage only when stream_options.include_usage");
});

test("completions: text, token-id prompt, stop sequences (string and array, streaming too), seeds", async (t) => {
  const r = srv(t);
  if (!r) return;
  const c = r.client.completions;
  const base = { model: NAME, prompt: "The king said", max_tokens: 30, ...GREEDY };
  const full = await c.create(base);
  assert.equal(full.object, "text_completion");
  assert.match(full.id, /^cmpl-/);
  assert.equal(full.choices[0].finish_reason, "length");
  assert.deepEqual([full.usage!.prompt_tokens, full.usage!.completion_tokens], [13, 30]);
  const text = full.choices[0].text;
  const ids = await c.create({ ...base, prompt: tok.encode("The king said") });
  assert.equal(ids.choices[0].text, text);

  const stop = text.slice(6, 9);
  const cut = text.slice(0, text.indexOf(stop));
  const stopped = await c.create({ ...base, stop });
  assert.deepEqual([stopped.choices[0].text, stopped.choices[0].finish_reason], [cut, "stop"]);
  const arr = await c.create({ ...base, stop: ["\u0000never", stop] });
  assert.equal(arr.choices[0].text, cut);
  let streamed = "", finish = null;
  for await (const ch of await c.create({ ...base, stop, stream: true })) {
    assert.equal(ch.object, "text_completion");
    streamed += ch.choices[0].text;
    finish = ch.choices[0].finish_reason ?? finish;
  }
  assert.deepEqual([streamed, finish], [cut, "stop"]);

  const sampled = { ...base, temperature: 1, top_p: 0.95, max_tokens: 20 };
  const a = await c.create({ ...sampled, seed: 7 }), b = await c.create({ ...sampled, seed: 7 }), d = await c.create({ ...sampled, seed: 8 });
  assert.equal(a.choices[0].text, b.choices[0].text);
  assert.notEqual(a.choices[0].text, d.choices[0].text);
});

test("presence/frequency penalties and logit_bias change the output", async (t) => {
  const r = srv(t);
  if (!r) return;
  const base = { model: NAME, prompt: "The king said", max_tokens: 20, ...GREEDY };
  const plain = (await r.client.completions.create(base)).choices[0].text;
  const penalized = (await r.client.completions.create({ ...base, frequency_penalty: 2, presence_penalty: 2 })).choices[0].text;
  assert.notEqual(penalized, plain);
  // Ban the first greedy byte: the output must start differently and never contain it.
  const first = tok.encode(plain)[0];
  const biased = (await r.client.completions.create({ ...base, logit_bias: { [String(first)]: -100 } })).choices[0].text;
  assert.ok(!tok.encode(biased).includes(first), biased);
});

/** A raw request; returns the status and the parsed error object. */
async function raw(r: Running, path: string, init: RequestInit & { key?: string | null } = {}) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (init.key !== null) headers.authorization = `Bearer ${init.key ?? KEY}`;
  const res = await fetch(`${r.url}${path}`, { method: "POST", ...init, headers });
  const body = (await res.json()) as { error?: { message: string; type: string; param: string | null; code: string | null } };
  return { status: res.status, error: body.error, headers: res.headers };
}

test("errors: OpenAI error objects with the right status (400, 401, 404, 405, 413)", async (t) => {
  const r = srv(t);
  if (!r) return;
  const chat = (extra: Record<string, unknown>) => JSON.stringify({ model: NAME, messages: [{ role: "user", content: "hi" }], ...extra });
  const expect400 = async (body: string, param: string | null, code?: string) => {
    const { status, error } = await raw(r, "/v1/chat/completions", { body });
    assert.equal(status, 400, body);
    assert.equal(error?.type, "invalid_request_error", body);
    assert.equal(error?.param, param, body);
    if (code) assert.equal(error?.code, code, body);
    assert.ok(error!.message.length > 0);
  };
  await expect400("{not json", null, "invalid_json");
  await expect400("[1, 2]", null, "invalid_json");
  await expect400(chat({ temperature: 2.5 }), "temperature");
  await expect400(chat({ temperature: "hot" }), "temperature", "invalid_type");
  await expect400(chat({ top_p: 1.5 }), "top_p");
  await expect400(chat({ presence_penalty: -3 }), "presence_penalty");
  await expect400(chat({ frequency_penalty: 2.1 }), "frequency_penalty");
  await expect400(chat({ max_tokens: 0 }), "max_tokens");
  await expect400(chat({ max_tokens: MAX_TOKENS_LIMIT + 1 }), "max_tokens");
  await expect400(chat({ max_completion_tokens: 1.5 }), "max_completion_tokens", "invalid_type");
  await expect400(chat({ n: 0 }), "n");
  await expect400(chat({ n: 17 }), "n");
  await expect400(chat({ stop: ["a", "b", "c", "d", "e"] }), "stop");
  await expect400(chat({ stop: 5 }), "stop", "invalid_type");
  await expect400(chat({ seed: 1.5 }), "seed", "invalid_type");
  await expect400(chat({ logit_bias: { 999: 1 } }), "logit_bias");
  await expect400(chat({ logit_bias: { 5: 101 } }), "logit_bias");
  await expect400(chat({ audio: { voice: "x" } }), "audio", "unsupported_parameter");
  await expect400(chat({ stream_options: { include_usage: true } }), "stream_options");
  await expect400(chat({ messages: [] }), "messages");
  await expect400(chat({ messages: [{ role: "wizard", content: "x" }] }), "messages[0].role");
  await expect400(JSON.stringify({ messages: [{ role: "user", content: "x" }] }), "model", "missing_required_parameter");
  await expect400(chat({ messages: [{ role: "user", content: "x".repeat(MAX_PROMPT_TOKENS) }] }), "messages", "context_length_exceeded");

  // Through the official client: typed errors carrying our error object.
  await assert.rejects(r.client.chat.completions.create({ model: NAME, messages: [{ role: "user", content: "hi" }], temperature: 3 }),
    (e: unknown) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "temperature");
  await assert.rejects(r.client.completions.create({ model: "gpt-4", prompt: "x" }),
    (e: unknown) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found" && e.param === "model");
  const wrongKey = new OpenAI({ baseURL: `${r.url}/v1`, apiKey: "nope", maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError && e.code === "invalid_api_key");

  for (const key of [null, "wrong"]) {
    const res = await raw(r, "/v1/chat/completions", { body: chat({}), key });
    assert.deepEqual([res.status, res.error?.code, res.error?.type], [401, "invalid_api_key", "invalid_request_error"]);
  }
  const notFound = await raw(r, "/v1/nothing", { body: "{}" });
  assert.deepEqual([notFound.status, notFound.error?.code], [404, "unknown_url"]);
  const method = await raw(r, "/v1/chat/completions", { method: "GET" });
  assert.deepEqual([method.status, method.error?.code, method.headers.get("allow")], [405, "method_not_allowed", "POST"]);
  const big = await raw(r, "/v1/completions", { body: JSON.stringify({ model: NAME, prompt: "x".repeat(BODY_LIMIT) }) });
  assert.deepEqual([big.status, big.error?.code], [413, "request_too_large"]);
  // A chunked upload (no Content-Length) is cut off at the limit too.
  const chunks = new ReadableStream<Uint8Array>({
    start(c) { for (let i = 0; i < 4; i++) c.enqueue(new Uint8Array(BODY_LIMIT / 2).fill(0x20)); c.close(); },
  });
  const chunked = await raw(r, "/v1/completions", { body: chunks, duplex: "half" } as RequestInit);
  assert.equal(chunked.status, 413);
  // The server still works afterwards.
  assert.equal((await r.client.completions.create({ model: NAME, prompt: "ok", max_tokens: 2 })).choices.length, 1);
});

test("no cross-talk: 16 concurrent seeded streams equal the same requests run alone", async (t) => {
  const r = srv(t);
  if (!r) return;
  const before = await metrics(r);
  const requests = Array.from({ length: 16 }, (_, i) => ({
    messages: [{ role: "user" as const, content: `Question number ${i}: ${"why ".repeat(i % 5)}is the sky blue?` }],
    max_tokens: 20 + (i % 4) * 4, temperature: 1, top_p: 0.9, seed: 1000 + i, presence_penalty: i % 2 ? 0.5 : 0,
  }));
  const together = await Promise.all(requests.map((q) => streamChat(r, q)));
  const during = await metrics(r);
  assert.ok(during.decode_batch_max >= 8, `requests were decoded together (largest batch ${during.decode_batch_max})`);
  assert.ok(during.decode_tokens_total - before.decode_tokens_total > 2 * (during.decode_steps_total - before.decode_steps_total), "mean batch > 2");
  // Alone: one slot and no prefix cache, so each request is recomputed from scratch by itself.
  const solo = await start({ slots: 1, cacheBytes: 0 });
  for (let i = 0; i < requests.length; i++) {
    const alone: OpenAI.Chat.ChatCompletion = await solo.client.chat.completions.create({ model: NAME, ...requests[i] });
    assert.equal(together[i].text, alone.choices[0].message.content, `request ${i}`);
    assert.equal(together[i].finish, alone.choices[0].finish_reason, `request ${i}`);
  }
  assert.ok(new Set(together.map((x) => x.text)).size > 8, "different seeds and prompts give different replies");
  await solo.server.shutdown(0);
});

test("prefix cache: the second turn of a conversation processes only its new tokens", async (t) => {
  const r = srv(t);
  if (!r) return;
  const turn1 = [{ role: "system", content: "A conversation about cheese." }, { role: "user", content: "Which cheese is the best one for a sandwich?" }] as const;
  const first = await r.client.chat.completions.create({ model: NAME, messages: [...turn1], max_tokens: 16, ...GREEDY });
  assert.equal(first.usage?.prompt_tokens_details?.cached_tokens, 0);
  const reply = first.choices[0].message.content ?? "";
  const turn2 = [...turn1, { role: "assistant", content: reply }, { role: "user", content: "And for pizza?" }] as const;
  const m0 = await metrics(r);
  const second = await r.client.chat.completions.create({ model: NAME, messages: [...turn2], max_tokens: 8, ...GREEDY });
  const m1 = await metrics(r);
  const newTokens = tok.encode("User: And for pizza?\n\nAssistant:").length;
  const u = second.usage!;
  assert.equal(u.prompt_tokens, tok.encode(renderChatPrompt(turn2)).length);
  assert.equal(u.prompt_tokens_details?.cached_tokens, u.prompt_tokens - newTokens, "only the new user turn was prefilled");
  assert.equal(m1.prompt_tokens_processed_total - m0.prompt_tokens_processed_total, newTokens);
  assert.equal(m1.prompt_tokens_cached_total - m0.prompt_tokens_cached_total, u.prompt_tokens - newTokens);
  // Same answer as from a cold server (the cached state is exactly the recomputed one).
  const cold = await start({ cacheBytes: 0 });
  const again = await cold.client.chat.completions.create({ model: NAME, messages: [...turn2], max_tokens: 8, ...GREEDY });
  assert.equal(again.usage?.prompt_tokens_details?.cached_tokens, 0);
  assert.equal(again.choices[0].message.content, second.choices[0].message.content);
  await cold.server.shutdown(0);
});

test("queue full → 429; a client that disconnects frees its slot at once and stops generating", async (t) => {
  if (!srv(t)) return;
  const r = await start({ slots: 1, queue: 1 });
  const long = { messages: [{ role: "user" as const, content: "Talk forever." }], max_tokens: 2500, ...GREEDY, stop: "\u0000" };
  const open = async () => {
    const stream = await r.client.chat.completions.create({ model: NAME, stream: true, ...long });
    const it = stream[Symbol.asyncIterator]();
    await it.next(); // role chunk
    return { stream, it };
  };
  const a = await open();
  await a.it.next(); // first content: A holds the slot
  const b = await open(); // accepted (headers sent), waiting in the queue
  const m0 = await metrics(r);
  assert.deepEqual([m0.slots_active, m0.queue_length], [1, 1]);
  await assert.rejects(r.client.chat.completions.create({ model: NAME, ...long }),
    (e: unknown) => e instanceof OpenAI.RateLimitError && e.status === 429 && e.code === "queue_full");

  a.stream.controller.abort();
  await until("A cancelled and B admitted", async () => { const m = await metrics(r); return m.requests_cancelled_total === 1 && m.queue_length === 0; });
  assert.equal((await b.it.next()).done, false, "B streams once A is gone");
  b.stream.controller.abort();
  await until("slot freed", async () => (await metrics(r)).slots_active === 0, 2000);
  const m1 = await metrics(r);
  assert.equal(m1.requests_cancelled_total, 2);
  assert.ok(m1.completion_tokens_total < 2 * 2500);
  await new Promise((res) => setTimeout(res, 100));
  assert.equal((await metrics(r)).completion_tokens_total, m1.completion_tokens_total, "no tokens generated after the disconnects");
  await r.server.shutdown(0);
});

test("a long prompt is prefilled in chunks between decode steps: other streams keep flowing", async (t) => {
  if (!srv(t)) return;
  const CHUNK = 16, PROMPT = 1600;
  const r = await start({ slots: 2, prefillChunk: CHUNK, maxPromptTokens: 4000 });
  const stream = await r.client.completions.create({ model: NAME, prompt: "Once", max_tokens: 2500, ...GREEDY, stream: true });
  const it = stream[Symbol.asyncIterator]();
  await it.next();
  let chunks = 0, counting = true;
  const reading = (async () => { while (counting && !(await it.next()).done) chunks++; })();
  const long = await r.client.completions.create({ model: NAME, prompt: "ab ".repeat(PROMPT).slice(0, PROMPT), max_tokens: 1 });
  counting = false;
  assert.equal(long.usage?.prompt_tokens, PROMPT);
  // One decode step per prefill chunk: about PROMPT / CHUNK = 100 tokens streamed meanwhile, not ~0.
  assert.ok(chunks >= PROMPT / CHUNK / 2, `only ${chunks} chunks streamed during the long prefill`);
  stream.controller.abort();
  await reading.catch(() => {});
  await r.server.shutdown(0);
});

test("shutdown after the grace period cancels what is left with a server error", async (t) => {
  if (!srv(t)) return;
  const r = await start({ slots: 2 });
  const stream = await r.client.chat.completions.create({ model: NAME, stream: true, messages: [{ role: "user", content: "x" }], max_tokens: 2500, ...GREEDY, stop: "\u0000" });
  const it = stream[Symbol.asyncIterator]();
  await it.next();
  const done = r.server.shutdown(100);
  await assert.rejects((async () => { for (;;) if ((await it.next()).done) return; })(), (e: unknown) => e instanceof OpenAI.APIError && /shut down/.test(e.message));
  assert.deepEqual(await done, { cancelled: 1 });
});

test("rwkv serve: SIGTERM lets in-flight requests finish, refuses new ones, exits 0", async (t) => {
  if (!srv(t)) return;
  const bin = join(import.meta.dirname, "..", "src", "node", "bin.js");
  const child = spawn(process.execPath, [bin, "serve", MODEL_PATH, "--port", "0", "--model-name", NAME, "--slots", "2", "--shutdown-grace", "20"], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log);
      if (m) resolve(Number(m[1]));
    });
    child.once("exit", () => reject(new Error(`server exited early: ${log}`)));
  });
  const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "x", maxRetries: 0 });
  const N = 60;
  const requests = [0, 1].map(async (i) => {
    const stream = await client.completions.create({ model: NAME, prompt: `Story ${i}:`, max_tokens: N, ...GREEDY, stream: true, stream_options: { include_usage: true } });
    let first: () => void = () => {};
    const gotFirst = new Promise<void>((r) => { first = r; });
    const all = (async () => {
      let finish = null, tokens = 0;
      for await (const c of stream) { first(); finish = c.choices[0]?.finish_reason ?? finish; if (c.usage) tokens = c.usage.completion_tokens; }
      return { finish, tokens };
    })();
    await gotFirst;
    return { all }; // wrapped: an async function returning the promise itself would wait for it
  });
  // Both streams have started (and are still running): now the signal.
  const pending = (await Promise.all(requests)).map((r) => r.all);
  child.kill("SIGTERM");
  await until("draining", async () => /SIGTERM/.test(log));
  await assert.rejects(fetch(`http://127.0.0.1:${port}/health`), "no new connections while draining");
  const results = await Promise.all(pending);
  assert.deepEqual(results, [{ finish: "length", tokens: N }, { finish: "length", tokens: N }]);
  assert.equal(await exited, 0, log);
  assert.match(log, /stopped/);
});

/** The tiny v7 with its embedding and head zero-padded to the World vocabulary's 65536 ids. */
function worldModel(path: string): Model {
  const { checkpoint, close } = loadCheckpoint(path);
  try {
    const tensors = new Map(checkpoint.tensors);
    for (const name of ["emb.weight", "head.weight"]) {
      const e = checkpoint.tensors.get(name)!;
      const wide: TensorEntry = {
        name, dtype: "f32", shape: [WORLD_VOCAB_SIZE, e.shape[1]],
        toFloat32: () => { const out = new Float32Array(WORLD_VOCAB_SIZE * e.shape[1]); out.set(e.toFloat32()); return out; },
      };
      tensors.set(name, wide);
    }
    const ckpt: Checkpoint = { ...checkpoint, tensors };
    const version = detectVersion(ckpt);
    return buildModel(ckpt, architectureFor(version, path), version, selectBackend());
  } finally {
    close();
  }
}

test("a World-vocabulary model answers a chat request (token 0 ends generation)", async (t) => {
  if (!srv(t)) return;
  const vocab = join(SHARED, "tokenizers", "rwkv_vocab_v20230424.txt");
  const world = loadTokenizer({ kind: "world", path: vocab });
  const r = await start({}, worldModel(MODEL_PATH), world);
  const res = await r.client.chat.completions.create({ model: NAME, messages: [{ role: "user", content: "Hello there" }], max_tokens: 4, ...GREEDY });
  assert.equal(res.usage?.prompt_tokens, world.encode("User: Hello there\n\nAssistant:").length);
  assert.ok(res.usage!.completion_tokens <= 4);
  assert.ok(["stop", "length"].includes(res.choices[0].finish_reason));
  await r.server.shutdown(0);
});
