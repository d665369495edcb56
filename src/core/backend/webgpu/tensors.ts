import type { Activation, Arena, Matrix, Tensor, TensorKernels } from "../backend.js";
import { SlotArena } from "../slot-arena.js";
import type { StateDevice } from "../../model/state.js";
import { BufferUsage, type GpuBuffer } from "./gpu.js";
import { gpuRowWords, matmulKernel, packForGpu } from "./matmul.js";
import { SHADERS, WG } from "./shaders.js";
import { f32, type GpuStream, type Param } from "./stream.js";

/*
 * The WebGPU backend's tensor kernels: every tensor is a storage buffer of its own (arena slots,
 * constants, recurrent states), the kernels are WGSL dispatches recorded on the device's stream
 * (stream.ts), and nothing comes back to JavaScript but what readAsync asks for.
 *
 * Recurrent states: each state array gets a buffer the first time it is bound, and that buffer, not
 * the array, holds the values from then on (the array is stale after a forward). The model hands
 * each state this table's StateDevice, so `await state.sync()` reads them back when a caller needs
 * the numbers (a state file, a test), and `state.clone()` copies them buffer to buffer without a
 * read-back (the prefix cache, the server's slots). Once synced, the array is the truth again and
 * the next bind uploads it, so a state edited in JavaScript after sync() is honoured.
 *
 * Letters as in backend.ts: R rows, C channels, H heads, N head size, T tokens of one sequence.
 */

/** A tensor in a GPU buffer (at least rows·cols f32; arena slots may be larger). */
export class GpuTensor implements Tensor {
  readonly dtype = "f32";
  constructor(public rows: number, public cols: number, readonly buffer: GpuBuffer) {}
  get size(): number { return this.rows * this.cols; }
}

function g(t: Tensor): GpuTensor {
  if (!(t instanceof GpuTensor)) throw new Error("a tensor of another backend was passed to the WebGPU kernels");
  return t;
}

/** The storage bindings a shader declares read_write (parsed once per shader). */
function writable(code: string): ReadonlySet<number> {
  let w = WRITABLE.get(code);
  if (!w) WRITABLE.set(code, (w = new Set([...code.matchAll(/@binding\((\d+)\)\s*var<storage,\s*read_write>/g)].map((m) => Number(m[1])))));
  return w;
}
const WRITABLE = new Map<string, ReadonlySet<number>>();
/** The matmul contract: y (binding 0) is the one output. */
const MATMUL_WRITES: ReadonlySet<number> = new Set([0]);

const TENSOR_USAGE = BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST;

/** A weight matrix on the GPU: row chunks, each within one storage binding. */
export interface GpuMatrix { readonly chunks: ReadonlyArray<{ readonly buffer: GpuBuffer; readonly row0: number; readonly rows: number }> }

/** Limits on one matrix chunk (the device's, or smaller in tests). */
export interface ChunkLimits { readonly maxBindingBytes: number }

class GpuArena extends SlotArena<GpuTensor> {
  private readonly live = new Set<GpuBuffer>();
  constructor(private readonly K: WebGpuTensorKernels) { super(); }
  protected make(rows: number, cols: number): GpuTensor {
    const t = new GpuTensor(rows, cols, this.K.buffer(rows * cols));
    this.live.add(t.buffer);
    return t;
  }
  protected holds(t: GpuTensor, n: number): boolean { return t.buffer.size >= 4 * n; }
  protected override drop(t: GpuTensor): void {
    this.live.delete(t.buffer);
    this.K.stream.retire(t.buffer);
  }
  override dispose(): void {
    for (const b of this.live) this.K.stream.retire(b);
    this.live.clear();
    super.dispose();
  }
}

/** Where a state array's values are. */
interface Resident { readonly t: GpuTensor; onDevice: boolean }

export class WebGpuTensorKernels implements TensorKernels, StateDevice {
  private readonly states = new WeakMap<Float32Array, Resident>();
  private readonly matrices = new WeakMap<Matrix, GpuMatrix>();
  /** A scratch buffer for copies whose source and destination are the same buffer, and attention's scores. */
  private scratch: GpuTensor | null = null;
  private scores: GpuTensor | null = null;
  /** States live in this backend's buffers (see the header). */
  readonly stateDevice: StateDevice = this;

  constructor(readonly stream: GpuStream, private readonly limits: ChunkLimits, private readonly shaderF16: boolean) {}

  /** A storage buffer for n f32 (at least 16 bytes: a binding may not be empty). */
  buffer(n: number): GpuBuffer {
    this.stream.check();
    return this.stream.device.createBuffer({ size: Math.max(16, 4 * n), usage: TENSOR_USAGE });
  }

  arena(): Arena { return new GpuArena(this); }

  constant(data: Float32Array, rows = 1): Tensor {
    const t = new GpuTensor(rows, data.length / rows, this.buffer(data.length));
    this.upload(t.buffer, 0, data, 0, data.length);
    return t;
  }

  bindState(a: Float32Array): Tensor {
    let r = this.states.get(a);
    if (!r) this.states.set(a, (r = { t: new GpuTensor(1, a.length, this.buffer(a.length)), onDevice: false }));
    if (!r.onDevice) {
      this.upload(r.t.buffer, 0, a, 0, a.length);
      r.onDevice = true;
    }
    return r.t;
  }

  unbindState(): void {} // the buffer holds the values; sync() reads them when needed

  async sync(arrays: readonly Float32Array[]): Promise<void> {
    await Promise.all(arrays.map(async (a) => {
      const r = this.states.get(a);
      if (!r || !r.onDevice) return;
      await this.readAsync(r.t, 1, a, 0);
      r.onDevice = false;
    }));
  }

  copy(from: readonly Float32Array[], to: readonly Float32Array[]): void {
    from.forEach((a, i) => {
      const r = this.states.get(a);
      if (!r || !r.onDevice) return;
      const t = new GpuTensor(1, a.length, this.buffer(a.length));
      this.stream.copy(r.t.buffer, 0, t.buffer, 0, 4 * a.length);
      this.states.set(to[i], { t, onDevice: true });
    });
  }

  write(t: Tensor, dst: number, src: Float32Array, from: number, n: number): void {
    this.upload(g(t).buffer, dst, src, from, n);
  }

  /** Writes from JavaScript land after the commands recorded so far (they are submitted first). */
  private upload(b: GpuBuffer, dst: number, src: Float32Array, from: number, n: number): void {
    this.stream.check();
    if (n === 0) return;
    this.stream.flush();
    this.stream.device.queue.writeBuffer(b, 4 * dst, src.buffer, src.byteOffset + 4 * from, 4 * n);
  }

  read(): Float32Array {
    throw new Error("the WebGPU backend reads results back asynchronously: use readAsync");
  }

  async readAsync(t: Tensor, rows = t.rows, out?: Float32Array, at = 0): Promise<Float32Array> {
    const n = rows * t.cols;
    const values = new Float32Array(n ? await this.stream.read(g(t).buffer, 0, 4 * n) : new ArrayBuffer(0));
    if (!out) return values;
    out.set(values, at);
    return out;
  }

  copyRows(dst: Tensor, d0: number, src: Tensor, s0: number, n: number): void {
    const C = src.cols, bytes = 4 * n * C;
    const a = g(src).buffer, b = g(dst).buffer;
    if (a !== b) return this.stream.copy(a, 4 * s0 * C, b, 4 * d0 * C, bytes);
    const tmp = this.scratchFor(n * C);
    this.stream.copy(a, 4 * s0 * C, tmp, 0, bytes);
    this.stream.copy(tmp, 0, b, 4 * d0 * C, bytes);
  }

  columns(dst: Tensor, src: Tensor, c0: number): void {
    const n = dst.cols, total = src.rows * n;
    this.run(SHADERS.columns, [dst, src], [total, n, src.cols, c0], total);
  }

  matmul(y: Tensor, x: Tensor, W: Matrix): void {
    const R = x.rows, kernel = matmulKernel(W.type, R, { shaderF16: this.shaderF16 });
    const p = this.stream.pipeline(kernel.code, kernel.entryPoint);
    for (const c of this.matrix(W).chunks) {
      this.stream.dispatch(p, [...this.buffers([y, x], MATMUL_WRITES), c.buffer], [R, c.rows, W.cols, c.row0, W.rows], kernel.workgroups(R, c.rows));
    }
  }

  /** Whether W's chunks are on the GPU already (adopted, or used before). */
  holds(W: Matrix): boolean {
    return this.matrices.has(W);
  }

  /** Records `m` as W's chunks (WebGpuBackend.adopt: W is the released matrix, its chunks uploaded from the original). */
  hold(W: Matrix, m: GpuMatrix): void {
    this.matrices.set(W, m);
  }

  /** W's chunks on the GPU, uploaded on first use when W was not adopted (e.g. a matrix made by a test). */
  matrix(W: Matrix): GpuMatrix {
    let m = this.matrices.get(W);
    if (!m) this.matrices.set(W, (m = this.uploadMatrix(W)));
    return m;
  }

  /** Uploads W in row chunks that each fit one storage binding. */
  uploadMatrix(W: Matrix): GpuMatrix {
    const rowBytes = 4 * gpuRowWords(W.type, W.cols);
    const perChunk = Math.floor(this.limits.maxBindingBytes / rowBytes);
    if (perChunk < 1) {
      throw new Error(`a ${W.rows}x${W.cols} ${W.type} matrix has rows of ${rowBytes} bytes on the GPU, more than this adapter's largest storage binding (${this.limits.maxBindingBytes} bytes)`);
    }
    const chunks = [];
    for (let row0 = 0; row0 < W.rows; row0 += perChunk) {
      const rows = Math.min(perChunk, W.rows - row0);
      const words = packForGpu(W, row0, rows);
      this.stream.check();
      const buffer = this.stream.device.createBuffer({ size: Math.max(16, words.byteLength), usage: BufferUsage.STORAGE | BufferUsage.COPY_DST });
      this.stream.flush();
      this.stream.device.queue.writeBuffer(buffer, 0, words.buffer, words.byteOffset, words.byteLength);
      chunks.push({ buffer, row0, rows });
    }
    return { chunks };
  }

  activate(f: Activation, x: Tensor, scale = 1): void {
    const n = g(x).size;
    this.run(SHADERS.activate(f), [x], [n, f32(scale)], n);
  }

  layerNorm(y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, eps: number): void {
    this.perGroup(SHADERS.norm, [y, x, weight, bias], [x.rows, x.cols, 1, f32(eps)], x.rows);
  }

  groupNorm(y: Tensor, x: Tensor, H: number, weight: Tensor, bias: Tensor, eps: number): void {
    this.perGroup(SHADERS.norm, [y, x, weight, bias], [x.rows * H, x.cols / H, H, f32(eps)], x.rows * H);
  }

  add(x: Tensor, d: Tensor): void { this.elementwise(SHADERS.add, [x, d], g(x).size); }
  mul(x: Tensor, d: Tensor): void { this.elementwise(SHADERS.mul, [x, d], g(x).size); }
  sub(y: Tensor, a: Tensor, b: Tensor): void { this.elementwise(SHADERS.sub, [y, a, b], g(a).size); }
  addRow(x: Tensor, bias: Tensor): void {
    const n = g(x).size;
    this.run(SHADERS.addRow, [x, bias], [n, x.cols], n);
  }

  shift(sx: Tensor, xx: Tensor, prev: Tensor, row0: number, T: number): void {
    const rb = 4 * xx.cols, s = g(sx).buffer, x = g(xx).buffer, pr = g(prev).buffer;
    if (T > 1) this.copyBytes(x, row0 * rb, s, (row0 + 1) * rb, (T - 1) * rb);
    this.copyBytes(pr, 0, s, row0 * rb, rb);
    this.copyBytes(x, (row0 + T - 1) * rb, pr, 0, rb);
  }

  lerp(outs: readonly Tensor[], xx: Tensor, sx: Tensor, ms: readonly Tensor[]): void {
    const n = g(xx).size;
    outs.forEach((o, f) => this.run(SHADERS.lerp, [o, xx, sx, ms[f]], [n, xx.cols], n));
  }

  mix(outs: readonly Tensor[], xx: Tensor, sx: Tensor, ms: readonly Tensor[]): void {
    const n = g(xx).size;
    outs.forEach((o, f) => this.run(SHADERS.mix, [o, xx, sx, ms[f]], [n, xx.cols], n));
  }

  lerpBy(y: Tensor, xx: Tensor, d: Tensor, m: Tensor, dyn: Tensor | null): void {
    const n = g(xx).size;
    if (dyn) this.run(SHADERS.lerpByDyn, [y, xx, d, m, dyn], [n, xx.cols], n);
    else this.run(SHADERS.lerpBy, [y, xx, d, m], [n, xx.cols], n);
  }

  v7Keys(aOut: Tensor, bOut: Tensor, k: Tensor, v: Tensor, iclr: Tensor, kK: Tensor, kA: Tensor,
    vGate: Tensor | null, vFirst: Tensor | null, N: number): void {
    const groups = g(k).size / N;
    this.perGroup(SHADERS.v7Keys, [aOut, bOut, k, iclr, kK, kA], [groups, N, k.cols], groups);
    if (vGate && vFirst) this.elementwise(SHADERS.v7Gate, [v, vFirst, vGate], g(v).size);
  }

  v7Bonus(out: Tensor, r: Tensor, k: Tensor, v: Tensor, gate: Tensor, rK: Tensor, N: number): void {
    const groups = g(out).size / N;
    this.perGroup(SHADERS.v7Bonus, [out, r, k, v, gate, rK], [groups, N, out.cols], groups);
  }

  rowMatVec(y: Tensor, x: Tensor, m: Tensor): void {
    const total = x.rows * y.cols;
    this.run(SHADERS.rowMatVec, [y, x, m], [total, x.cols, y.cols], total);
  }

  softcapAttention(y: Tensor, q: Tensor, k: Tensor, v: Tensor, cap: number, scale: number, pos0: number): void {
    const n = q.rows, Tk = pos0 + n; // the scores of query t: keys 0 … pos0+t
    if (!this.scores || this.scores.buffer.size < 4 * n * Tk) {
      if (this.scores) this.stream.retire(this.scores.buffer);
      this.scores = new GpuTensor(n, Tk, this.buffer(Math.max(n * Tk, 2 * (this.scores?.size ?? 0)))); // (n, Tk), grown by doubling
    }
    this.perGroup(SHADERS.softcapAttention, [y, q, k, v, this.scores], [n, q.cols, v.cols, pos0, Tk, f32(cap), f32(scale)], n);
  }

  wkv4(y: Tensor, w: Tensor, u: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor, row0: number, T: number): void {
    const C = k.cols;
    this.run(SHADERS.wkv4, [y, w, u, k, v, aa, bb, pp], [C, row0, T], C);
  }

  wkv5(y: Tensor, r: Tensor, k: Tensor, v: Tensor, decay: Tensor, u: Tensor, S: Tensor, H: number, row0: number, T: number): void {
    const C = k.cols, N = C / H;
    this.run(SHADERS.wkv5(N), [y, r, k, v, decay, u, S], [H, C, row0, T, decay.rows > 1 ? 1 : 0], C);
  }

  wkv7(y: Tensor, r: Tensor, decay: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, S: Tensor, H: number, row0: number, T: number): void {
    const C = k.cols, N = C / H;
    this.run(SHADERS.wkv7(N), [y, r, decay, k, v, a, b, S], [H, C, row0, T], C);
  }

  /** One invocation per element of n. */
  private elementwise(code: string, ts: readonly Tensor[], n: number): void {
    this.run(code, ts, [n], n);
  }

  /** A kernel of `invocations` threads in workgroups of WG. */
  private run(code: string, ts: readonly Tensor[], params: readonly Param[], invocations: number): void {
    this.dispatch(code, ts, params, Math.ceil(invocations / WG));
  }

  /** A kernel of one workgroup per row or head. */
  private perGroup(code: string, ts: readonly Tensor[], params: readonly Param[], groups: number): void {
    this.dispatch(code, ts, params, groups);
  }

  private dispatch(code: string, ts: readonly Tensor[], params: readonly Param[], groups: number): void {
    const max = this.stream.device.limits.maxComputeWorkgroupsPerDimension;
    const x = Math.min(groups, max), yCount = Math.ceil(groups / max);
    this.stream.dispatch(this.stream.pipeline(code), this.buffers(ts, writable(code)), params, [x, yCount, 1]);
  }

  /**
   * The tensors' buffers; one the kernel only reads that is also bound writable (`written` holds
   * the writable bindings) is read from a copy, since WebGPU forbids one buffer bound both ways in
   * a dispatch (the models pass the same tensor twice, e.g. lerpBy's xx as its output).
   */
  private buffers(ts: readonly Tensor[], written: ReadonlySet<number>): GpuBuffer[] {
    const out = ts.map((t) => g(t).buffer);
    const writes = new Set([...written].map((i) => out[i]));
    for (let i = 0; i < out.length; i++) {
      if (!written.has(i) && writes.has(out[i])) {
        const tmp = this.buffer(g(ts[i]).size); // rare (no model does it): a fresh copy, freed after submit
        this.stream.copy(out[i], 0, tmp, 0, 4 * g(ts[i]).size);
        this.stream.retire(tmp);
        out[i] = tmp;
      }
    }
    return out;
  }

  private copyBytes(src: GpuBuffer, so: number, dst: GpuBuffer, d: number, bytes: number): void {
    if (src !== dst) return this.stream.copy(src, so, dst, d, bytes);
    const tmp = this.scratchFor(bytes / 4);
    this.stream.copy(src, so, tmp, 0, bytes);
    this.stream.copy(tmp, 0, dst, d, bytes);
  }

  private scratchFor(n: number): GpuBuffer {
    if (!this.scratch || this.scratch.buffer.size < 4 * n) {
      if (this.scratch) this.stream.retire(this.scratch.buffer);
      this.scratch = new GpuTensor(1, n, this.buffer(n));
    }
    return this.scratch.buffer;
  }
}
