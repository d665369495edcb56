import { BufferUsage, type GpuBindGroup, type GpuBindGroupEntry, type GpuBindGroupLayout, type GpuBuffer, type GpuCommandEncoder, type GpuComputePass, type GpuComputePipeline, type GpuDevice, MAP_READ, SHADER_STAGE_COMPUTE } from "./gpu.js";

/*
 * The command stream of one WebGPU device: every kernel call is recorded into one command encoder
 * (one compute pass, closed only around buffer copies) and nothing is submitted until a result is
 * read back or JavaScript writes into a buffer — so a one-token forward is one submission.
 *
 * Kernel parameters are small uniform structs; each dispatch gets a slot of a uniform ring buffer
 * whose bytes are gathered on the CPU and written with one writeBuffer just before the submit
 * (queue operations run in order, so they land before the commands that read them). A full ring
 * submits early and starts over. The slot is a dynamic offset, so a bind group depends only on the
 * buffers bound: groups are cached by pipeline and buffers, and a forward that reuses its arena
 * (every token after the first) creates none.
 */

/** A uniform slot: WebGPU's largest minUniformBufferOffsetAlignment. */
const SLOT_BYTES = 256;
/** Dispatches per submission before the ring wraps (a 0.1B-model token needs ~500). */
const RING_SLOTS = 4096;
/**
 * Cached bind groups kept at most (then the cache starts over): bounded, since new states and
 * grown arena slots bring new buffers, and many times a model's own (a forward's few hundred).
 */
const MAX_BIND_GROUPS = 16384;

/** A kernel parameter written as an f32 (the others are u32). */
export interface F32 { readonly f32: number }
export const f32 = (v: number): F32 => ({ f32: v });
export type Param = number | F32;

/** Why the device stopped: set once by device.lost, then every call fails with it. */
export class GpuLostError extends Error {
  constructor(reason: string, message: string) {
    super(`the WebGPU device was lost (${reason}${message ? `: ${message}` : ""}); reload the model on a new backend`);
    this.name = "GpuLostError";
  }
}

interface Pipeline { readonly pipeline: GpuComputePipeline; readonly layout: GpuBindGroupLayout; readonly id: number }

/** The bindings a shader declares, in binding order: how each is bound (explicit layouts, for the dynamic offset). */
function bindingTypes(code: string): Array<"storage" | "read-only-storage" | "uniform"> {
  const out: Array<"storage" | "read-only-storage" | "uniform"> = [];
  for (const m of code.matchAll(/@binding\((\d+)\)\s*var<\s*(uniform|storage\s*(?:,\s*(read_write|read))?)\s*>/g)) {
    out[Number(m[1])] = m[2] === "uniform" ? "uniform" : m[3] === "read_write" ? "storage" : "read-only-storage";
  }
  return out;
}

export class GpuStream {
  private encoder: GpuCommandEncoder | null = null;
  private pass: GpuComputePass | null = null;
  private readonly ring: GpuBuffer;
  private readonly params = new DataView(new ArrayBuffer(RING_SLOTS * SLOT_BYTES));
  private slots = 0;
  private readonly pipelines = new Map<string, Pipeline>();
  private readonly groups = new Map<string, GpuBindGroup>();
  /** A number per buffer, for the bind-group cache's keys. */
  private readonly ids = new WeakMap<GpuBuffer, number>();
  private nextId = 0;
  /** Buffers replaced during recording: destroyed once the commands using them are submitted. */
  private retired: GpuBuffer[] = [];
  /** Mappable buffers for read-back, free ones by size: reused, so decoding allocates none per token. */
  private readonly staging: GpuBuffer[] = [];
  lost: GpuLostError | null = null;
  /** Resolves (never rejects) when the device is lost, so waits can race it and never hang. */
  readonly lostSignal: Promise<GpuLostError>;
  /** The first error the device reported outside any error scope (a failed allocation, a bad shader). */
  private firstError: string | null = null;

  constructor(readonly device: GpuDevice) {
    this.ring = device.createBuffer({ size: RING_SLOTS * SLOT_BYTES, usage: BufferUsage.UNIFORM | BufferUsage.COPY_DST });
    this.lostSignal = device.lost.then((info) => (this.lost = new GpuLostError(info.reason, info.message)));
    device.onuncapturederror = (e) => { this.firstError ??= e.error.message; };
  }

  /** Throws when the device is gone or has reported an error. */
  check(): void {
    if (this.lost) throw this.lost;
    if (this.firstError !== null) throw new Error(`WebGPU error: ${this.firstError}`);
  }

  /** The pipeline for a WGSL source, compiled on first use. */
  pipeline(code: string, entryPoint = "main"): Pipeline {
    const key = `${entryPoint}\n${code}`;
    let p = this.pipelines.get(key);
    if (!p) {
      const module = this.device.createShaderModule({ code });
      const layout = this.device.createBindGroupLayout({
        entries: bindingTypes(code).map((type, binding) => ({ binding, visibility: SHADER_STAGE_COMPUTE, buffer: { type, hasDynamicOffset: type === "uniform" } })),
      });
      const pipeline = this.device.createComputePipeline({ layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }), compute: { module, entryPoint } });
      p = { pipeline, layout, id: this.pipelines.size };
      this.pipelines.set(key, p);
    }
    return p;
  }

  /** Records one dispatch: storage `buffers` at bindings 0 … n-1, `params` as the uniform at binding n. */
  dispatch(p: Pipeline, buffers: readonly GpuBuffer[], params: readonly Param[], groups: readonly [number, number, number]): void {
    if (this.lost) throw this.lost;
    if (groups[0] === 0 || groups[1] === 0 || groups[2] === 0) return;
    if (this.slots === RING_SLOTS) this.flush();
    const at = this.slots++ * SLOT_BYTES;
    params.forEach((v, i) => {
      if (typeof v === "number") this.params.setUint32(at + 4 * i, v, true);
      else this.params.setFloat32(at + 4 * i, v.f32, true);
    });
    const pass = this.computePass();
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, this.bindGroup(p, buffers), [at]);
    pass.dispatchWorkgroups(groups[0], groups[1], groups[2]);
  }

  /** The bind group of these buffers for p (the uniform ring last, at the dynamic offset), cached. */
  private bindGroup(p: Pipeline, buffers: readonly GpuBuffer[]): GpuBindGroup {
    let key = String(p.id);
    for (const b of buffers) {
      let id = this.ids.get(b);
      if (id === undefined) this.ids.set(b, (id = this.nextId++));
      key += "," + id;
    }
    let group = this.groups.get(key);
    if (!group) {
      if (this.groups.size >= MAX_BIND_GROUPS) this.groups.clear();
      const entries: GpuBindGroupEntry[] = buffers.map((buffer, binding) => ({ binding, resource: { buffer } }));
      entries.push({ binding: buffers.length, resource: { buffer: this.ring, offset: 0, size: SLOT_BYTES } });
      this.groups.set(key, (group = this.device.createBindGroup({ layout: p.layout, entries })));
    }
    return group;
  }

  /** Records a copy of `bytes` bytes between two different buffers. */
  copy(src: GpuBuffer, srcOffset: number, dst: GpuBuffer, dstOffset: number, bytes: number): void {
    if (this.lost) throw this.lost;
    if (bytes === 0) return;
    this.closePass();
    this.commands().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Destroys `b` once the commands recorded so far have been submitted. */
  retire(b: GpuBuffer): void {
    if (this.encoder) this.retired.push(b);
    else b.destroy();
  }

  /** Submits what was recorded (with the parameters it reads). */
  flush(): void {
    if (!this.encoder) return;
    this.closePass();
    const encoder = this.encoder;
    this.encoder = null;
    if (this.slots) this.device.queue.writeBuffer(this.ring, 0, this.params.buffer, 0, this.slots * SLOT_BYTES);
    this.slots = 0;
    this.device.queue.submit([encoder.finish()]);
    for (const b of this.retired) b.destroy();
    this.retired = [];
  }

  /** Submits now, then copies `bytes` bytes of `src` (as they are after everything recorded) to JavaScript. */
  async read(src: GpuBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    this.check();
    const stage = this.takeStaging(bytes);
    this.copy(src, offset, stage, 0, bytes);
    this.flush();
    try {
      const lost = await Promise.race([stage.mapAsync(MAP_READ, 0, bytes).then(() => null), this.lostSignal]);
      if (lost) throw lost;
      this.check();
      const out = stage.getMappedRange(0, bytes).slice(0);
      stage.unmap();
      this.staging.push(stage);
      return out;
    } catch (e) {
      throw this.lost ?? e;
    }
  }

  private takeStaging(bytes: number): GpuBuffer {
    let best = -1;
    this.staging.forEach((b, i) => { if (b.size >= bytes && (best < 0 || b.size < this.staging[best].size)) best = i; });
    if (best >= 0) return this.staging.splice(best, 1)[0];
    const size = Math.max(256, 2 ** Math.ceil(Math.log2(bytes))); // powers of two, so sizes repeat
    return this.device.createBuffer({ size, usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST });
  }

  private commands(): GpuCommandEncoder {
    return (this.encoder ??= this.device.createCommandEncoder());
  }

  private computePass(): GpuComputePass {
    return (this.pass ??= this.commands().beginComputePass());
  }

  private closePass(): void {
    this.pass?.end();
    this.pass = null;
  }
}
