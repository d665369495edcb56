import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { build } from "esbuild";
import { selectBackend } from "../src/core/backend/registry.js";
import { prepareWebGpu, webGpuUnavailableReason } from "../src/core/backend/webgpu/index.js";
import type { Page } from "playwright-core";
import { launchChromium, WEBGPU_ARGS } from "./chromium.js";
import { compare, readJson, sharedPath } from "./shared.js";
import type { CaseResult, HostBytes, ModelRun } from "./webgpu-page.js";

/*
 * The WebGPU backend in Chromium on its software adapter (SwiftShader), which runs on any machine
 * and in CI: every kernel of the table against the reference (tolerances in webgpu-page.ts), the
 * golden models of every version within the goldens' 1e-4 on f32 weights, and the bad cases (no
 * adapter, a matrix larger than a storage binding, a row larger than one, a lost device).
 * Node reads the fixtures and serves them to the page, which runs the models (webgpu-page.ts).
 */

const ORIGIN = "http://localhost/rwkv-webgpu-test"; // localhost: a secure context, where navigator.gpu exists
const ATOL = 1e-4, RTOL = 1e-4;
const FIXTURES = join(import.meta.dirname, "..", "..", "test", "fixtures", "golden");
const PAGE_TIMEOUT_MS = 600_000;

type PageApi = typeof import("./webgpu-page.js");
type Call = <A extends unknown[], R>(f: (api: PageApi, ...args: A) => Promise<R> | R, ...args: A) => Promise<R>;

/** A page with the test bundle loaded; `call` runs a function of the page module there. */
async function openPage(page: Page, files: ReadonlyMap<string, string>): Promise<Call> {
  const bundle = await build({
    entryPoints: [join(import.meta.dirname, "webgpu-page.js")],
    bundle: true, format: "iife", globalName: "RwkvGpuTest", platform: "browser", write: false, logLevel: "silent",
  });
  await page.route(`${ORIGIN}/**`, (route) => {
    const name = decodeURIComponent(new URL(route.request().url()).pathname.split("/").pop() ?? "");
    const path = files.get(name);
    return path ? route.fulfill({ body: readFileSync(path), contentType: "application/octet-stream" }) : route.fulfill({ status: 404 });
  });
  await page.route(ORIGIN, (route) => route.fulfill({ contentType: "text/html", body: "<!doctype html><title>webgpu</title>" }));
  await page.goto(ORIGIN);
  await page.addScriptTag({ content: bundle.outputFiles[0].text });
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  return (f, ...args) => page.evaluate(([src, a]) => {
    const api = (globalThis as unknown as { RwkvGpuTest: PageApi }).RwkvGpuTest;
    return (new Function("api", "args", `return (${src})(api, ...args)`) as (api: PageApi, args: unknown[]) => unknown)(api, a);
  }, [f.toString(), args] as const) as never;
}

/**
 * A model loaded on WebGPU holds its matrices once, on the GPU: the matrices adopt() returned have
 * no CPU data. The one documented exception: DeepEmbed's fold matrices (RWKV-7a/7b), a CPU product
 * at load, which adoptForHost keeps readable (and the model drops once built).
 */
function assertNoCpuWeights(t: TestContext, name: string, version: string, b: HostBytes): void {
  assert.ok(b.matrices > 0 && b.before > 0, `${name}: no matrix was adopted`);
  assert.equal(b.after, 0, `${name}: the adopted matrices still hold ${b.after} bytes on the CPU`);
  assert.equal(b.host > 0, version === "7a" || version === "7b", `${name}: matrices kept for the CPU (${b.host} bytes) outside DeepEmbed's fold`);
  t.diagnostic(`${name}: ${b.matrices} matrices adopted, CPU bytes they hold: ${b.before} before adopt, ${b.after} after${b.host ? `; kept for the load-time fold: ${b.host}` : ""}`);
}

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, what: string): number {
  const c = compare(got, want, ATOL, RTOL);
  assert.ok(c.ok, `${what}: max |diff| ${c.maxAbs} (first bad element ${c.worst})`);
  return c.maxAbs;
}

const flat = (v: unknown): number[] => (Array.isArray(v) ? (v as unknown[]).flatMap(flat) : [v as number]);

test("webgpu: no adapter is a clear reason, and selecting the backend names it", async () => {
  assert.equal(await prepareWebGpu(null), null);
  assert.match(webGpuUnavailableReason() ?? "", /no WebGPU/);
  assert.throws(() => selectBackend("webgpu"), /backend "webgpu" cannot run in this environment: this runtime has no WebGPU/);
  assert.equal(await prepareWebGpu({ requestAdapter: () => Promise.resolve(null) }), null);
  assert.match(webGpuUnavailableReason() ?? "", /no adapter/);
  assert.notEqual(selectBackend().name, "webgpu", "without a device the registry falls back to the CPU kernels");
});

test("webgpu in Chromium (SwiftShader): every kernel against the reference, the golden models, split matrices, a lost device", async (t) => {
  const chromium = await launchChromium(t, WEBGPU_ARGS);
  if (!chromium) return;
  try {
    // The fixtures the page may fetch, by a unique name.
    const files = new Map<string, string>();
    const goldens: Array<{ name: string; g: { tokens: number[]; split: number; check: (run: ModelRun) => Record<string, number> }; matrices?: "f32" }> = [];
    for (const ver of ["v4", "v5", "v6", "v7"]) {
      const dir = sharedPath(t, "golden", ver);
      if (!dir) return;
      type GoldenLayer = Record<string, unknown>;
      const g = readJson<{ tokens: number[]; rnn: { logits: number[][]; state_after_first_token: GoldenLayer[]; final_state: GoldenLayer[] }; seq: { logits: number[][]; final_state: GoldenLayer[] }; seq_chunked: { logits: number[][]; final_state: GoldenLayer[]; split: number } }>(join(dir, "golden.json"));
      const states = (got: Record<string, number[]>[], want: GoldenLayer[], what: string) => {
        let m = 0;
        want.forEach((l, i) => { for (const [name, v] of Object.entries(l)) m = Math.max(m, assertClose(got[i][name], flat(v), `${what} layer ${i} ${name}`)); });
        return m;
      };
      files.set(`${ver}.safetensors`, join(dir, "model.safetensors"));
      goldens.push({
        name: `${ver}.safetensors`,
        g: {
          tokens: g.tokens, split: g.seq_chunked.split,
          check: (run) => ({
            rnn: assertClose(run.rnn, flat(g.rnn.logits), "rnn logits"),
            seq: assertClose(run.seq, flat(g.seq.logits), "seq logits"),
            chunked: assertClose(run.chunked, flat(g.seq_chunked.logits), "chunked logits"),
            stateFirst: states(run.states.first, g.rnn.state_after_first_token, "state after the first token"),
            stateRnn: states(run.states.rnn, g.rnn.final_state, "rnn final state"),
            stateSeq: states(run.states.seq, g.seq.final_state, "seq final state"),
            stateChunked: states(run.states.chunked, g.seq_chunked.final_state, "chunked final state"),
          }),
        },
      });
    }
    for (const gen of ["v7a", "v7b", "v8", "v8-hybrid"]) {
      for (const shape of ["head64", "head32"]) {
        const d = join(FIXTURES, gen, shape);
        const meta = readJson<{ tokens: number[]; split: number }>(join(d, "golden.json"));
        const golden = readSafetensorsF32(join(d, "golden.safetensors"));
        const name = `${gen}-${shape}.safetensors`;
        files.set(name, join(d, "model.safetensors"));
        const states = (got: Record<string, number[]>[], path: string) => {
          let m = 0;
          got.forEach((l, i) => { for (const [field, v] of Object.entries(l)) { const want = golden.get(`${path}.L${i}.${field}`); if (want) m = Math.max(m, assertClose(v, want, `${path} layer ${i} ${field}`)); } });
          return m;
        };
        goldens.push({
          name, matrices: "f32", // f16-exact values the official code ran in f32 (next-gen.test.ts)
          g: {
            tokens: meta.tokens, split: meta.split,
            check: (run) => ({
              rnn: assertClose(run.rnn, golden.get("rnn.logits")!, "rnn logits"),
              seq: assertClose(run.seq, golden.get("seq.logits")!, "seq logits"),
              chunked: assertClose(run.chunked, golden.get("chunked.logits")!, "chunked logits"),
              stateRnn: states(run.states.rnn, "rnn"), stateSeq: states(run.states.seq, "seq"), stateChunked: states(run.states.chunked, "chunked"),
            }),
          },
        });
      }
    }

    // Compact weights (f16, bf16, ggml blocks) in whole models: the GPU against the reference kernels on the same weights.
    const compact: string[] = [];
    const bf16 = sharedPath(t, "golden", "v7", "model_bf16.safetensors"), cpp = sharedPath(t, "rwkv.cpp");
    if (!bf16 || !cpp) return;
    files.set("v7-bf16.safetensors", bf16);
    compact.push("v7-bf16.safetensors");
    for (const f of ["tiny-rwkv-7v0-834K-FP16.bin", "tiny-rwkv-7v0-834K-Q5_1.bin", "tiny-rwkv-6v0-1m-Q5_0.bin", "tiny-rwkv-5v2-730K-FP32-to-Q8_0.bin",
      "tiny-rwkv-5v2-730K-FP32-to-Q4_0.bin", "tiny-rwkv-5v2-730K-FP32-to-Q4_1.bin"]) {
      files.set(f, join(cpp, f));
      compact.push(f);
    }

    const { page, errors } = await chromium.page();
    const call = await openPage(page, files);
    const adapter = await call((api) => api.prepare());
    t.diagnostic(`adapter: ${adapter}`);

    let t0 = performance.now();
    const results: CaseResult[] = await call((api) => api.conformance());
    t.diagnostic(`conformance took ${Math.round(performance.now() - t0)} ms`);
    const bad = results.filter((r) => !r.ok);
    assert.deepEqual(bad, [], `kernels outside their tolerance:\n${bad.map((r) => `${r.name}: err ${r.err} > tol ${r.tol}`).join("\n")}`);
    const ratio = (r: CaseResult) => (r.tol > 0 ? r.err / r.tol : 0);
    const worst = results.reduce((w, r) => (ratio(r) > ratio(w) ? r : w), results[0]);
    t.diagnostic(`${results.length} kernel cases within tolerance; closest to its bound: ${worst.name} (${worst.err} of ${worst.tol})`);

    t0 = performance.now();
    for (const { name, g, matrices } of goldens) {
      const run = await call((api, url: string, tokens: number[], split: number, m?: "f32") => api.runModel(url, tokens, split, m), `${ORIGIN}/${name}`, g.tokens, g.split, matrices);
      const report = g.check(run);
      report.ms = Math.round(performance.now() - t0);
      t0 = performance.now();
      assertClose(run.batch, run.alone, `${name} stepBatch vs separate steps`);
      t.diagnostic(`${name} (RWKV-${run.version}) max|diff| ${JSON.stringify(report)}`);
      assertNoCpuWeights(t, name, run.version, run.hostBytes);
    }

    // Compact types: the kernels' f32 sums against the reference's f64 ones on the same weights, so the
    // golden tolerance holds here too (what these types lose against f32 weights is the types' own rounding,
    // the same on every backend: quantization.md).
    const tokens = [1, 20, 33, 4, 50, 6, 17, 8, 9, 100, 11];
    for (const f of compact) {
      const r = await call((api, url: string, toks: number[]) => api.againstReference(url, toks), `${ORIGIN}/${f}`, tokens);
      assert.ok(r.maxDiff <= ATOL + RTOL * r.scale, `${f}: GPU vs reference max |diff| ${r.maxDiff}`);
      t.diagnostic(`${f} (RWKV-${r.version}, ${r.types.join("/")}): GPU vs reference max |diff| ${r.maxDiff} (logits up to ${r.scale.toFixed(1)})`);
      assertNoCpuWeights(t, f, r.version, r.hostBytes);
    }

    // Bad cases on a second page whose backend has a 4 KiB largest binding.
    t0 = performance.now();
    const small = await chromium.page();
    const callSmall = await openPage(small.page, files);
    await callSmall((api) => api.prepare(4096));
    const split = await callSmall((api) => api.chunkedMatmul(40, 100, 3)); // 400-byte rows: 10 per chunk
    assert.equal(split.chunks, 4);
    assert.ok(split.maxErr <= split.bound, `split matmul error ${split.maxErr} > ${split.bound}`);
    assert.match(await callSmall((api) => api.oversizedRow(2000)), /a 2x2000 f32 matrix has rows of 8000 bytes on the GPU, more than this adapter's largest storage binding \(4096 bytes\)/);

    t.diagnostic(`split matrices took ${Math.round(performance.now() - t0)} ms`);
    t0 = performance.now();
    // A lost device: the next forward fails with the reason, it does not hang.
    const lost = await call((api, url: string) => api.loseDevice(url), `${ORIGIN}/v7.safetensors`);
    assert.match(lost, /the WebGPU device was lost \(destroyed/);
    t.diagnostic(`lost device took ${Math.round(performance.now() - t0)} ms`);
    assert.deepEqual(errors.filter((e) => !/lost|destroyed/i.test(e)), []);
  } finally {
    await chromium.close();
  }
});

/** The F32 tensors of a safetensors file by name. */
function readSafetensorsF32(path: string): Map<string, Float32Array> {
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const out = new Map<string, Float32Array>();
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [a, b] = e.data_offsets;
    out.set(name, new Float32Array(bytes.buffer.slice(bytes.byteOffset + 8 + n + a, bytes.byteOffset + 8 + n + b)));
  }
  return out;
}
