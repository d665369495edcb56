import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { build } from "esbuild";
import type { Matrix, WeightType } from "../src/core/backend/backend.js";
import { referenceBackend as ref } from "../src/core/backend/reference.js";
import { gpuRowWords, matmulKernel, packForGpu } from "../src/core/backend/webgpu/matmul.js";
import { decodeWeightRow } from "../src/core/backend/weight-rows.js";
import { launchChromium } from "./chromium.js";
import { randomMatrix, rng } from "./matmul-check.js";

/*
 * The WGSL matrix kernels (src/core/backend/webgpu/matmul.ts) in Chromium on its software WebGPU
 * adapter (SwiftShader), against the reference backend's matmul of the same Matrix. The page
 * loads matmul.ts bundled by esbuild, packs the matrix with packForGpu, uploads it, dispatches
 * the kernel matmulKernel picks with the workgroups it asks for, and reads y back, as the
 * WebGPU backend does. Letters as in matmul.ts: R rows of x, O rows of W (outputs), I columns.
 *
 * Tolerance: |y - y_ref| ≤ TOL · Σ_i |x_i w_i| per output. Both sides dequantize each weight to
 * the same f32 (the 4 and 5-bit types' q·d + m rounds once on both sides), so the difference is
 * the GPU's f32 summation against the reference's f64 one. Its worst case is n·u·Σ|x w| for n
 * sequential additions (u = 2^-24 ≈ 6e-8), but rounding errors of random data grow like √n·u,
 * about 2e-6 at the largest I here (1027; measured: at most 5e-7). A wrong weight, column or
 * scale gives errors of order 1 relative to Σ|x w|.
 */
const TOL = 2e-6;

/** Turns on WebGPU on the software adapter; a page has navigator.gpu only in a secure context (localhost). */
const WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"];
const ORIGIN = "http://localhost/rwkv-webgpu-matmul-test";

/** (O, I) per type: odd O; block types 3 and 20 blocks (an odd and an even count of f16 scales);
 *  the others tails of 3 columns past a multiple of 4 (f16/bf16: an odd I leaves half a word).
 *  The larger I give every decode thread more than one unit of each row (64 threads a row). */
const SHAPES: Readonly<Record<"block" | "plain", ReadonlyArray<readonly [number, number]>>> = {
  block: [[37, 96], [67, 640]],
  plain: [[37, 67], [67, 1027]],
};
/** Rows of x: every decode variant (1, 2, 4 with a spare row, 8 rows a pass) and the tiled kernel
 *  on one partial tile, one full tile and a partial second tile. */
const RS = [1, 2, 3, 8, 17, 64, 70];
const TYPES: WeightType[] = ["f32", "f16", "bf16", "i8", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1"];

/** One dispatch sequence on the page: the matrix cut into row chunks, each written at yCol0 = its first row + col0. */
interface PageCase {
  type: WeightType; O: number; I: number; R: number; data: number[]; x: number[];
  chunks: number[]; col0: number; yStride: number; sentinel: number;
  /** The kernel for a device with shader-f16 (the page's device has it when its adapter does). */
  shaderF16: boolean;
}

/** Runs in the page (serialized: nothing from this module's scope). */
async function pageRun(c: PageCase): Promise<number[]> {
  interface Pipeline { getBindGroupLayout(i: number): object }
  interface Buf { getMappedRange(): ArrayBuffer; unmap(): void; mapAsync(mode: number): Promise<void>; destroy(): void }
  interface Device {
    queue: { writeBuffer(b: Buf, off: number, data: ArrayBufferView): void; submit(c: object[]): void };
    createBuffer(d: { size: number; usage: number; mappedAtCreation?: boolean }): Buf;
    createShaderModule(d: { code: string }): { getCompilationInfo(): Promise<{ messages: { type: string; message: string; lineNum: number }[] }> };
    createComputePipeline(d: object): Pipeline;
    createBindGroup(d: object): object;
    createCommandEncoder(): {
      beginComputePass(): { setPipeline(p: object): void; setBindGroup(i: number, g: object): void; dispatchWorkgroups(x: number, y: number, z: number): void; end(): void };
      copyBufferToBuffer(a: Buf, ao: number, b: Buf, bo: number, n: number): void; finish(): object;
    };
    pushErrorScope(f: string): void; popErrorScope(): Promise<{ message: string } | null>;
  }
  interface Kernel { code: string; entryPoint: string; workgroups(R: number, O: number): [number, number, number] }
  interface Page {
    navigator: { gpu?: { requestAdapter(): Promise<{ features: ReadonlySet<string>; requestDevice(d: { requiredFeatures: string[] }): Promise<Device> } | null> } };
    RwkvMatmul: { packForGpu(m: object, row0: number, rows: number): Uint32Array; matmulKernel(t: string, R: number, f: { shaderF16: boolean }): Kernel };
    rwkvDevice?: Device; rwkvPipelines?: Map<string, Pipeline>;
  }
  const STORAGE = 0x80, COPY_DST = 0x08, COPY_SRC = 0x04, MAP_READ = 0x01, UNIFORM = 0x40, MAP_MODE_READ = 1;
  const g = globalThis as unknown as Page;
  if (!g.rwkvDevice) {
    const adapter = await g.navigator.gpu?.requestAdapter();
    if (!adapter) throw new Error("no WebGPU adapter");
    g.rwkvDevice = await adapter.requestDevice({ requiredFeatures: adapter.features.has("shader-f16") ? ["shader-f16"] : [] });
    g.rwkvPipelines = new Map();
  }
  const dev = g.rwkvDevice, pipelines = g.rwkvPipelines!;
  const M = g.RwkvMatmul;
  const bytes = c.type === "f32" ? new Float32Array(c.data) : c.type === "f16" || c.type === "bf16" ? new Uint16Array(c.data) : new Uint8Array(c.data);
  const m = { rows: c.O, cols: c.I, type: c.type, data: bytes };
  const kernel = M.matmulKernel(c.type, c.R, { shaderF16: c.shaderF16 });
  dev.pushErrorScope("validation");
  let pipeline = pipelines.get(kernel.code);
  if (!pipeline) {
    const module = dev.createShaderModule({ code: kernel.code });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((e) => e.type === "error");
    if (errors.length) throw new Error(errors.map((e) => `line ${e.lineNum}: ${e.message}`).join("\n"));
    pipeline = dev.createComputePipeline({ layout: "auto", compute: { module, entryPoint: kernel.entryPoint } });
    pipelines.set(kernel.code, pipeline);
  }
  const storage = (data: ArrayBufferView, usage = 0): Buf => {
    const b = dev.createBuffer({ size: Math.max(4, data.byteLength), usage: STORAGE | COPY_DST | usage });
    dev.queue.writeBuffer(b, 0, data);
    return b;
  };
  const yBytes = 4 * c.R * c.yStride;
  const y = storage(new Float32Array(c.R * c.yStride).fill(c.sentinel), COPY_SRC);
  const x = storage(new Float32Array(c.x));
  const read = dev.createBuffer({ size: yBytes, usage: MAP_READ | COPY_DST });
  const enc = dev.createCommandEncoder();
  const temps: Buf[] = [];
  for (let k = 0, row0 = 0; k < c.chunks.length; row0 += c.chunks[k++]) {
    const O = c.chunks[k];
    const w = storage(M.packForGpu(m, row0, O));
    const u = dev.createBuffer({ size: 32, usage: UNIFORM | COPY_DST });
    dev.queue.writeBuffer(u, 0, new Uint32Array([c.R, O, c.I, c.col0 + row0, c.yStride]));
    temps.push(w, u);
    const bind = dev.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [y, x, w, u].map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(...kernel.workgroups(c.R, O));
    pass.end();
  }
  enc.copyBufferToBuffer(y, 0, read, 0, yBytes);
  dev.queue.submit([enc.finish()]);
  const err = await dev.popErrorScope();
  if (err) throw new Error(`WebGPU validation: ${err.message}`);
  await read.mapAsync(MAP_MODE_READ);
  const out = [...new Float32Array(read.getMappedRange().slice(0))];
  read.unmap();
  for (const b of [y, x, read, ...temps]) b.destroy();
  return out;
}

/** Σ_i |x_i w_i| per output (R, O): the scale of the summation error. */
function magnitudes(x: Float32Array, R: number, W: Matrix): Float64Array {
  const { rows: O, cols: I } = W;
  const out = new Float64Array(R * O), row = new Float32Array(I);
  for (let o = 0; o < O; o++) {
    decodeWeightRow(W, o, row);
    for (let r = 0; r < R; r++) {
      let s = 0;
      for (let i = 0; i < I; i++) s += Math.abs(x[r * I + i] * row[i]);
      out[r * O + o] = s;
    }
  }
  return out;
}

test("packForGpu: compact rows of gpuRowWords words, and clear errors for what it cannot pack", () => {
  const r = rng(5);
  // Bytes a row takes on the GPU against the checkpoint's own: at most 3 bytes of padding for the
  // plain types; for the block types the split scales round up to a word per row.
  const cases: Array<[WeightType, number, number]> = [
    ["f32", 67, 4 * 67], ["f16", 67, 2 * 68], ["bf16", 67, 2 * 68], ["i8", 67, 4 + 68],
    ["q8_0", 96, 3 * 34 + 2], ["q4_0", 96, 3 * 18 + 2], ["q4_1", 96, 3 * 20], ["q5_0", 96, 3 * 22 + 2], ["q5_1", 96, 3 * 24],
  ];
  for (const [type, I, rowBytes] of cases) {
    assert.equal(4 * gpuRowWords(type, I), rowBytes, `${type} I=${I}`);
    const W = randomMatrix(type, 5, I, r);
    assert.equal(packForGpu(W, 1, 3).length, 3 * gpuRowWords(type, I), `${type}: 3 rows`);
  }
  // f16 words: columns 2j low, 2j+1 high; the odd column's word padded with a zero half.
  const f16: Matrix = { rows: 2, cols: 3, type: "f16", data: Uint16Array.of(1, 2, 3, 4, 5, 6) };
  assert.deepEqual([...packForGpu(f16, 1, 1)], [4 | (5 << 16), 6]);
  // i8: the row's scale first, then its bytes.
  const i8: Matrix = { rows: 1, cols: 5, type: "i8", data: Uint8Array.of(1, 2, 3, 4, 0xff, 0, 0, 0x80, 0x3f) };
  assert.deepEqual([...packForGpu(i8, 0, 1)], [0x3f800000, 0x04030201, 0xff]);
  assert.throws(() => packForGpu(f16, 1, 2), /rows \[1, 3\) are outside the matrix's 2 rows/);
  assert.throws(() => packForGpu({ rows: 1, cols: 40, type: "q4_0", data: new Uint8Array(18) }, 0, 1), /multiple of 32 columns, got 40/);
  assert.throws(() => packForGpu({ rows: 2, cols: 32, type: "q8_0", data: new Uint8Array(34) }, 0, 1), /data has 34 bytes, needs 68/);
  assert.throws(() => packForGpu({ rows: 1, cols: 8, type: "f16s", data: new Uint16Array(8) }, 0, 1), /weight type f16s is not supported/);
  assert.throws(() => packForGpu({ rows: 1, cols: 32, type: "q5_1s", data: new Uint8Array(24) }, 0, 1), /weight type q5_1s is not supported/);
});

test("matmulKernel: one kernel per type and variant, dispatches within the 65535 workgroups a dimension allows", () => {
  const none = { shaderF16: false };
  for (const type of TYPES) {
    assert.equal(matmulKernel(type, 1, none), matmulKernel(type, 1, none), `${type}: the same kernel object again`);
    assert.notEqual(matmulKernel(type, 1, none).code, matmulKernel(type, 64, none).code, `${type}: decode and tiled differ`);
    for (const R of [1, 3, 8, 9, 64, 512, 100_000]) {
      const k = matmulKernel(type, R, none);
      assert.match(k.code, new RegExp(`@compute[^]*fn ${k.entryPoint}\\(`), `${type} R=${R}: the entry point`);
      // A vocabulary head of 65536 rows, and a chunk of 2^20 rows of a long-and-thin matrix.
      for (const O of [1, 37, 65536, 1 << 20]) {
        const n = k.workgroups(R, O);
        assert.ok(n.every((d) => Number.isInteger(d) && d >= 1 && d <= 65535), `${type} R=${R} O=${O}: ${n}`);
      }
    }
  }
  // shader-f16 changes f16 alone: its own kernels, the same for every other type.
  const half = { shaderF16: true };
  for (const type of TYPES) {
    for (const R of [1, 3, 8, 9, 64]) {
      const k = matmulKernel(type, R, half), base = matmulKernel(type, R, none);
      if (type !== "f16") { assert.equal(k, base, `${type} R=${R}`); continue; }
      assert.notEqual(k.code, base.code, `f16 R=${R}: its own code`);
      assert.equal(matmulKernel(type, R, half), k, `f16 R=${R}: cached`);
      assert.deepEqual(k.workgroups(R, 1000), base.workgroups(R, 1000), `f16 R=${R}: the same dispatch`);
      assert.ok(k.code.startsWith("enable f16;\n"), "the extension first, as WGSL requires");
      assert.match(k.code, /var<storage, read> w: array<vec2<f16>>;/);
      assert.doesNotMatch(k.code, /unpack2x16float/);
      // Besides the header and the weight readers, the same code: the same arithmetic on the same f32 weights.
      const body = (code: string) => code.slice(code.indexOf("const ", code.indexOf("fn wAt")));
      assert.equal(body(k.code), body(base.code), `f16 R=${R}: the same kernel body`);
    }
  }
  assert.throws(() => matmulKernel("f16s", 1, none), /weight type f16s is not supported/);
  assert.throws(() => matmulKernel("f32", 0, none), /R must be a positive integer, got 0/);
});

test("WGSL matmul kernels in Chromium (SwiftShader): every weight type, decode and tiled, row chunks, within 2e-6 of Σ|x·w|", async (t) => {
  const chromium = await launchChromium(t, WEBGPU_ARGS);
  if (!chromium) return;
  try {
    const bundle = await build({
      stdin: { contents: `export { packForGpu, matmulKernel } from ${JSON.stringify(join(import.meta.dirname, "..", "src", "core", "backend", "webgpu", "matmul.js"))};`, resolveDir: import.meta.dirname },
      bundle: true, format: "iife", globalName: "RwkvMatmul", platform: "browser", write: false, logLevel: "silent",
    });
    const { page, errors } = await chromium.page();
    await page.route(ORIGIN, (route) => route.fulfill({ contentType: "text/html", body: "<!doctype html><title>webgpu matmul</title>" }));
    await page.goto(ORIGIN);
    const hasGpu = await page.evaluate(async () => {
      const gpu = (globalThis as unknown as { navigator: { gpu?: { requestAdapter(): Promise<object | null> } } }).navigator.gpu;
      return gpu !== undefined && (await gpu.requestAdapter()) !== null;
    });
    if (!hasGpu) {
      if (process.env.CI === "true") throw new Error("Chromium gave no WebGPU adapter (flags: " + WEBGPU_ARGS.join(" ") + ")");
      t.skip("Chromium gave no WebGPU adapter");
      return;
    }
    await page.addScriptTag({ content: bundle.outputFiles[0].text });
    const shaderF16 = await page.evaluate(async () => {
      const gpu = (globalThis as unknown as { navigator: { gpu: { requestAdapter(): Promise<{ features: ReadonlySet<string> }> } } }).navigator.gpu;
      return (await gpu.requestAdapter()).features.has("shader-f16");
    });
    t.diagnostic(`the adapter ${shaderF16 ? "has" : "does not have"} shader-f16`);
    const r = rng(17);
    let worst = 0;
    /** f16 cases whose shader-f16 variant gave the same y, bit for bit. */
    let sameBits = 0;
    const run = async (W: Matrix, R: number, chunks: number[], col0: number, yStride: number, what: string): Promise<void> => {
      const { rows: O, cols: I } = W;
      const x = Float32Array.from({ length: R * I }, () => r() * (r() > 0.9 ? 8 : 1)); // (R, I)
      const SENTINEL = -12345.5;
      const c: PageCase = { type: W.type, O, I, R, data: [...W.data], x: [...x], chunks, col0, yStride, sentinel: SENTINEL, shaderF16: false };
      const got = await page.evaluate(pageRun, c);
      if (W.type === "f16" && shaderF16) {
        // The shader-f16 variant reads the same weights as f16 values: the same f32 sums, bit for bit (deepStrictEqual tells -0 from 0).
        assert.deepStrictEqual(await page.evaluate(pageRun, { ...c, shaderF16: true }), got, `${what}: the shader-f16 variant differs from unpack2x16float`);
        sameBits++;
      }
      const want = ref.matmul(x, R, W), mag = magnitudes(x, R, W); // (R, O) each
      for (let row = 0; row < R; row++) {
        for (let c = 0; c < yStride; c++) {
          const g = got[row * yStride + c], o = c - col0;
          if (o < 0 || o >= O) { assert.equal(g, SENTINEL, `${what}: y[${row}][${c}] outside the outputs was written`); continue; }
          const e = Math.abs(g - want[row * O + o]), bound = TOL * mag[row * O + o];
          if (!(e <= bound)) assert.fail(`${what}: y[${row}][${o}] = ${g}, reference ${want[row * O + o]}, |diff| ${e} > ${bound}`);
          if (mag[row * O + o] > 0) worst = Math.max(worst, e / mag[row * O + o]);
        }
      }
    };
    for (const type of TYPES) {
      const block = type.startsWith("q");
      for (const [O, I] of SHAPES[block ? "block" : "plain"]) {
        const W = randomMatrix(type, O, I, r);
        for (const R of RS) await run(W, R, [O], 0, O, `${type} O=${O} I=${I} R=${R}`);
      }
      // Two row chunks written into a wider y: columns 1 … O of rows of O + 3.
      const [O, I] = SHAPES[block ? "block" : "plain"][1];
      const W = randomMatrix(type, O, I, r);
      for (const R of [3, 17]) await run(W, R, [30, O - 30], 1, O + 3, `${type} O=${O} I=${I} R=${R} in chunks of 30 and ${O - 30} rows`);
    }
    // f16 subnormals (|w| < 2^-14, a few in every thousand weights of a trained model) are exact
    // in f32: unpack2x16float must not flush them.
    const subnormal: Matrix = { rows: 5, cols: 67, type: "f16", data: Uint16Array.from({ length: 5 * 67 }, () => (r() > 0 ? 0x8000 : 0) | (1 + Math.floor((r() + 1) * 511))) };
    for (const R of [1, 17]) await run(subnormal, R, [5], 0, 5, `f16 subnormal weights R=${R}`);
    assert.deepEqual(errors, []);
    t.diagnostic(`largest |y - y_ref| / Σ|x·w|: ${worst.toExponential(2)} (tolerance ${TOL})`);
    // Without the feature a device refuses `enable f16;`, so here the variant's code can only be
    // compiled with f16 spelled f32: that checks everything but the f16 typing (names, indexing,
    // conversions), not that it runs.
    const asF32 = [1, 70].map((R) => matmulKernel("f16", R, { shaderF16: true }).code.replace("enable f16;\n", "").replaceAll("f16>", "f32>"));
    const compiled = await page.evaluate(async (codes: string[]) => {
      interface Dev { createShaderModule(d: { code: string }): { getCompilationInfo(): Promise<{ messages: { type: string; message: string }[] }> } }
      const dev = (globalThis as unknown as { rwkvDevice: Dev }).rwkvDevice;
      return Promise.all(codes.map(async (code) => (await dev.createShaderModule({ code }).getCompilationInfo()).messages.filter((m) => m.type === "error").map((m) => m.message)));
    }, asF32);
    assert.deepEqual(compiled, [[], []], "the shader-f16 variant with f16 spelled f32 compiles");
    // Reported as its own subtest, so an adapter without the feature shows as a skip, never a pass.
    await t.test("the f16 kernels' shader-f16 variant on the adapter equals unpack2x16float bit for bit", (st) => {
      if (!shaderF16) {
        st.skip("this adapter has no shader-f16: the variant was not executed (its WGSL and selection are tested on a fake device, webgpu-fake-device.test.ts)");
        return;
      }
      assert.ok(sameBits > 0);
      st.diagnostic(`${sameBits} f16 cases (decode, tiled, chunks, subnormal weights): identical y`);
    });
  } finally {
    await chromium.close();
  }
});
