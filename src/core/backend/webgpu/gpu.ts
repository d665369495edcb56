/*
 * The part of the WebGPU API this backend uses, declared here: the core compiles without the DOM
 * library (it also runs in Node, where the API comes from the optional `webgpu` package), so these
 * are structural types that both browsers' `navigator.gpu` and Dawn's satisfy.
 */

/** GPUBufferUsage flags (WebGPU spec §5.1). */
export const BufferUsage = { MAP_READ: 0x0001, COPY_SRC: 0x0004, COPY_DST: 0x0008, UNIFORM: 0x0040, STORAGE: 0x0080 } as const;
/** GPUMapMode.READ. */
export const MAP_READ = 0x0001;

export interface GpuLimits {
  readonly maxStorageBufferBindingSize: number;
  readonly maxBufferSize: number;
  readonly maxStorageBuffersPerShaderStage: number;
  readonly maxComputeWorkgroupsPerDimension: number;
  readonly minUniformBufferOffsetAlignment: number;
}

export interface GpuAdapterInfo { readonly vendor?: string; readonly architecture?: string; readonly device?: string; readonly description?: string }

export interface GpuAdapter {
  readonly features: ReadonlySet<string>;
  readonly limits: GpuLimits;
  readonly info?: GpuAdapterInfo;
  requestDevice(descriptor?: { requiredFeatures?: string[]; requiredLimits?: Record<string, number> }): Promise<GpuDevice>;
}

export interface Gpu {
  requestAdapter(options?: { powerPreference?: "high-performance" | "low-power" }): Promise<GpuAdapter | null>;
}

export interface GpuBuffer {
  readonly size: number;
  mapAsync(mode: number, offset?: number, size?: number): Promise<void>;
  getMappedRange(offset?: number, size?: number): ArrayBuffer;
  unmap(): void;
  destroy(): void;
}

export interface GpuBindGroupEntry { binding: number; resource: { buffer: GpuBuffer; offset?: number; size?: number } }
export type GpuBindGroup = object;
export interface GpuBindGroupLayout { readonly __brand?: "layout" }
export interface GpuComputePipeline { getBindGroupLayout(index: number): GpuBindGroupLayout }
export type GpuShaderModule = object;
export type GpuPipelineLayout = object;
/** GPUShaderStage.COMPUTE. */
export const SHADER_STAGE_COMPUTE = 0x4;
export interface GpuBindGroupLayoutEntry {
  binding: number;
  visibility: number;
  buffer: { type: "storage" | "read-only-storage" | "uniform"; hasDynamicOffset?: boolean };
}

export interface GpuComputePass {
  setPipeline(p: GpuComputePipeline): void;
  setBindGroup(index: number, g: GpuBindGroup, dynamicOffsets?: number[]): void;
  dispatchWorkgroups(x: number, y?: number, z?: number): void;
  end(): void;
}

export type GpuCommandBuffer = object;

export interface GpuCommandEncoder {
  beginComputePass(): GpuComputePass;
  copyBufferToBuffer(src: GpuBuffer, srcOffset: number, dst: GpuBuffer, dstOffset: number, size: number): void;
  finish(): GpuCommandBuffer;
}

export interface GpuQueue {
  submit(buffers: GpuCommandBuffer[]): void;
  writeBuffer(buffer: GpuBuffer, offset: number, data: ArrayBufferView | ArrayBufferLike, dataOffset?: number, size?: number): void;
  onSubmittedWorkDone(): Promise<void>;
}

export interface GpuDeviceLostInfo { readonly reason: string; readonly message: string }
export interface GpuError { readonly message: string }

export interface GpuDevice {
  readonly features: ReadonlySet<string>;
  readonly limits: GpuLimits;
  readonly queue: GpuQueue;
  readonly lost: Promise<GpuDeviceLostInfo>;
  onuncapturederror: ((e: { error: GpuError }) => void) | null;
  createBuffer(d: { size: number; usage: number; mappedAtCreation?: boolean }): GpuBuffer;
  createShaderModule(d: { code: string }): GpuShaderModule;
  createComputePipeline(d: { layout: "auto" | GpuPipelineLayout; compute: { module: GpuShaderModule; entryPoint: string } }): GpuComputePipeline;
  createBindGroupLayout(d: { entries: GpuBindGroupLayoutEntry[] }): GpuBindGroupLayout;
  createPipelineLayout(d: { bindGroupLayouts: GpuBindGroupLayout[] }): GpuPipelineLayout;
  createBindGroup(d: { layout: GpuBindGroupLayout; entries: GpuBindGroupEntry[] }): GpuBindGroup;
  createCommandEncoder(): GpuCommandEncoder;
  pushErrorScope(filter: "validation" | "out-of-memory" | "internal"): void;
  popErrorScope(): Promise<GpuError | null>;
  destroy(): void;
}

/** navigator.gpu where this runtime has it (browsers in a secure context), else null. */
export function navigatorGpu(): Gpu | null {
  const nav = (globalThis as { navigator?: { gpu?: Gpu } }).navigator;
  return nav?.gpu ?? null;
}
