import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Decoding } from "../../src/core/decoding.js";
import { compileConstraint } from "../../src/core/grammar/index.js";
import { randomCheckpoint } from "../../src/core/model/random.js";
import { architectureFor, detectVersion } from "../../src/core/model/detect.js";
import { buildModel } from "../../src/core/model/model.js";
import { parseWorldVocab, WorldTokenizer } from "../../src/core/tokenizer/world.js";
import { selectBackend } from "../../src/core/backend/registry.js";
import "../../src/node/load.js"; // registers the threaded wasm backend

/*
 * Time per generated token with and without a JSON Schema constraint on the 0.1B-shaped random
 * RWKV-7 (12 layers, width 768, World vocabulary of 65,536 tokens): model step + sampling, and the
 * mask's share. Usage: node dist/bench/grammar/overhead.js [SHARED_DIR] [TOKENS] [ROUNDS]
 */

const shared = process.argv[2] ?? join(import.meta.dirname, "..", "..", "..", "..", "shared");
const tokens = Number(process.argv[3] ?? 64);
const rounds = Number(process.argv[4] ?? 5);
const world = new WorldTokenizer(parseWorldVocab(readFileSync(join(shared, "tokenizers", "rwkv_vocab_v20230424.txt"), "utf8")));
const ckpt = randomCheckpoint({ version: "7", nLayer: 12, nEmbd: 768, vocabSize: 65536 });
const version = detectVersion(ckpt);
const model = buildModel(ckpt, architectureFor(version, ckpt.source), version, selectBackend());
const schema = { type: "object", properties: { name: { type: "string", maxLength: 40 }, age: { type: "integer" }, tags: { type: "array", items: { type: "string", maxLength: 12 }, maxItems: 4 }, kind: { enum: ["a", "b", "c"] } }, required: ["name", "age", "tags", "kind"] };
const t = performance.now();
const grammar = compileConstraint({ kind: "json_schema", schema }, world, 65536);
const compileMs = performance.now() - t;

/** ms per token in all (step + sampling) and in Decoding.next alone (sampling, and the mask when constrained). */
async function run(constrained: boolean, seed: number): Promise<{ msPerToken: number; sampleMsPerToken: number; n: number }> {
  const state = model.initState();
  let logits = await model.forward(world.encode("User: give me JSON\n\nAssistant:"), state);
  const dec = new Decoding(world, 65536, { maxTokens: tokens, seed, sampler: { temperature: 1, topP: 0.9 }, stopTokens: [0], grammar: constrained ? grammar : undefined });
  let n = 0, sampleMs = 0;
  const t0 = performance.now();
  for (;;) {
    const ts = performance.now();
    const s = dec.next(logits);
    sampleMs += performance.now() - ts;
    if (s.token !== null) n++;
    if (!s.feed) break;
    logits = await model.step(s.token!, state);
  }
  return { msPerToken: (performance.now() - t0) / Math.max(n, 1), sampleMsPerToken: sampleMs / Math.max(n, 1), n };
}

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
type Row = Awaited<ReturnType<typeof run>>;
const plain: Row[] = [], constrained: Row[] = [];
for (let r = 0; r < rounds; r++) { // rows take turns so both see the same machine load
  plain.push(await run(false, r));
  constrained.push(await run(true, r));
}
const f = (x: number) => +x.toFixed(2);
const med = (rows: Row[], k: "msPerToken" | "sampleMsPerToken") => f(median(rows.map((r) => r[k])));
console.log(JSON.stringify({
  tokensPerRun: tokens, rounds, compileAndTrieMs: f(compileMs),
  plain: { msPerToken: med(plain, "msPerToken"), sampleMsPerToken: med(plain, "sampleMsPerToken") },
  schema: { msPerToken: med(constrained, "msPerToken"), sampleMsPerToken: med(constrained, "sampleMsPerToken"), tokens: constrained.map((r) => r.n),
    sampleMsPerTokenByRound: constrained.map((r) => f(r.sampleMsPerToken)) },
}));
