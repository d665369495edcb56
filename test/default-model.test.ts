import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { logProbAt } from "../src/core/eval.js";
import { DEFAULT_MODEL_NAME, defaultModelPath } from "../src/node/default-model.js";
import { loadModel } from "../src/node/load.js";
import { sharedPath } from "./shared.js";
import { runCaptured as run } from "./run-cli.js";

/*
 * The bundled model (models/rwkv7-shakespeare.safetensors) is what the README's main command runs
 * when no MODEL is given: it must be there, be the documented RWKV-7, and have learned its text.
 */

test("the bundled model is the documented byte-level RWKV-7 (4 x 128)", async () => {
  const model = await loadModel(defaultModelPath());
  const c = model.config;
  assert.deepEqual([c.version, c.nLayer, c.nEmbd, c.vocabSize, c.headSize], ["7", 4, 128, 256, 64]);
  const readme = readFileSync(join(import.meta.dirname, "..", "..", "models", "README.md"), "utf8");
  assert.match(readme, /bin\.js train --data \S*tinyshakespeare\/input\.txt/, "models/README.md documents the training command");
});

test("rwkv generate without MODEL uses the bundled model: same seed, same Shakespeare-like text", async () => {
  const args = ["generate", "--prompt", "ROMEO:", "--max-tokens", "120", "--seed", "3"];
  const a = await run(args), b = await run(args);
  assert.equal(a.code, 0, a.err);
  assert.equal(a.out, b.out);
  assert.ok(a.out.length >= 100, JSON.stringify(a.out));
  // A model that learned the play writes letters, spaces and its punctuation; random weights give arbitrary bytes.
  const plain = a.out.replace(/[^A-Za-z ,.;:'!?\n-]/g, "").length;
  assert.ok(plain / a.out.length > 0.97, `plain English characters: ${JSON.stringify(a.out)}`);
  assert.match(a.out, /\b(the|and|I|to|of|you|my|a)\b/, `common English words: ${JSON.stringify(a.out)}`);
  const other = await run([...args.slice(0, -1), "4"]);
  assert.notEqual(other.out, a.out, "another seed, another text");
});

test("the bundled model predicts held-out Shakespeare at under 1.7 nats per byte", async (t) => {
  const file = sharedPath(t, "data", "tinyshakespeare", "input.txt");
  if (!file) return;
  const bytes = readFileSync(file);
  // The last 10% was the validation split: never trained on. Score its first 4000 bytes.
  const start = Math.floor(bytes.length * 0.9);
  const tokens = [...bytes.subarray(start, start + 4000)];
  const model = await loadModel(defaultModelPath());
  const logits = await model.forward(tokens, model.initState(), { allLogits: true }); // (T, V)
  let nll = 0;
  for (let i = 0; i + 1 < tokens.length; i++) nll -= logProbAt(logits, i * 256, 256, tokens[i + 1]).logProb;
  const perByte = nll / (tokens.length - 1);
  assert.ok(perByte < 1.7 && perByte > 0.5, `validation loss ${perByte.toFixed(3)} nats/byte`);
});

test("a missing bundled model is a clear error naming the file", () => {
  assert.throws(() => defaultModelPath("/nonexistent-package-root"),
    (e: Error) => e.message.includes(join("/nonexistent-package-root", DEFAULT_MODEL_NAME)) && /missing: give a MODEL file/.test(e.message));
});
