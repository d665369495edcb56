import assert from "node:assert/strict";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import { generate } from "../src/core/generate.js";
import type { Model } from "../src/core/model/model.js";
import { yieldToEventLoop } from "../src/core/yield.js";
import { benchModel } from "../src/node/bench/measure.js";
import { loadTokenizer } from "../src/node/tokenizer.js";

/*
 * Long loops give the event loop a turn between tokens: a timer set before a generation starts
 * fires while it runs, and two generations on one model interleave and still equal each alone.
 * Model: a small random RWKV-7 over the byte vocabulary (no stop token: it runs to maxTokens).
 */

const V = 256;
function small(): Model {
  return benchModel({ random: { version: "7", nLayer: 1, nEmbd: 64, vocabSize: V, seed: 11 } }, "f32", referenceBackend);
}
const bytes = loadTokenizer({ kind: "bytes" });

test("yieldToEventLoop lets a timer run: a 0 ms timeout fires within a bounded number of yields", async () => {
  let fired = false;
  setTimeout(() => { fired = true; }, 0);
  let turns = 0;
  // A microtask "yield" would spin here forever (the timer never gets a turn); the bound turns that into a failure.
  while (!fired && turns < 100_000) { await yieldToEventLoop(); turns++; }
  assert.ok(fired, `the timer did not fire in ${turns} yields`);
});

test("a timer fires during a long generation, not after it", async () => {
  const model = small();
  const TOKENS = 2000;
  let produced = 0, ticks = 0, firstTickAt = -1;
  const timer = setInterval(() => { ticks++; if (firstTickAt < 0) firstTickAt = produced; }, 1);
  try {
    for await (const piece of generate(model, bytes, { prompt: "hello" }, { maxTokens: TOKENS, seed: 1 })) if (piece.token !== null) produced++;
  } finally {
    clearInterval(timer);
  }
  assert.equal(produced, TOKENS);
  assert.ok(ticks > 0 && firstTickAt >= 0 && firstTickAt < TOKENS, `the timer first ran after ${firstTickAt} of ${TOKENS} tokens (${ticks} ticks)`);
});

test("two generations on one model at once interleave and equal each run alone", async () => {
  const model = small();
  const opts = (seed: number) => ({ maxTokens: 300, seed, sampler: { temperature: 1 } });
  const collect = async (prompt: string, seed: number, log: string[]) => {
    const out: number[] = [];
    for await (const p of generate(model, bytes, { prompt }, opts(seed))) { if (p.token !== null) { out.push(p.token); log.push(prompt); } }
    return out;
  };
  const aloneA = await collect("first", 1, []), aloneB = await collect("second", 2, []);
  const log: string[] = [];
  const [a, b] = await Promise.all([collect("first", 1, log), collect("second", 2, log)]);
  assert.deepEqual(a, aloneA);
  assert.deepEqual(b, aloneB);
  // Interleaved: the token log switches between the two many times (not one after the other).
  let switches = 0;
  for (let i = 1; i < log.length; i++) if (log[i] !== log[i - 1]) switches++;
  assert.ok(switches > 100, `only ${switches} switches between the two generations`);
});
