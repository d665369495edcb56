import assert from "node:assert/strict";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import { Decoding } from "../src/core/decoding.js";
import { generate } from "../src/core/generate.js";
import type { Model } from "../src/core/model/model.js";
import { State } from "../src/core/model/state.js";
import { loadTokenizer } from "../src/node/tokenizer.js";

/*
 * A token of generation costs the same at the 50,000th as at the first: nothing per token may
 * grow with the text generated so far. Decoding used to slice and search one ever-growing string
 * every token, which copies all of it (100k tokens took 17x as long as 20k). Timing that on a shared
 * machine is too noisy to tell 10x from 20x, so the test counts the work instead: the characters
 * of every string that String.prototype.slice / indexOf / endsWith run on during a generation.
 * Linear work gives a 50k/5k ratio near 10, the old code's near 100. The model is a stub with fixed
 * logits, so only generate()'s and Decoding's own work is counted.
 */

const V = 64;
const bytes = loadTokenizer({ kind: "bytes" });

/** Fixed logits favouring printable bytes, so the text grows by about a character a token. */
function stubModel(): Model {
  const logits = new Float32Array(V).map((_, i) => (i >= 32 ? Math.sin(i) : -20));
  return {
    config: { version: "7", nLayer: 1, nEmbd: 1, nHead: 1, headSize: 1, vocabSize: V, dimFfn: 1, dimAtt: 1 },
    backend: referenceBackend, fingerprint: "stub",
    initState: () => new State("7", [{}]),
    useTimeState: () => { throw new Error("the stub model has no time_state"); },
    step: async () => logits,
    forward: async () => logits,
    stepBatch: async (tokens) => new Float32Array(tokens.length * V),
  };
}

const STRING_METHODS = ["slice", "indexOf", "endsWith"] as const;

/** Runs f with the length of every string those methods run on added up; returns f's result and the sum. */
async function countStringWork<R>(f: () => Promise<R>): Promise<{ result: R; chars: number }> {
  let chars = 0;
  const proto = String.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  const originals = STRING_METHODS.map((m) => proto[m]);
  STRING_METHODS.forEach((m, i) => {
    const fn = originals[i];
    proto[m] = function (this: string, ...a: unknown[]) { chars += this.length; return fn.apply(this, a); };
  });
  try {
    return { result: await f(), chars };
  } finally {
    STRING_METHODS.forEach((m, i) => { proto[m] = originals[i]; });
  }
}

/** Generates `tokens` tokens; the output's length and the string work it took. */
async function run(tokens: number): Promise<{ textLength: number; chars: number }> {
  // A stop string that never occurs: the search for it and the held-back tail run every token.
  const { result, chars } = await countStringWork(async () => {
    const it = generate(stubModel(), bytes, { prompt: "a" }, { maxTokens: tokens, seed: 1, stop: ["\u0000never"] });
    let r = await it.next();
    let n = 0;
    for (; !r.done; r = await it.next()) if (r.value.token !== null) n++;
    assert.equal(n, tokens);
    return r.value.text.length;
  });
  return { textLength: result, chars };
}

test("generation work is linear in its length: 50k tokens slice and search less than 14x the characters of 5k", async () => {
  const short = await run(5_000), long = await run(50_000);
  assert.ok(long.textLength > 45_000, `the text grew to ${long.textLength} characters`);
  assert.ok(short.chars > 0, "the counter counts");
  const ratio = long.chars / short.chars;
  assert.ok(ratio < 14, `50k tokens took ${ratio.toFixed(1)}x the string work of 5k (linear: 10, quadratic: 100)`);
});

test("long outputs: stop strings (short, and longer than the text kept for searching) cut at the same place; pieces join to the output", () => {
  const longStop = Array.from({ length: 300 }, (_, i) => String.fromCharCode(65 + (i % 26))).join(""); // ABC…Z repeated
  for (const [stop, before] of [["STOP", 1000], [longStop, 1500], ["STOP", 3]] as const) {
    const text = "x".repeat(before - 1) + "y" + stop + " and after";
    const dec = new Decoding(bytes, V + 64, { maxTokens: text.length + 10, stop: [stop, "never seen"], sampler: { temperature: 0 }, penalties: { presencePenalty: 0, frequencyPenalty: 0 } });
    const pieces: string[] = [];
    for (const ch of text) {
      const logits = new Float32Array(V + 64).fill(-10);
      logits[ch.charCodeAt(0)] = 10; // greedy: exactly this byte
      const s = dec.next(logits);
      pieces.push(s.text);
      if (s.finish) break;
    }
    assert.equal(dec.finishReason, "stop");
    assert.equal(dec.output, text.slice(0, before), `stop of ${stop.length} after ${before} characters`);
    assert.equal(pieces.join(""), dec.output);
  }
});
