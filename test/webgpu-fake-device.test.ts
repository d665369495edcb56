import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import type { Matrix, WeightType } from "../src/core/backend/backend.js";
import { referenceBackend } from "../src/core/backend/reference.js";
import type { Gpu, GpuAdapter, GpuBuffer, GpuDevice, GpuLimits } from "../src/core/backend/webgpu/gpu.js";
import { prepareWebGpu, WebGpuBackend } from "../src/core/backend/webgpu/index.js";
import { packForGpu } from "../src/core/backend/webgpu/matmul.js";
import { decodeWeightRow, matrixBytes } from "../src/core/backend/weight-rows.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
import { FileSource } from "../src/node/file-source.js";
import { randomMatrix, rng } from "./matmul-check.js";
import { sharedPath } from "./shared.js";
import { recordHostBytes } from "./webgpu-page.js";

/*
 * The WebGPU backend's host side on a fake device that records what it is given (shader code,
 * buffer writes) and computes nothing: which f16 matmul the device's features select, what
 * adopt() uploads and keeps, and model loading (which records commands but reads no results, so
 * a fake device can load a whole model). The kernels themselves run in Chromium
 * (webgpu-matmul.test.ts, webgpu-browser.test.ts).
 */

const LIMITS: GpuLimits = {
  maxStorageBufferBindingSize: 1 << 27, maxBufferSize: 1 << 28, maxStorageBuffersPerShaderStage: 10,
  maxComputeWorkgroupsPerDimension: 65535, minUniformBufferOffsetAlignment: 256,
};

interface FakeBuffer extends GpuBuffer { readonly bytes: Uint8Array }

/** A device that keeps every buffer's bytes and every shader's code. */
function fakeDevice(features: readonly string[]): { device: GpuDevice; shaders: string[]; buffers: FakeBuffer[] } {
  const shaders: string[] = [], buffers: FakeBuffer[] = [];
  const pass = { setPipeline() {}, setBindGroup() {}, dispatchWorkgroups() {}, end() {} };
  const device: GpuDevice = {
    features: new Set(features),
    limits: LIMITS,
    queue: {
      writeBuffer(buffer, offset, data, dataOffset = 0, size) {
        const src = ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);
        (buffer as FakeBuffer).bytes.set(src.subarray(dataOffset, size === undefined ? undefined : dataOffset + size), offset);
      },
      submit() {},
      onSubmittedWorkDone: () => Promise.resolve(),
    },
    lost: new Promise(() => {}), // never lost
    onuncapturederror: null,
    createBuffer({ size }) {
      const bytes = new Uint8Array(size);
      const b: FakeBuffer = {
        size, bytes, mapAsync: () => Promise.resolve(), getMappedRange: () => bytes.slice().buffer, unmap() {}, destroy() {},
      };
      buffers.push(b);
      return b;
    },
    createShaderModule({ code }) { shaders.push(code); return {}; },
    createComputePipeline: () => ({ getBindGroupLayout: () => ({}) }),
    createBindGroupLayout: () => ({}),
    createPipelineLayout: () => ({}),
    createBindGroup: () => ({}),
    createCommandEncoder: () => ({ beginComputePass: () => pass, copyBufferToBuffer() {}, finish: () => ({}) }),
    pushErrorScope() {},
    popErrorScope: () => Promise.resolve(null),
    destroy() {},
  };
  return { device, shaders, buffers };
}

/** The f16 matmul shaders a backend on a device with `features` compiles for decode (R = 1) and prefill (R = 70). */
function f16Shaders(features: readonly string[]): string[] {
  const { device, shaders } = fakeDevice(features);
  const be = new WebGpuBackend(device, "fake");
  const W = be.adopt(randomMatrix("f16", 5, 67, rng(3)));
  for (const R of [1, 70]) {
    const K = be.tensors;
    K.matmul(K.arena().take(R, 5), K.constant(new Float32Array(R * 67), R), W);
  }
  return shaders.filter((s) => s.includes("MatmulParams"));
}

test("shader-f16: a device with the feature runs the f16 matmul's shader-f16 variant, decode and tiled; one without, unpack2x16float", () => {
  const half = f16Shaders(["shader-f16"]), plain = f16Shaders([]);
  assert.equal(half.length, 2);
  assert.equal(plain.length, 2);
  for (const code of half) {
    assert.ok(code.startsWith("enable f16;\n"), "the extension is enabled first");
    assert.match(code, /var<storage, read> w: array<vec2<f16>>;/);
    assert.doesNotMatch(code, /unpack2x16float/);
  }
  for (const code of plain) {
    assert.doesNotMatch(code, /enable f16|f16>/);
    assert.match(code, /var<storage, read> w: array<u32>;/);
    assert.match(code, /unpack2x16float/);
  }
  assert.equal(new WebGpuBackend(fakeDevice(["shader-f16"]).device, "fake").shaderF16, true);
  assert.equal(new WebGpuBackend(fakeDevice([]).device, "fake").shaderF16, false);
});

test("shader-f16: prepareWebGpu asks for the feature when the adapter has it", async () => {
  let asked: string[] | undefined;
  const adapter: GpuAdapter = {
    features: new Set(["shader-f16", "timestamp-query"]), limits: LIMITS,
    requestDevice(d) {
      asked = d?.requiredFeatures;
      return Promise.resolve(fakeDevice(asked ?? []).device);
    },
  };
  const gpu: Gpu = { requestAdapter: () => Promise.resolve(adapter) };
  const be = await prepareWebGpu(gpu);
  assert.deepEqual(asked, ["shader-f16"]);
  assert.equal(be?.shaderF16, true);
});

test("adopt: the weights go to the GPU once and the returned matrix keeps no CPU copy; CPU readers name it", () => {
  const { device, buffers } = fakeDevice([]);
  const be = new WebGpuBackend(device, "fake");
  const r = rng(11);
  const kinds: Array<[WeightType, new (n: number) => Matrix["data"]]> = [["f32", Float32Array], ["f16", Uint16Array], ["bf16", Uint16Array], ["q8_0", Uint8Array], ["q4_1", Uint8Array], ["i8", Uint8Array]];
  for (const [type, kind] of kinds) {
    const m: Matrix = { ...randomMatrix(type, 7, 64, r), name: `blocks.0.${type}.weight` };
    const before = buffers.length;
    const out = be.adopt(m);
    assert.ok(out.data instanceof kind, `${type}: data keeps its kind`);
    assert.equal(out.data.length, 0, `${type}: no weights left in JavaScript`);
    assert.deepEqual([out.rows, out.cols, out.type, out.name], [7, 64, type, m.name]);
    assert.equal(m.data.byteLength, matrixBytes(type, 7, 64), `${type}: the caller's matrix is untouched`);
    // One buffer, holding exactly the packed rows.
    assert.equal(buffers.length, before + 1, `${type}: one upload`);
    const words = packForGpu(m, 0, 7);
    assert.deepEqual(buffers[before].bytes.subarray(0, words.byteLength), new Uint8Array(words.buffer), `${type}: the GPU has the weights`);
    // Adopting the result again uploads nothing; a matmul by it finds its chunks (packing it again would throw, below).
    assert.equal(be.adopt(out), out);
    assert.equal(buffers.length, before + 1, `${type}: adopting the result again uploads nothing`);
    const K = be.tensors;
    K.matmul(K.arena().take(1, 7), K.constant(new Float32Array(64)), out);
    // CPU code cannot read it, and says which matrix and why rather than computing with zeros.
    const released = new RegExp(`matrix blocks\\.0\\.${type}\\.weight \\(7x64 ${type}\\) has no weights in JavaScript memory: the WebGPU backend keeps an adopted matrix on the GPU only`);
    assert.throws(() => be.matmul(new Float32Array(64), 1, out), released);
    assert.throws(() => decodeWeightRow(out, 0, new Float32Array(64)), released);
    assert.throws(() => packForGpu(out, 0, 1), released);
  }
  // An unnamed matrix is described by its shape.
  const anon = be.adopt(randomMatrix("f32", 2, 3, r));
  assert.throws(() => be.matmul(new Float32Array(3), 1, anon), /^Error: a 2x3 f32 matrix has no weights in JavaScript memory/);
  // adoptForHost: the CPU methods' matrix stays as it is, nothing uploaded.
  const host = randomMatrix("f16", 4, 8, r), n = buffers.length;
  assert.equal(be.adoptForHost(host), host);
  assert.equal(buffers.length, n);
  assert.equal(be.matmul(new Float32Array(8), 1, host).length, 4);
});

test("a model loaded on WebGPU keeps no matrix on the CPU and has the reference's fingerprint (taken before adopt)", async (t) => {
  const files: Array<[string, string | null]> = [
    ["v4 f32", sharedPath(t, "golden", "v4", "model.safetensors")],
    ["v7 bf16", sharedPath(t, "golden", "v7", "model_bf16.safetensors")],
    ["v5 Q4_1", sharedPath(t, "rwkv.cpp", "tiny-rwkv-5v2-730K-FP32-to-Q4_1.bin")],
    // DeepEmbed: its s_emb_x fold is a CPU product at load (adoptForHost keeps that matrix readable).
    ["v7a (DeepEmbed)", join(import.meta.dirname, "..", "..", "test", "fixtures", "golden", "v7a", "head64", "model.safetensors")],
  ];
  for (const [what, path] of files) {
    if (!path) return;
    const src = new FileSource(path);
    try {
      const ckpt = openCheckpoint(src);
      const version = detectVersion(ckpt);
      const { backend, bytes } = recordHostBytes(new WebGpuBackend(fakeDevice([]).device, "fake"));
      const model = buildModel(ckpt, architectureFor(version, path), version, backend);
      const ref = buildModel(ckpt, architectureFor(version, path), version, referenceBackend);
      assert.equal(model.fingerprint, ref.fingerprint, `${what}: the fingerprint`);
      assert.ok(bytes.matrices > 0 && bytes.before > 0, `${what}: matrices were adopted`);
      assert.equal(bytes.after, 0, `${what}: adopted matrices keep no CPU data`);
      assert.equal(bytes.host > 0, version === "7a", `${what}: only DeepEmbed's fold matrices are kept for the CPU`);
      t.diagnostic(`${what}: ${bytes.matrices} matrices adopted, CPU bytes held by them ${bytes.before} before adopt, ${bytes.after} after; kept for load-time CPU products: ${bytes.host}`);
    } finally {
      src.close();
    }
  }
});
