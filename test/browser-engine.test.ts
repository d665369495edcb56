import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { test } from "node:test";
import { WasmBackend, type WasmSimd } from "../src/core/backend/wasm.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel, type Model } from "../src/core/model/model.js";
import { evaluateDocuments } from "../src/core/eval.js";
import { ByteTokenizer } from "../src/core/tokenizer/bytes.js";
import { startWebServer, type WebServer } from "../src/node/commands/web.js";
import { loadCheckpoint } from "../src/node/load.js";
import { type Chromium, launchChromium } from "./chromium.js";
import { compare, readJson, sharedPath } from "./shared.js";

// As the CLI does (bin.ts): Node 20 has relaxed SIMD behind a flag, Chromium has it on. The
// bit-for-bit comparison below runs Node on whichever build the page ran.
setFlagsFromString("--experimental-wasm-relaxed-simd");

// The golden tolerance of golden-models.test.ts.
const ATOL = 1e-4, RTOL = 1e-4;
const VERSIONS = ["v4", "v5", "v6", "v7"];
const PAGE_TIMEOUT_MS = 60_000;
const BUNDLED = join(import.meta.dirname, "..", "..", "models", "rwkv7-shakespeare.safetensors");
const EVAL_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n";

interface Golden { tokens: number[]; rnn: { logits: number[][] }; seq: { logits: number[][] } }
interface Logits { rnn: number[]; seq: number[] }
interface PageRun extends Logits { backend: string; simd: string | null; threads: number }

/** Node's logits for a golden model: wasm backend on one thread, the given build. */
function nodeModel(path: string, simd: WasmSimd): Model {
  const { checkpoint, close } = loadCheckpoint(path);
  try {
    const version = detectVersion(checkpoint);
    return buildModel(checkpoint, architectureFor(version, path), version, new WasmBackend({ simd }));
  } finally {
    close();
  }
}

async function nodeLogits(path: string, tokens: number[], simd: WasmSimd): Promise<Logits> {
  const model = nodeModel(path, simd);
  const s = model.initState();
  const rnn: number[] = [];
  for (const tok of tokens) rnn.push(...await model.step(tok, s));
  return { rnn, seq: [...await model.forward(tokens, model.initState(), { allLogits: true })] };
}

function checkGolden(got: Logits, g: Golden, what: string): void {
  const r = compare(got.rnn, g.rnn.logits.flat(), ATOL, RTOL);
  assert.ok(r.ok, `${what} rnn logits: max |diff| ${r.maxAbs}`);
  const s = compare(got.seq, g.seq.logits.flat(), ATOL, RTOL);
  assert.ok(s.ok, `${what} seq logits: max |diff| ${s.maxAbs}`);
}

/*
 * Code run in the page. It is plain JavaScript there; these types only describe the part of
 * rwkv.js it uses (the test build has no DOM types and does not compile src/browser).
 */
interface PageModel {
  backend: { name: string; simd?: string; threads?: number };
  config: { vocabSize: number };
  initState(): unknown;
  step(t: number, s: unknown): Promise<Float32Array>;
  forward(t: number[], s: unknown, o: { allLogits: boolean }): Promise<Float32Array>;
}
interface PageEngine {
  load(o: object): Promise<{ backend: string; threads: number; crossOriginIsolated: boolean }>;
  logits(t: number[], m: string): Promise<Float32Array>;
  kernelCalls(): Promise<{ parallel: number; single: number }>;
  send(text: string): Promise<unknown>;
  terminate(): void;
}
interface PageLib {
  evaluateDocuments(m: PageModel, t: unknown, docs: string[]): Promise<{ sumNll: number; scoredTokens: number; bitsPerByte: number }>;
  loadModel(src: unknown, o: object): Promise<PageModel>;
  loadTokenizer(src: unknown, o: object | undefined): Promise<{ encode(s: string): number[]; decode(ids: number[]): string; vocabSize: number }>;
  startEngine(): PageEngine;
}

test("browser: golden models, tokenizers and bad input in Chromium", { timeout: 240_000 }, async (t) => {
  const golden = sharedPath(t, "golden");
  const tokenizers = sharedPath(t, "tokenizers");
  if (!golden || !tokenizers) return;
  const chromium: Chromium | null = await launchChromium(t);
  if (!chromium) return;
  const servers: WebServer[] = [];
  try {
    const mounts = { "/golden/": golden, "/tokenizers/": tokenizers, "/m/": join(import.meta.dirname, "..", "..", "models") };
    const isolated = await startWebServer({ modelPath: null, port: 0, mounts });
    servers.push(isolated);
    const { page, errors } = await chromium.page();
    page.setDefaultTimeout(PAGE_TIMEOUT_MS);
    await page.goto(isolated.url);
    assert.equal(await page.evaluate(() => (globalThis as unknown as { crossOriginIsolated: boolean }).crossOriginIsolated), true);

    const goldens = new Map(VERSIONS.map((v) => [v, readJson<Golden>(`${golden}/${v}/golden.json`)]));
    const single = new Map<string, PageRun>();

    await t.test("the page's main thread: model.safetensors bytes, wasm backend, 1 thread, golden logits within 1e-4 and equal to Node's bit for bit", async () => {
      for (const ver of VERSIONS) {
        const g = goldens.get(ver)!;
        const run = await page.evaluate(async ({ ver, tokens }): Promise<PageRun> => {
          const lib = (await import("/rwkv.js" as string)) as PageLib;
          const bytes = new Uint8Array(await (await fetch(`/golden/${ver}/model.safetensors`)).arrayBuffer());
          const model = await lib.loadModel(bytes, { backend: "wasm", threads: 1, name: ver });
          const s = model.initState();
          const rnn: number[] = [];
          for (const tok of tokens) rnn.push(...await model.step(tok, s));
          const seq = [...await model.forward(tokens, model.initState(), { allLogits: true })];
          return { backend: model.backend.name, simd: model.backend.simd ?? null, threads: model.backend.threads ?? 1, rnn, seq };
        }, { ver, tokens: g.tokens });
        assert.equal(run.backend, "wasm");
        assert.equal(run.threads, 1);
        checkGolden(run, g, `${ver} page`);
        const node = await nodeLogits(`${golden}/${ver}/model.safetensors`, g.tokens, run.simd as WasmSimd);
        assert.deepEqual(run.rnn, node.rnn, `${ver}: page and Node rnn logits differ (${run.simd})`);
        assert.deepEqual(run.seq, node.seq, `${ver}: page and Node seq logits differ (${run.simd})`);
        single.set(ver, run);
      }
    });

    await t.test("the engine Worker with 2 kernel threads, model from a Blob: golden logits, bit-identical to 1 thread", async () => {
      for (const ver of VERSIONS) {
        const g = goldens.get(ver)!;
        const run = await page.evaluate(async ({ ver, tokens }) => {
          const lib = (await import("/rwkv.js" as string)) as PageLib;
          const blob = await (await fetch(`/golden/${ver}/model.safetensors`)).blob();
          const engine = lib.startEngine();
          try {
            const info = await engine.load({ source: blob, name: ver, backend: "wasm", threads: 2 });
            const rnn = [...await engine.logits(tokens, "rnn")];
            const seq = [...await engine.logits(tokens, "seq")];
            return { info, rnn, seq, calls: await engine.kernelCalls() };
          } finally {
            engine.terminate();
          }
        }, { ver, tokens: g.tokens });
        assert.deepEqual(run.info, { ...run.info, backend: "wasm", threads: 2, crossOriginIsolated: true });
        checkGolden(run, g, `${ver} engine`);
        // The sequence's matmuls are big enough to be split over the threads (one token's are not, in models this small).
        assert.ok(run.calls.parallel > 0, `${ver}: no kernel ran on several threads (${JSON.stringify(run.calls)})`);
        assert.deepEqual(run.rnn, single.get(ver)!.rnn, `${ver}: 2 threads differ from 1`);
        assert.deepEqual(run.seq, single.get(ver)!.seq, `${ver}: 2 threads differ from 1`);
      }
    });

    await t.test("a Blob in a Worker is read in slices, never whole: the largest read is one tensor", async () => {
      const file = `${golden}/v7/model.safetensors`;
      const bytes = readFileSync(file);
      const headerLen = Number(bytes.readBigUInt64LE(0));
      const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString("utf8")) as Record<string, { data_offsets?: [number, number] }>;
      const largest = Math.max(...Object.values(header).map((e) => (e.data_offsets ? e.data_offsets[1] - e.data_offsets[0] : 0)));
      // A module Worker of our own that imports rwkv.js (as a library, not as an engine) and watches Blob.slice.
      const r = await page.evaluate<{ sizes: number[]; layers: number; size: number }>(`(async () => {
        const src = \`import { loadModel } from "\${location.origin}/rwkv.js";
          onmessage = async (e) => {
            const blob = e.data; const sizes = []; const slice = blob.slice.bind(blob);
            blob.slice = (a, b) => { sizes.push(b - a); return slice(a, b); };
            const model = await loadModel(blob, { threads: 1, name: "v7" });
            postMessage({ sizes, layers: model.config.nLayer, size: blob.size });
          };\`;
        const w = new Worker(URL.createObjectURL(new Blob([src], { type: "text/javascript" })), { type: "module" });
        const blob = await (await fetch("/golden/v7/model.safetensors")).blob();
        return new Promise((resolve, reject) => {
          w.onmessage = (e) => { w.terminate(); resolve(e.data); };
          w.onerror = (e) => reject(new Error(e.message));
          w.postMessage(blob);
        });
      })()`);
      assert.equal(r.layers, 3);
      assert.equal(r.size, bytes.length);
      assert.ok(r.sizes.length > 10, `${r.sizes.length} reads`);
      assert.equal(Math.max(...r.sizes), largest, "the largest read is the largest tensor");
      assert.ok(largest < bytes.length / 4);
    });

    await t.test("eval in the page: the bundled model's NLL of a text equals Node's exactly", async () => {
      const got = await page.evaluate(async (text) => {
        const lib = (await import("/rwkv.js" as string)) as PageLib;
        const model = await lib.loadModel(await (await fetch("/m/rwkv7-shakespeare.safetensors")).arrayBuffer(), { threads: 1 });
        const r = await lib.evaluateDocuments(model, await lib.loadTokenizer(null, { kind: "bytes" }), [text]);
        return { sumNll: r.sumNll, scoredTokens: r.scoredTokens, bitsPerByte: r.bitsPerByte, simd: model.backend.simd as WasmSimd };
      }, EVAL_TEXT);
      const node = await evaluateDocuments(nodeModel(BUNDLED, got.simd), new ByteTokenizer(), [EVAL_TEXT]);
      assert.equal(got.scoredTokens, node.scoredTokens);
      assert.ok(node.bitsPerByte > 0.5 && node.bitsPerByte < 5, `bits per byte ${node.bitsPerByte}`);
      assert.equal(got.sumNll, node.sumNll);
      assert.equal(got.bitsPerByte, node.bitsPerByte);
    });

    await t.test("tokenizers in the page: World and GPT-NeoX 20B golden cases", async () => {
      const world = readJson<{ cases: Array<{ text: string; ids: number[] }> }>(`${golden}/tokenizer/world_tokenizer_golden.json`).cases;
      const neox = readJson<{ cases: Array<{ text: string; ids: number[]; decode_skip_special: string }> }>(`${golden}/tokenizer/gpt_neox_20b_tokenizer_golden.json`).cases;
      const got = await page.evaluate(async ({ world, neox }) => {
        const lib = (await import("/rwkv.js" as string)) as PageLib;
        const w = await lib.loadTokenizer("/tokenizers/rwkv_vocab_v20230424.txt", { kind: "world" });
        const n = await lib.loadTokenizer("/tokenizers/20B_tokenizer.json", { vocabSize: 50277 });
        return {
          world: world.map((c) => ({ ids: w.encode(c.text), text: w.decode(c.ids) })), worldSize: w.vocabSize,
          neox: neox.map((c) => ({ ids: n.encode(c.text), text: n.decode(c.ids) })), neoxSize: n.vocabSize,
        };
      }, { world, neox });
      assert.equal(got.worldSize, 65536);
      assert.equal(got.neoxSize, 50277);
      assert.equal(got.world.length, 37);
      world.forEach((c, i) => { assert.deepEqual(got.world[i].ids, c.ids, c.text); assert.equal(got.world[i].text, c.text); });
      assert.equal(got.neox.length, 42);
      neox.forEach((c, i) => { assert.deepEqual(got.neox[i].ids, c.ids, c.text); assert.equal(got.neox[i].text, c.decode_skip_special); });
    });

    await t.test("bad input: a text file, a truncated model, a missing URL, too many threads on the main thread; the engine keeps its model", async () => {
      const r = await page.evaluate(async () => {
        const lib = (await import("/rwkv.js" as string)) as PageLib;
        const engine = lib.startEngine();
        const msg = (p: Promise<unknown>) => p.then(() => "no error", (e: Error) => `${e.name}: ${e.message}`);
        const good = await (await fetch("/golden/v7/model.safetensors")).blob();
        await engine.load({ source: good, name: "v7.safetensors", threads: 1 });
        const before = [...await engine.logits([1, 2, 3], "rnn")];
        const out = {
          text: await msg(engine.load({ source: new Blob(["This is a README, not a model.\n".repeat(10)]), name: "notes.txt" })),
          truncated: await msg(engine.load({ source: good.slice(0, Math.floor(good.size / 2)), name: "half.safetensors" })),
          missing: await msg(engine.load({ source: "/golden/v7/nope.safetensors" })),
          tooSmall: await msg(engine.load({ source: new Uint8Array(3), name: "tiny.bin" })),
          mainThreads: await msg(lib.loadModel(new Uint8Array(await good.arrayBuffer()), { threads: 2 })),
          chatWithoutTokenizer: await msg(engine.send("Hello")),
          after: [] as number[], before,
        };
        out.after = [...await engine.logits([1, 2, 3], "rnn")];
        engine.terminate();
        return out;
      });
      assert.match(r.text, /^RwkvInputError: notes\.txt: unknown file format/);
      assert.match(r.truncated, /^RwkvInputError: half\.safetensors: tensor \S+: data_offsets point past the end of the file/);
      assert.match(r.missing, /^RwkvInputError: \/golden\/v7\/nope\.safetensors: HTTP 404/);
      assert.match(r.tooSmall, /^RwkvInputError: tiny\.bin: truncated: 3 bytes/);
      assert.match(r.mainThreads, /^RwkvInputError: threads: 2 threads need shared memory between workers: a page's main thread may not wait/);
      assert.equal(r.chatWithoutTokenizer, "RwkvInputError: v7.safetensors: its vocabulary (512) fits no known tokenizer: load it with a tokenizer file and kind");
      assert.equal(r.before.length, 3 * 512);
      assert.deepEqual(r.after, r.before);
    });

    await t.test("a page that is not cross-origin isolated: the engine runs 1 thread, same logits; 2 threads is a clear error", async () => {
      const plain = await startWebServer({ modelPath: null, port: 0, mounts, isolated: false });
      servers.push(plain);
      const p2 = (await chromium.page()).page;
      p2.setDefaultTimeout(PAGE_TIMEOUT_MS);
      await p2.goto(plain.url);
      const g = goldens.get("v7")!;
      const r = await p2.evaluate(async (tokens) => {
        const lib = (await import("/rwkv.js" as string)) as PageLib;
        const engine = lib.startEngine();
        const info = await engine.load({ source: "/golden/v7/model.safetensors" });
        const rnn = [...await engine.logits(tokens, "rnn")];
        const two = await engine.load({ source: "/golden/v7/model.safetensors", threads: 2 }).then(() => "no error", (e: Error) => e.message);
        engine.terminate();
        return { info, rnn, two };
      }, g.tokens);
      assert.deepEqual(r.info, { ...r.info, backend: "wasm", threads: 1, crossOriginIsolated: false });
      assert.deepEqual(r.rnn, single.get("v7")!.rnn);
      assert.match(r.two, /threads: 2 threads need shared memory between workers: the page is not cross-origin isolated/);
    });

    assert.deepEqual(errors.filter((e) => !/Failed to load resource.*404/.test(e)), []);
  } finally {
    await chromium.close();
    for (const s of servers) await s.close();
  }
});
