/*
 * Decode speed of the same models in Node and in Chromium (the engine Worker of dist/browser/rwkv.js),
 * at 1 and 2 threads, and the load time of the `rwkv web` page. See README.md here.
 *
 *   npm run build && node dist/bench/browser/run.js [--rounds 3] [--small-tokens 512] [--large-tokens 64]
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { setFlagsFromString } from "node:v8";
import { writeSafetensors } from "../../src/core/formats/safetensors.js";
import { argmax } from "../../src/core/generate.js";
import { randomCheckpoint } from "../../src/core/model/random.js";
import { startWebServer } from "../../src/node/commands/web.js";
import { loadModel } from "../../src/node/load.js";
import { launchChromium } from "../../test/chromium.js";

setFlagsFromString("--experimental-wasm-relaxed-simd"); // as the CLI does; Chromium has it on

const { values } = parseArgs({ options: {
  rounds: { type: "string", default: "3" }, "small-tokens": { type: "string", default: "512" }, "large-tokens": { type: "string", default: "64" },
} });
const ROUNDS = Number(values.rounds), SMALL = Number(values["small-tokens"]), LARGE = Number(values["large-tokens"]);
/** Steps run before timing: first calls compile and grow memory. */
const WARMUP = 8;
const PROMPT = [10, 20, 30, 40];
const BUNDLED = join(import.meta.dirname, "..", "..", "..", "models", "rwkv7-shakespeare.safetensors");

const dir = mkdtempSync(join(tmpdir(), "rwkv-browser-bench-"));
// The released RWKV-7 0.1B's shapes (L12 C768 V65536), seeded random f32 values, as `rwkv bench --random 7`.
const ckpt = randomCheckpoint({ version: "7", nLayer: 12, nEmbd: 768, vocabSize: 65536 });
const tensors = [...ckpt.tensors.values()].map((t) => {
  const f = t.toFloat32();
  return { name: t.name, dtype: "f32" as const, shape: [...t.shape], data: new Uint8Array(f.buffer, f.byteOffset, f.byteLength) };
});
const randomPath = join(dir, "random-v7-0.1b.safetensors");
writeFileSync(randomPath, Buffer.concat(writeSafetensors(tensors)));
const MODELS = [{ name: "bundled (v7 L4 C128, 1M)", path: BUNDLED, url: "/model", tokens: SMALL },
  { name: "random v7 0.1B (L12 C768 V65536, f32)", path: randomPath, url: "/bench/random-v7-0.1b.safetensors", tokens: LARGE }];

async function nodeTps(path: string, threads: number, tokens: number): Promise<number> {
  const model = await loadModel(path, { backend: "wasm", threads });
  const state = model.initState();
  let logits = await model.forward(PROMPT, state);
  for (let i = 0; i < WARMUP; i++) logits = await model.step(argmax(logits), state);
  const t0 = performance.now();
  for (let i = 0; i < tokens; i++) logits = await model.step(argmax(logits), state);
  return (tokens * 1000) / (performance.now() - t0);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const results = new Map<string, number[]>();
const add = (k: string, v: number) => results.set(k, [...(results.get(k) ?? []), v]);

const web = await startWebServer({ modelPath: BUNDLED, port: 0, mounts: { "/bench/": dir } });
const chromium = (await launchChromium({ skip: (m: string) => { throw new Error(m); } } as never))!;
try {
  const { page } = await chromium.page();
  page.setDefaultTimeout(600_000);
  for (let r = 0; r < ROUNDS; r++) {
    // Page load: navigation start to the served model loaded in the engine Worker, ready to chat.
    await page.goto(web.url);
    add("page load ms", await page.evaluate<number>("window.rwkvPage.ready.then(() => performance.now())"));
    for (const m of MODELS) {
      for (const threads of [1, 2]) {
        add(`${m.name}|node|${threads}`, await nodeTps(m.path, threads, m.tokens));
        const tps = await page.evaluate(async ({ url, threads, tokens, prompt, warmup }) => {
          const lib = (await import("/rwkv.js" as string)) as {
            startEngine(): { load(o: object): Promise<unknown>; bench(p: number[], n: number): Promise<{ tokensPerSecond: number }>; terminate(): void };
          };
          const engine = lib.startEngine();
          try {
            await engine.load({ source: url, threads });
            await engine.bench(prompt, warmup);
            return (await engine.bench(prompt, tokens)).tokensPerSecond;
          } finally {
            engine.terminate();
          }
        }, { url: m.url, threads, tokens: m.tokens, prompt: PROMPT, warmup: WARMUP });
        add(`${m.name}|chromium|${threads}`, tps);
        process.stderr.write(`round ${r + 1}: ${m.name} ${threads}t node ${results.get(`${m.name}|node|${threads}`)!.at(-1)!.toFixed(1)} chromium ${tps.toFixed(1)} tok/s\n`);
      }
    }
  }
} finally {
  await chromium.close();
  await web.close();
  rmSync(dir, { recursive: true, force: true });
}

console.log("| model | threads | Node tok/s | Chromium tok/s | Chromium / Node |\n| --- | --- | --- | --- | --- |");
for (const m of MODELS) {
  for (const threads of [1, 2]) {
    const n = median(results.get(`${m.name}|node|${threads}`)!), c = median(results.get(`${m.name}|chromium|${threads}`)!);
    console.log(`| ${m.name} | ${threads} | ${n.toFixed(1)} | ${c.toFixed(1)} | ${(c / n).toFixed(2)} |`);
  }
}
console.log(`\npage load (navigation to the bundled model ready), median of ${ROUNDS}: ${median(results.get("page load ms")!).toFixed(0)} ms`);
console.log(`\nall runs: ${JSON.stringify(Object.fromEntries(results))}`);
