import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { build } from "esbuild";
import { selectBackend } from "../src/core/backend/registry.js";
import { prepareWebGpu, webGpuUnavailableReason } from "../src/core/backend/webgpu/index.js";
import type { Page } from "playwright-core";
import { launchChromium, WEBGPU_ARGS } from "./chromium.js";
import { assertClose, assertCompact, assertNoCpuWeights, COMPACT_TOKENS, compactModels, gpuGoldens } from "./webgpu-goldens.js";
import type { CaseResult } from "./webgpu-page.js";

/*
 * The WebGPU backend in Chromium on its software adapter (SwiftShader), which runs on any machine
 * and in CI: every kernel of the table against the reference (tolerances in webgpu-page.ts), the
 * golden models of every version within the goldens' 1e-4 on f32 weights, and the bad cases (no
 * adapter, a matrix larger than a storage binding, a row larger than one, a lost device).
 * Node reads the fixtures and serves them to the page, which runs the models (webgpu-page.ts).
 */

const ORIGIN = "http://localhost/rwkv-webgpu-test"; // localhost: a secure context, where navigator.gpu exists
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
    const goldens = gpuGoldens(t), compact = compactModels(t);
    if (!goldens || !compact) return;
    const files = new Map<string, string>([...goldens, ...compact].map((f) => [f.name, f.path]));

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
    for (const g of goldens) {
      const run = await call((api, url: string, tokens: number[], split: number, m?: "f32") => api.runModel(url, tokens, split, m), `${ORIGIN}/${g.name}`, g.tokens, g.split, g.matrices);
      const report = g.check(run);
      report.ms = Math.round(performance.now() - t0);
      t0 = performance.now();
      assertClose(run.batch, run.alone, `${g.name} stepBatch vs separate steps`);
      t.diagnostic(`${g.name} (RWKV-${run.version}) max|diff| ${JSON.stringify(report)}`);
      assertNoCpuWeights(t, g.name, run.version, run.hostBytes);
    }

    for (const { name } of compact) {
      const r = await call((api, url: string, toks: number[]) => api.againstReference(url, toks), `${ORIGIN}/${name}`, COMPACT_TOKENS);
      assertCompact(name, r);
      t.diagnostic(`${name} (RWKV-${r.version}, ${r.types.join("/")}): GPU vs reference max |diff| ${r.maxDiff} (logits up to ${r.scale.toFixed(1)})`);
      assertNoCpuWeights(t, name, r.version, r.hostBytes);
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
