import type { Matrix } from "../../src/core/backend/backend.js";
import { WasmTensorKernels } from "../../src/core/backend/wasm-tensors.js";
import { loadModel } from "../../src/node/index.js";

/*
 * Where a decoded token's time goes on the wasm backend: every WasmTensorKernels method (the one
 * kernel table the models run through) timed around its outermost calls while a model decodes, in
 * ms per token, calls per token and µs per call; matmuls apart by shape and stored type.
 *
 * Usage: npm run build && node --experimental-wasm-relaxed-simd dist/bench/kernels/ops.js FILE [THREADS] [TOKENS]
 * (defaults 1 thread, 200 tokens after 30 of warm-up). The timing wraps add about a microsecond per
 * call, so compare two builds with this tool, not its totals with `rwkv bench`.
 */

const [file, threadsArg = "1", tokensArg = "200"] = process.argv.slice(2);
if (!file) {
  console.error("usage: ops.js FILE [THREADS] [TOKENS]");
  process.exit(2);
}
const threads = Number(threadsArg), tokens = Number(tokensArg);
if (!Number.isInteger(threads) || threads < 1 || !Number.isInteger(tokens) || tokens < 1) {
  console.error(`ops.js: THREADS and TOKENS must be positive integers (got ${threadsArg}, ${tokensArg})`);
  process.exit(2);
}

type Method = (this: WasmTensorKernels, ...args: unknown[]) => unknown;
const table = WasmTensorKernels.prototype as unknown as Record<string, Method>;
const spent = new Map<string, { ms: number; calls: number }>();
let depth = 0;
for (const name of Object.getOwnPropertyNames(WasmTensorKernels.prototype)) {
  const f = table[name];
  if (name === "constructor" || typeof f !== "function") continue;
  table[name] = function (this: WasmTensorKernels, ...args: unknown[]): unknown {
    if (depth > 0) return f.apply(this, args); // a kernel calling another: counted in the outer one
    depth++;
    const t0 = performance.now();
    try {
      return f.apply(this, args);
    } finally {
      depth--;
      const W = name === "matmul" ? (args[2] as Matrix) : undefined;
      const key = W ? `matmul ${W.rows}x${W.cols} ${W.type}` : name;
      const e = spent.get(key) ?? { ms: 0, calls: 0 };
      e.ms += performance.now() - t0;
      e.calls++;
      spent.set(key, e);
    }
  };
}

const model = await loadModel(file, { threads, verify: false, backend: "wasm" }).catch((e: unknown) => {
  console.error(`ops.js: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(2);
});
const state = model.initState();
let token = 1;
const next = (): number => (token = (token * 31 + 7) % model.config.vocabSize);
for (let i = 0; i < 30; i++) await model.step(next(), state);
spent.clear();
const t0 = performance.now();
for (let i = 0; i < tokens; i++) await model.step(next(), state);
const total = (performance.now() - t0) / tokens;
let inKernels = 0;
console.log(`# ${file}, ${threads} thread(s), ${tokens} tokens: ms/token, calls/token, µs/call`);
for (const [key, { ms, calls }] of [...spent].sort((a, b) => b[1].ms - a[1].ms)) {
  inKernels += ms;
  console.log(`${key.padEnd(28)} ${(ms / tokens).toFixed(3).padStart(8)} ${(calls / tokens).toFixed(0).padStart(5)} ${(1000 * ms / calls).toFixed(1).padStart(9)}`);
}
console.log(`kernels ${(inKernels / tokens).toFixed(2)} of ${total.toFixed(2)} ms/token`);
