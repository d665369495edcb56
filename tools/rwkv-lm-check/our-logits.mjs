// Prints rwkv-ts's logits after each token of a sequence, as JSON [T][V], for check.py.
// Usage: node tools/rwkv-lm-check/our-logits.mjs MODEL_FILE 1,2,3,...   (after `npm run build`)
import process from "node:process";
import { loadModel } from "../../dist/src/node/index.js";

const [file, list] = process.argv.slice(2);
if (!file || !list) {
  process.stderr.write("usage: node our-logits.mjs MODEL_FILE TOKEN,TOKEN,...\n");
  process.exit(2);
}
const tokens = list.split(",").map(Number);
const model = await loadModel(file);
const state = model.initState();
const rows = [];
for (const t of tokens) rows.push(Array.from(await model.forward([t], state)));
process.stdout.write(JSON.stringify({ backend: model.backend.name, logits: rows }));
