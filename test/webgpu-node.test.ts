import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test, type TestContext } from "node:test";
import { selectBackend } from "../src/core/backend/registry.js";
import { WebGpuBackend, webGpuUnavailableReason } from "../src/core/backend/webgpu/index.js";
import { loadDawn, nodeWebGpuIsSoftware, prepareNodeWebGpu } from "../src/node/webgpu.js";
import { runCaptured as run } from "./run-cli.js";
import { assertClose, assertNoCpuWeights, gpuGoldens } from "./webgpu-goldens.js";
import * as api from "./webgpu-page.js";

/*
 * The WebGPU backend in Node through the optional `webgpu` package (Dawn): the golden models of
 * every version within the goldens' 1e-4 (the bounds of webgpu-browser.test.ts), stepBatch against
 * separate steps, split matrices, the CLI (`rwkv info --backends`, `rwkv bench --backend webgpu`)
 * and a lost device, all through Dawn's Node binding rather than a browser's.
 * Without a GPU it runs on SwiftShader, the Vulkan driver Debian's chromium package ships (the one
 * the browser tests use): Mesa's lavapipe in Debian 12 is refused by this Dawn ("Vulkan
 * shaderUniform*ArrayDynamicIndexing required": no dynamic indexing of image arrays). The kernel
 * by kernel conformance, the compact weight types and the RWKV-7a..8 goldens at head size 32 run in
 * the browser test on the same SwiftShader: each model costs seconds there (about 100 ms a token),
 * and this test keeps to what only Node exercises.
 * CI installs the package, libvulkan1 and chromium (.ci/run). Without the package or an adapter the
 * test skips with the reason, and fails under CI=true, so CI cannot pass without having run it.
 */

/** Chromium's SwiftShader Vulkan driver, added to the Vulkan loader's list before Dawn first looks (bench's row processes inherit it). */
const SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
const driversChosen = ["VK_DRIVER_FILES", "VK_ICD_FILENAMES", "VK_ADD_DRIVER_FILES"].some((v) => process.env[v] !== undefined); // .ci/run sets VK_DRIVER_FILES
if (!driversChosen && existsSync(SWIFTSHADER_ICD)) process.env.VK_ADD_DRIVER_FILES = SWIFTSHADER_ICD;

const TINY = ["--random", "7", "--layers", "2", "--embd", "128", "--vocab", "256"];

/** The backend on Dawn's adapter, or null after skipping `t` (failing it under CI) with the reason. */
async function dawnBackend(t: TestContext): Promise<WebGpuBackend | null> {
  const backend = await prepareNodeWebGpu();
  if (backend) return backend;
  const why = `no WebGPU in Node: ${webGpuUnavailableReason()} (without a GPU: npm install --no-save webgpu@0.6.2, apt-get install libvulkan1 chromium)`;
  if (process.env.CI === "true") throw new Error(why);
  t.skip(why);
  return null;
}

const file = (path: string, name: string): api.ModelFile => ({ name, bytes: new Uint8Array(readFileSync(path)) });

test("the webgpu package: not installed and failing to load are told apart", async () => {
  const notFound = Object.assign(new Error("Cannot find package 'webgpu' imported from /x/webgpu.js"), { code: "ERR_MODULE_NOT_FOUND" });
  assert.deepEqual(await loadDawn(() => Promise.reject(notFound)), { missing: 'the optional "webgpu" package (Dawn for Node) is not installed: npm install webgpu' });
  const badBinary = new Error("/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.34' not found (required by dawn.node)");
  assert.deepEqual(await loadDawn(() => Promise.reject(badBinary)), { missing: `the "webgpu" package (Dawn for Node) failed to load: ${badBinary.message}` });
  assert.deepEqual(await loadDawn(() => Promise.resolve({})), { missing: 'the "webgpu" package has no create() (not Dawn\'s Node binding?)' });
});

test("webgpu in Node (Dawn): the golden models of every version, split matrices, the CLI, a lost device", async (t) => {
  const all = gpuGoldens(t);
  if (!all) return;
  const goldens = all.filter((g) => !g.name.includes("head32")); // one model per version (head size 32: the browser test)
  const backend = await dawnBackend(t);
  if (!backend) return;
  t.diagnostic(`adapter: ${backend.adapterName}${nodeWebGpuIsSoftware() ? " (software)" : ""}`);
  api.use(backend);

  let t0 = performance.now();
  for (const g of goldens) {
    const r = await api.runModel(file(g.path, g.name), g.tokens, g.split, g.matrices);
    const report = g.check(r);
    assertClose(r.batch, r.alone, `${g.name} stepBatch vs separate steps`);
    assertNoCpuWeights(t, g.name, r.version, r.hostBytes);
    report.ms = Math.round(performance.now() - t0);
    t0 = performance.now();
    t.diagnostic(`${g.name} (RWKV-${r.version}) max|diff| ${JSON.stringify(report)}`);
  }

  // Split matrices: a second backend on the same device with a 4 KiB largest binding (a page of its own in Chromium).
  api.use(new WebGpuBackend(backend.device, backend.adapterName, { maxBindingBytes: 4096 }));
  const split = await api.chunkedMatmul(40, 100, 3); // 400-byte rows: 10 per chunk
  assert.equal(split.chunks, 4);
  assert.ok(split.maxErr <= split.bound, `split matmul error ${split.maxErr} > ${split.bound}`);
  assert.match(api.oversizedRow(2000), /a 2x2000 f32 matrix has rows of 8000 bytes on the GPU, more than this adapter's largest storage binding \(4096 bytes\)/);
  api.use(backend);

  // The CLI in this process: the registry lists the adapter; bench runs its rows in processes of their own.
  const info = await run(["info", "--backends", "--json"]);
  assert.equal(info.code, 0, info.err);
  const list = JSON.parse(info.out) as Array<{ name: string; available: boolean; adapter?: string }>;
  const software = nodeWebGpuIsSoftware() ? { software: true } : {};
  assert.deepEqual(list.find((b) => b.name === "webgpu"), { name: "webgpu", available: true, reason: "", adapter: backend.adapterName, ...software });
  assert.equal(selectBackend("webgpu"), backend);
  t0 = performance.now();
  const bench = await run(["bench", ...TINY, "--backend", "webgpu", "--threads", "1", "--runs", "1", "--warmup", "0", "--decode-tokens", "2", "--prefill", "8", "--probe-mib", "1", "--no-retry", "--json"]);
  assert.equal(bench.code, 0, bench.err);
  const rows = (JSON.parse(bench.out) as { rows: Array<{ backend: string; decode: { median: number } }> }).rows;
  assert.deepEqual(rows.map((r) => r.backend), ["webgpu"]);
  assert.ok(rows[0].decode.median > 0, `decode ${rows[0].decode.median} tok/s`);
  t.diagnostic(`rwkv bench --backend webgpu: decode ${rows[0].decode.median.toFixed(1)} tok/s (took ${Math.round(performance.now() - t0)} ms)`);

  // Last: a lost device fails the next forward with the reason, it does not hang.
  const v7 = goldens.find((g) => g.name === "v7.safetensors")!;
  assert.match(await api.loseDevice(file(v7.path, v7.name)), /the WebGPU device was lost \(destroyed/);
});
