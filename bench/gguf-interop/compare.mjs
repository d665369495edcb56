/* global process, console */
// Loads GGUF files written by `rwkv convert` into llama.cpp (through node-llama-cpp) and into this
// project, feeds both the same tokens from a zero state, and reports max |logit difference| at
// every position. Run it through run.sh, which installs node-llama-cpp outside the project.
//
// usage: node compare.mjs REPO_DIST_DIR TOKENS_JSON MODEL.gguf...
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const [dist, tokensFile, ...models] = process.argv.slice(2);
if (!dist || !tokensFile || models.length === 0) {
  console.error("usage: node compare.mjs REPO_DIST_DIR TOKENS_JSON MODEL.gguf...");
  process.exit(2);
}
const { loadModel } = await import(pathToFileURL(join(dist, "src/node/load.js")).href);
const tokens = JSON.parse(readFileSync(tokensFile, "utf8"));

// CPU only: the numbers must not depend on a GPU being present.
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const results = [];
for (const path of models) {
  const ours = await loadModel(path);
  const V = ours.config.vocabSize;
  const mine = await ours.forward(tokens, ours.initState(), { allLogits: true });

  const model = await llama.loadModel({ modelPath: path });
  const context = await model.createContext({ contextSize: Math.max(64, tokens.length + 1), batchSize: tokens.length });
  const sequence = context.getSequence();
  // Raw logits after every input token (no sampling, no penalties).
  const out = await sequence.controlledEvaluate(tokens.map((t) => [t, { generateNext: { logits: true } }]));
  let maxAll = 0, maxLast = 0, argmaxAgree = 0;
  for (let t = 0; t < tokens.length; t++) {
    const logits = out[t]?.next.logits;
    if (!logits || logits.size !== V) throw new Error(`${path}: llama.cpp returned ${logits?.size ?? 0} logits at position ${t}, expected ${V}`);
    let d = 0, bestL = -Infinity, bestLi = -1, bestM = -Infinity, bestMi = -1;
    for (let i = 0; i < V; i++) {
      const l = logits.get(i), m = mine[t * V + i];
      d = Math.max(d, Math.abs(l - m));
      if (l > bestL) { bestL = l; bestLi = i; }
      if (m > bestM) { bestM = m; bestMi = i; }
    }
    maxAll = Math.max(maxAll, d);
    if (t === tokens.length - 1) maxLast = d;
    if (bestLi === bestMi) argmaxAgree++;
  }
  let scale = 0;
  for (const x of mine) scale = Math.max(scale, Math.abs(x));
  results.push({ model: path.split("/").pop(), positions: tokens.length, maxAbsDiffLastToken: maxLast, maxAbsDiffAllPositions: maxAll, maxAbsLogit: scale, argmaxAgree: `${argmaxAgree}/${tokens.length}` });
  await context.dispose();
  await model.dispose();
}
console.table(results);
console.log(JSON.stringify(results));
