/* global process, console, performance */
// Times llama.cpp (through node-llama-cpp, CPU) on one GGUF file the way `rwkv bench` times this
// project: decode = llama.cpp's own generation loop (greedy), one token at a time, per-token median;
// prefill = N prompt tokens from an empty sequence with the last token's logits returned, median of
// REPS. Prints one JSON line. run.mjs starts one process per file and thread count, so that each
// row's peak RSS is its own. Installed and run from a scratch directory (never the project).
//
// usage: node llama.mjs MODEL.gguf THREADS DECODE_TOKENS PREFILL_LIST REPS VOCAB
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const [path, threadsArg, decodeArg, prefillArg, repsArg, vocabArg] = process.argv.slice(2);
if (!path || !threadsArg || !decodeArg || !prefillArg || !repsArg || !vocabArg) {
  console.error("usage: node llama.mjs MODEL.gguf THREADS DECODE_TOKENS PREFILL_LIST REPS VOCAB");
  process.exit(2);
}
const threads = Number(threadsArg), decodeTokens = Number(decodeArg), reps = Number(repsArg), nVocab = Number(vocabArg);
const prefill = prefillArg.split(",").map(Number);
const WARMUP_TOKENS = 5;

const median = (v) => { const s = [...v].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
/** Pseudo-random prompt ids (xorshift), like rwkv.cpp's bench_rwkv: no special tokens. */
function tokens(n, vocab) {
  let x = 88172645463325252n;
  const out = [];
  for (let i = 0; i < n; i++) {
    x ^= (x << 13n) & 0xffffffffffffffffn; x ^= x >> 7n; x ^= (x << 17n) & 0xffffffffffffffffn;
    out.push(Number(x % BigInt(vocab - 2)) + 2);
  }
  return out;
}

const t0 = performance.now();
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: threads });
const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
const loadMs = performance.now() - t0;
const maxPrefill = Math.max(...prefill);
const context = await model.createContext({
  contextSize: Math.max(maxPrefill, decodeTokens + WARMUP_TOKENS) + 16,
  batchSize: maxPrefill, threads: { ideal: threads, min: threads }, sequences: 1,
});
const sequence = context.getSequence();

// Decode: the generation loop, greedy; the time between consecutive tokens.
const intervals = [];
let last = performance.now(), n = 0;
for await (const token of sequence.evaluate(tokens(1, nVocab), { temperature: 0 })) {
  void token;
  const now = performance.now();
  if (n >= WARMUP_TOKENS) intervals.push(now - last);
  last = now;
  if (++n >= decodeTokens + WARMUP_TOKENS) break;
}
const decodeTokS = 1000 / median(intervals);

// Prefill: a fresh sequence each time, logits of the last prompt token.
const prefillTokS = {};
for (const len of prefill) {
  const prompt = tokens(len, nVocab);
  const input = prompt.map((t, i) => (i === len - 1 ? [t, { generateNext: { logits: true } }] : t));
  const times = [];
  for (let r = 0; r <= reps; r++) {
    await sequence.clearHistory();
    const a = performance.now();
    const out = await sequence.controlledEvaluate(input);
    const ms = performance.now() - a;
    if (!out[len - 1]?.next?.logits) throw new Error(`${path}: no logits after ${len} tokens`);
    if (r > 0) times.push(ms); // the first run is a warm-up
  }
  prefillTokS[len] = (len * 1000) / median(times);
}
await context.dispose();
await model.dispose();
console.log(JSON.stringify({ engine: "llama.cpp", model: path, threads, loadMs, decodeTokS, prefillTokS, peakRssMb: process.resourceUsage().maxRSS / 1024 }));
