import assert from "node:assert/strict";
import { test } from "node:test";
import { type GenerateInput, type GenerateOptions, type GenerationResult, generate } from "../src/core/generate.js";
import type { Model } from "../src/core/model/model.js";
import { PrefixCache } from "../src/core/prefix-cache.js";
import type { Tokenizer } from "../src/core/tokenizer/types.js";
import { loadModel } from "../src/node/load.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { sharedPath } from "./shared.js";

async function run(model: Model, tok: Tokenizer, input: GenerateInput, options: GenerateOptions): Promise<{ pieces: string[]; result: GenerationResult }> {
  const it = generate(model, tok, input, options);
  const pieces: string[] = [];
  for (;;) {
    const r = await it.next();
    if (r.done) return { pieces, result: r.value };
    pieces.push(r.value.text);
  }
}

async function tiny(t: import("node:test").TestContext) {
  const p = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!p) return null;
  return { model: await loadModel(p), tok: loadTokenizer({ kind: "bytes" }) };
}

const SAMPLED = { sampler: { temperature: 1, topP: 0.9 }, maxTokens: 40 };

test("same seed gives the same text three times; different seeds differ", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const outs = [];
  for (let i = 0; i < 3; i++) outs.push((await run(m.model, m.tok, { prompt: "Once upon" }, { ...SAMPLED, seed: 7 })).result.text);
  assert.equal(outs[0], outs[1]);
  assert.equal(outs[1], outs[2]);
  const other = (await run(m.model, m.tok, { prompt: "Once upon" }, { ...SAMPLED, seed: 8 })).result.text;
  assert.notEqual(other, outs[0]);

});

test("pieces concatenate to the result; logprobs are log-probabilities", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const it = generate(m.model, m.tok, { prompt: "The king" }, { ...SAMPLED, seed: 1 });
  let text = "";
  for (;;) {
    const r = await it.next();
    if (r.done) { assert.equal(text, r.value.text); assert.equal(r.value.finishReason, "length"); break; }
    text += r.value.text;
    assert.ok(r.value.logprob !== null && r.value.logprob <= 0 && r.value.logprob > -50);
  }
});

test("prefill in chunks gives exactly the same generation as one chunk", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const prompt = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n";
  const a = await run(m.model, m.tok, { prompt }, { ...SAMPLED, seed: 3, chunkLen: 256 });
  const b = await run(m.model, m.tok, { prompt }, { ...SAMPLED, seed: 3, chunkLen: 7 });
  assert.equal(a.result.text, b.result.text);
});

test("stop strings end generation before the string, even when it spans tokens; stop tokens too", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const greedy = { sampler: { temperature: 0, topK: 1 }, maxTokens: 30 };
  const free = await run(m.model, m.tok, { prompt: "The " }, greedy);
  const i = free.result.text.indexOf("e t");
  assert.ok(i > 0, `greedy text should contain "e t": ${JSON.stringify(free.result.text)}`);
  const stopped = await run(m.model, m.tok, { prompt: "The " }, { ...greedy, stop: ["e t"] });
  assert.equal(stopped.result.finishReason, "stop");
  assert.equal(stopped.result.text, free.result.text.slice(0, i));
  assert.equal(stopped.pieces.join(""), stopped.result.text); // the held-back "e" was never emitted
  const tokStop = await run(m.model, m.tok, { prompt: "The " }, { ...greedy, stopTokens: [" ".charCodeAt(0)] });
  assert.equal(tokStop.result.finishReason, "stop");
  assert.equal(tokStop.result.text, free.result.text.slice(0, free.result.text.indexOf(" ")));
});

test("prefix cache: the next turn runs only its new tokens and gives the same output", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const cache = new PrefixCache(64 * 1024 * 1024);
  const turn1 = "User: tell me about the king\n\nAssistant:";
  const r1 = await run(m.model, m.tok, { prompt: turn1, cache }, { ...SAMPLED, seed: 5 });
  const t1 = m.tok.encode(turn1);
  assert.equal(r1.result.promptTokensProcessed, t1.length);
  // The next turn's prompt is the history as tokens: turn 1, its reply, the new user message.
  const turn2 = [...t1, ...r1.result.tokens, ...m.tok.encode("\n\nUser: and the queen?\n\nAssistant:")];
  const cached = await run(m.model, m.tok, { prompt: turn2, cache }, { ...SAMPLED, seed: 9 });
  // The cache holds the state after turn 1's prompt and its reply (all but the last reply token).
  const newTokens = turn2.length - (t1.length + r1.result.tokens.length - 1);
  assert.equal(cached.result.promptTokensProcessed, newTokens);
  assert.ok(newTokens < turn2.length / 2);
  const uncached = await run(m.model, m.tok, { prompt: turn2 }, { ...SAMPLED, seed: 9 });
  assert.equal(uncached.result.promptTokensProcessed, turn2.length);
  assert.equal(cached.result.text, uncached.result.text);
  assert.ok(cache.hits >= 1);
});

test("prefix cache is bounded by its byte budget and evicts the least recently used", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const s = m.model.initState();
  const logits = await m.model.forward([1, 2, 3], s);
  const entry = 4 * (s.size + logits.length) + 8 * 3;
  const cache = new PrefixCache(2 * entry + 100);
  cache.store([1, 2, 3], s, logits);
  cache.store([4, 5, 6], s, logits);
  assert.ok(cache.lookup([1, 2, 3, 9])); // touch: [4,5,6] is now least recent
  cache.store([7, 8, 9], s, logits);
  assert.equal(cache.size, 2);
  assert.ok(cache.bytes <= cache.budgetBytes);
  assert.equal(cache.lookup([4, 5, 6]), null);
  assert.equal(cache.lookup([1, 2, 3])?.length, 3);
});

test("an aborted signal cancels generation promptly", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const ac = new AbortController();
  const it = generate(m.model, m.tok, { prompt: "The " }, { ...SAMPLED, maxTokens: 10_000, signal: ac.signal });
  let n = 0;
  for (;;) {
    const r = await it.next();
    if (r.done) { assert.equal(r.value.finishReason, "cancelled"); break; }
    if (++n === 5) ac.abort();
  }
  assert.equal(n, 5);
});

test("continuing from a result's state, rng and penalties equals one uninterrupted run", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const whole = await run(m.model, m.tok, { prompt: "The " }, { ...SAMPLED, seed: 11, maxTokens: 30 });
  const first = await run(m.model, m.tok, { prompt: "The " }, { ...SAMPLED, seed: 11, maxTokens: 12 });
  // The last sampled token was not fed yet: feed it as the prompt of the continuation.
  const r = first.result;
  const rest = await run(m.model, m.tok, { prompt: [r.tokens[r.tokens.length - 1]], state: r.state },
    { ...SAMPLED, maxTokens: 18, rng: r.rng, penaltyState: r.penalties });
  assert.equal(first.result.text + rest.result.text, whole.result.text);
});
