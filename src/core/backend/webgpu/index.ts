import type { Backend, Matrix } from "../backend.js";
import { referenceBackend } from "../reference.js";
import { type Gpu, type GpuAdapter, type GpuDevice, navigatorGpu } from "./gpu.js";
import { GpuStream } from "./stream.js";
import { WebGpuTensorKernels } from "./tensors.js";

/*
 * The "webgpu" backend: the TensorKernels table as WGSL compute shaders on a WebGPU device
 * (tensors.ts, shaders.ts, matmul), in browsers through navigator.gpu and in Node through the
 * optional `webgpu` package (src/node/webgpu.ts hands its GPU object to prepareWebGpu).
 *
 * Getting a device is asynchronous and the registry's probes are not, so a host calls
 * `await prepareWebGpu()` once; from then on the registry offers "webgpu" above wasm, and before
 * (or where there is no adapter) it says why not (webGpuUnavailableReason).
 *
 * Weights are uploaded once at adopt() in the matmul's GPU layout, in row chunks that each fit the
 * adapter's maxStorageBufferBindingSize and maxBufferSize, and adopt() returns the matrix with its
 * CPU data released (empty), so a model holds its weights once, on the GPU. The Float32Array
 * methods of Backend (training, tools, the load-time ln0 of the embedding) run on the CPU through
 * the reference kernels: they are synchronous and a GPU cannot answer synchronously; handed an
 * adopted matrix they throw, naming it (requireHostData).
 *
 * What stays on the CPU, because CPU code reads it:
 * - the embedding tables that a forward reads a few rows of per token (emb, DeepEmbed's and
 *   v8's per-token tables): never adopted, they are not matmul weights;
 * - matrices of load-time CPU products (DeepEmbed's s_emb_x / k_emb_x / v_emb_x fold, computed by
 *   the Float32Array matmul): adoptForHost() keeps them as they are and uploads nothing; they are
 *   garbage once the model is built;
 * - the fingerprint's sample of the head, taken by the model before adopt() (Weights.linear's onHost).
 */

export interface WebGpuOptions {
  /** Test hook: a smaller largest storage binding than the device's, to exercise row chunking. */
  readonly maxBindingBytes?: number;
  /** Why there is no WebGPU when `gpu` is null (default: this runtime has no navigator.gpu). */
  readonly missing?: string;
}

export class WebGpuBackend implements Backend {
  readonly name = "webgpu";
  readonly tensors: WebGpuTensorKernels;
  readonly stream: GpuStream;
  /** Whether the device has shader-f16: the f16 matmul then reads its weights as f16 (matmul.ts). */
  readonly shaderF16: boolean;

  constructor(readonly device: GpuDevice, readonly adapterName: string, options: WebGpuOptions = {}) {
    this.stream = new GpuStream(device);
    this.shaderF16 = device.features.has("shader-f16");
    const maxBindingBytes = options.maxBindingBytes ?? Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
    this.tensors = new WebGpuTensorKernels(this.stream, { maxBindingBytes }, this.shaderF16);
  }

  /**
   * Uploads m's rows to the GPU now and returns m with empty data (the same kind of array, length
   * 0): the GPU buffers are the only copy this backend keeps, and m's own array is the caller's to
   * drop. Read anything the CPU needs from m before (see the header). Adopting the result again
   * returns it.
   */
  adopt(m: Matrix): Matrix {
    if (m.type === "f16s") throw new Error("f16s is the wasm backend's f16 layout; give the WebGPU backend the checkpoint's f16");
    if (m.type === "q5_0s" || m.type === "q5_1s") throw new Error(`${m.type} is the wasm backend's ${m.type.slice(0, 4)} layout; give the WebGPU backend the checkpoint's ${m.type.slice(0, 4)}`);
    if (m.data.length === 0 && this.tensors.holds(m)) return m; // adopted already
    const gpu = this.tensors.matrix(m); // uploaded now, or found if a matmul used m before
    const out: Matrix = { rows: m.rows, cols: m.cols, type: m.type, data: emptyLike(m.data), ...(m.name === undefined ? {} : { name: m.name }) };
    this.tensors.hold(out, gpu);
    return out;
  }

  /** A matrix only the Float32Array methods read: they run on the CPU, so it keeps its data, and nothing is uploaded. */
  adoptForHost(m: Matrix): Matrix {
    return m;
  }

  /** Waits for the device to finish what was submitted; rejects if it reported an error or was lost. */
  async ready(): Promise<void> {
    this.stream.flush();
    await Promise.race([this.device.queue.onSubmittedWorkDone(), this.stream.lostSignal]);
    this.stream.check();
  }

  matmul = referenceBackend.matmul;
  activate = referenceBackend.activate;
  layerNorm = referenceBackend.layerNorm;
  groupNorm = referenceBackend.groupNorm;
  wkv4 = referenceBackend.wkv4;
  wkv5 = referenceBackend.wkv5;
  wkv7 = referenceBackend.wkv7;
}

/** A zero-length array of data's kind: an adopted matrix's data keeps its type (f32, 16-bit, bytes) and no weights. */
function emptyLike(data: Matrix["data"]): Matrix["data"] {
  if (data instanceof Float32Array) return new Float32Array(0);
  if (data instanceof Uint16Array) return new Uint16Array(0);
  return new Uint8Array(0);
}

/** The backend prepareWebGpu made, or why there is none. */
let prepared: { backend: WebGpuBackend | null; reason: string } = { backend: null, reason: "WebGPU has not been initialized (prepareWebGpu)" };

/** Why the registry cannot offer "webgpu" here, or null when it can. */
export function webGpuUnavailableReason(): string | null {
  return prepared.backend ? null : prepared.reason;
}

/** The device's adapter in words, for messages (`rwkv info --backends`, the page). */
function describe(adapter: GpuAdapter): string {
  const i = adapter.info;
  return [i?.vendor, i?.architecture, i?.device, i?.description].filter((s) => s).join(" ") || "unnamed adapter";
}

/**
 * Acquires an adapter and a device from `gpu` (default navigator.gpu) and registers the "webgpu"
 * backend on it. Returns the backend, or null with the reason kept for webGpuUnavailableReason:
 * no WebGPU in this runtime, no adapter, or a device that could not be created.
 */
export async function prepareWebGpu(gpu: Gpu | null = navigatorGpu(), options: WebGpuOptions = {}): Promise<WebGpuBackend | null> {
  if (prepared.backend) return prepared.backend;
  if (!gpu) {
    prepared = { backend: null, reason: options.missing ?? "this runtime has no WebGPU (navigator.gpu is missing; browsers offer it only to secure contexts)" };
    return null;
  }
  try {
    const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) {
      prepared = { backend: null, reason: "WebGPU found no adapter (no GPU, or its driver is blocked)" };
      return null;
    }
    const l = adapter.limits;
    const features = ["shader-f16"].filter((f) => adapter.features.has(f));
    const device = await adapter.requestDevice({
      requiredFeatures: features,
      requiredLimits: {
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize, maxBufferSize: l.maxBufferSize,
        maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      },
    });
    const backend = new WebGpuBackend(device, describe(adapter), options);
    prepared = { backend, reason: "" };
    void backend.stream.lostSignal.then((e) => { prepared = { backend: null, reason: e.message }; });
    return backend;
  } catch (e) {
    prepared = { backend: null, reason: `WebGPU device request failed: ${e instanceof Error ? e.message : String(e)}` };
    return null;
  }
}

/** The backend prepareWebGpu made (the registry's probe), or null. */
export function webGpuBackend(): WebGpuBackend | null {
  return prepared.backend;
}
