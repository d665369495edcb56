import type { Activation, Arena, Matrix, Tensor, TensorKernels } from "./backend.js";
import { referenceTensors } from "./reference.js";
import { SlotArena } from "./slot-arena.js";
import { ACTIVATE_WORK, ACTIVATION_IDS, align, CHUNKS_PER_THREAD, JOB, type WasmBackend } from "./wasm.js";

/*
 * The wasm backend's tensor kernels (TensorKernels): tensors are regions of the backend's one
 * WebAssembly memory, named by byte offset, so a forward runs as a sequence of jobs over them with
 * nothing copied between kernels. Only `write` (token embeddings) and `read` (logits, hidden
 * states) cross to JavaScript. The element-wise glue is assembly/glue.ts; copies of whole rows are
 * memory moves done here (copyWithin on the memory's bytes).
 */

/** Job ids of assembly/glue.ts. */
const GLUE = { add: 20, mul: 21, sub: 22, addRow: 23, lerp: 24, mix: 25, lerpBy: 26, v7Keys: 27, v7Bonus: 28, rowMatVec: 29, softcapAttention: 30 } as const;
/** Work units per element of a glue job (against the backend's parallel threshold): a few f64 operations. */
const GLUE_WORK = 4;
/** Work units per element of the per-head RWKV-7 kernels (several passes over each head). */
const HEAD_WORK = 12;
/** The most (output, mix) pairs of one lerp/mix job (glue.ts MAX_PAIRS). */
const MAX_PAIRS = 6;

/** A tensor in wasm memory: `ptr` is its byte offset, `bytes` the size of its allocation. */
export class WasmTensor implements Tensor {
  readonly dtype = "f32";
  constructor(public rows: number, public cols: number, readonly ptr: number, readonly bytes = 4 * rows * cols) {}
}

/** A number's f32 bits as an i32 job argument (the glue reinterprets it). */
function f32Bits(x: number): number {
  F32_BITS[0] = x;
  return I32_BITS[0];
}
const F32_BITS = new Float32Array(1), I32_BITS = new Int32Array(F32_BITS.buffer);

function p(t: Tensor): number {
  if (!(t instanceof WasmTensor)) throw new Error("a tensor of another backend was passed to the wasm kernels");
  return t.ptr;
}

/** Slots in wasm memory (SlotArena); freed by dispose() or when the arena is collected. */
class WasmArena extends SlotArena<WasmTensor> {
  /** [ptr, bytes] of every live slot, for the finalizer (which must not hold the arena). */
  private readonly blocks: Array<[number, number]> = [];
  constructor(private readonly be: WasmBackend, private readonly registry: FinalizationRegistry<Array<[number, number]>>) {
    super();
    registry.register(this, this.blocks, this);
  }
  protected make(rows: number, cols: number): WasmTensor {
    const bytes = align(4 * rows * cols);
    const ptr = this.be.alloc(bytes);
    this.blocks.push([ptr, bytes]);
    return new WasmTensor(rows, cols, ptr, bytes);
  }
  protected holds(t: WasmTensor, n: number): boolean { return t.bytes >= 4 * n; }
  protected override drop(t: WasmTensor): void {
    const i = this.blocks.findIndex((b) => b[0] === t.ptr);
    this.be.release(t.ptr, this.blocks[i][1]);
    this.blocks.splice(i, 1);
  }
  override dispose(): void {
    this.registry.unregister(this);
    for (const [ptr, bytes] of this.blocks) this.be.release(ptr, bytes);
    this.blocks.length = 0;
    super.dispose();
  }
}

export class WasmTensorKernels implements TensorKernels {
  /** Tensors for the backend's resident state arrays: made once per array. */
  private readonly states = new WeakMap<Float32Array, WasmTensor>();
  private readonly arenas: FinalizationRegistry<Array<[number, number]>>;
  private readonly constants: FinalizationRegistry<[number, number]>;
  /** A 16-byte tail buffer per chunk of a parallel activation (kernels.ts activate). */
  private readonly tails: number;
  /** softcapAttention's f64 accumulators, grown to the largest call. */
  private attentionWork = { ptr: 0, bytes: 0 };

  constructor(private readonly be: WasmBackend) {
    this.arenas = new FinalizationRegistry((blocks) => { for (const [ptr, bytes] of blocks) be.release(ptr, bytes); });
    this.constants = new FinalizationRegistry(([ptr, bytes]) => be.release(ptr, bytes));
    this.tails = be.alloc(16 * 64 * CHUNKS_PER_THREAD); // room for 64 threads
  }

  arena(): Arena {
    return new WasmArena(this.be, this.arenas);
  }

  constant(data: Float32Array, rows = 1): Tensor {
    const bytes = align(4 * Math.max(1, data.length));
    const ptr = this.be.alloc(bytes);
    this.be.f32.set(data, ptr >>> 2);
    const t = new WasmTensor(rows, data.length / rows, ptr);
    this.constants.register(t, [ptr, bytes]);
    return t;
  }

  bindState(a: Float32Array, arena: Arena): Tensor {
    if (this.be.isResident(a)) {
      let t = this.states.get(a);
      if (!t) this.states.set(a, (t = new WasmTensor(1, a.length, a.byteOffset)));
      return t;
    }
    const t = arena.take(1, a.length); // (1, n) a copy, written back by unbindState
    this.be.f32.set(a, p(t) >>> 2);
    return t;
  }

  unbindState(a: Float32Array, t: Tensor): void {
    if (this.be.isResident(a) && p(t) === a.byteOffset) return;
    a.set(this.be.f32.subarray(p(t) >>> 2, (p(t) >>> 2) + a.length));
  }

  write(t: Tensor, dst: number, src: Float32Array, from: number, n: number): void {
    const f = this.be.f32, o = (p(t) >>> 2) + dst;
    for (let i = 0; i < n; i++) f[o + i] = src[from + i];
  }

  read(t: Tensor, rows = t.rows, out?: Float32Array, at = 0): Float32Array {
    const o = p(t) >>> 2, n = rows * t.cols;
    if (!out) return this.be.f32.slice(o, o + n);
    out.set(this.be.f32.subarray(o, o + n), at);
    return out;
  }

  readAsync(t: Tensor, rows?: number, out?: Float32Array, at?: number): Promise<Float32Array> {
    return Promise.resolve(this.read(t, rows, out, at));
  }

  copyRows(dst: Tensor, d0: number, src: Tensor, s0: number, n: number): void {
    const C = src.cols;
    const s = p(src) + 4 * s0 * C;
    this.be.u8.copyWithin(p(dst) + 4 * d0 * C, s, s + 4 * n * C);
  }

  columns(dst: Tensor, src: Tensor, c0: number): void {
    const n = dst.cols, W = src.cols, u8 = this.be.u8;
    for (let t = 0; t < src.rows; t++) {
      const s = p(src) + 4 * (t * W + c0);
      u8.copyWithin(p(dst) + 4 * t * n, s, s + 4 * n);
    }
  }

  matmul(y: Tensor, x: Tensor, W: Matrix): void {
    const info = this.be.adoptedInfo(W);
    if (!info) { // adopted by another backend: correct, through JavaScript
      const out = referenceTensors.arena().take(x.rows, W.rows);
      referenceTensors.matmul(out, referenceTensors.constant(this.read(x), x.rows), W);
      this.write(y, 0, referenceTensors.read(out), 0, x.rows * W.rows);
      return;
    }
    this.be.matmulAt(p(x), p(y), x.rows, W, info);
  }

  activate(f: Activation, x: Tensor, scale = 1): void {
    const n = x.rows * x.cols;
    this.be.run(JOB.activate, n * ACTIVATE_WORK, [p(x), n, ACTIVATION_IDS[f], this.tails, 0, 0, this.be.activationTable], undefined, scale);
  }

  layerNorm(y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, eps: number): void {
    this.be.run(JOB.norm, x.rows * x.cols * 4, [p(x), x.rows, 1, x.cols, p(weight), p(bias), p(y)], eps);
  }

  groupNorm(y: Tensor, x: Tensor, H: number, weight: Tensor, bias: Tensor, eps: number): void {
    this.be.run(JOB.norm, x.rows * x.cols * 4, [p(x), x.rows, H, x.cols / H, p(weight), p(bias), p(y)], eps);
  }

  add(x: Tensor, d: Tensor): void { this.elementwise(GLUE.add, [p(x), p(d)], x); }
  mul(x: Tensor, d: Tensor): void { this.elementwise(GLUE.mul, [p(x), p(d)], x); }
  sub(y: Tensor, a: Tensor, b: Tensor): void { this.elementwise(GLUE.sub, [p(y), p(a), p(b)], a); }
  addRow(x: Tensor, bias: Tensor): void {
    this.be.run(GLUE.addRow, x.rows * x.cols, [p(x), p(bias), x.rows, x.cols]);
  }

  shift(sx: Tensor, xx: Tensor, prev: Tensor, row0: number, T: number): void {
    const C = xx.cols, rb = 4 * C, u8 = this.be.u8;
    const s = p(sx) + row0 * rb, x = p(xx) + row0 * rb, pr = p(prev);
    u8.copyWithin(s + rb, x, x + (T - 1) * rb);
    u8.copyWithin(s, pr, pr + rb);
    u8.copyWithin(pr, x + (T - 1) * rb, x + T * rb);
  }

  lerp(outs: readonly Tensor[], xx: Tensor, sx: Tensor, ms: readonly Tensor[]): void {
    this.interpolate(GLUE.lerp, outs, xx, sx, ms);
  }

  mix(outs: readonly Tensor[], xx: Tensor, sx: Tensor, ms: readonly Tensor[]): void {
    this.interpolate(GLUE.mix, outs, xx, sx, ms);
  }

  lerpBy(y: Tensor, xx: Tensor, d: Tensor, m: Tensor, dyn: Tensor | null): void {
    this.be.run(GLUE.lerpBy, xx.rows * xx.cols * GLUE_WORK, [p(y), p(xx), p(d), p(m), dyn ? p(dyn) : 0, xx.rows, xx.cols]);
  }

  v7Keys(aOut: Tensor, bOut: Tensor, k: Tensor, v: Tensor, iclr: Tensor, kK: Tensor, kA: Tensor,
    vGate: Tensor | null, vFirst: Tensor | null, N: number): void {
    this.be.run(GLUE.v7Keys, k.rows * k.cols * HEAD_WORK, [p(aOut), p(bOut), p(k), p(v), p(iclr), p(kK), p(kA),
      vGate && vFirst ? p(vGate) : 0, vGate && vFirst ? p(vFirst) : 0, k.rows, k.cols, N]);
  }

  v7Bonus(out: Tensor, r: Tensor, k: Tensor, v: Tensor, g: Tensor, rK: Tensor, N: number): void {
    this.be.run(GLUE.v7Bonus, out.rows * out.cols * HEAD_WORK, [p(out), p(r), p(k), p(v), p(g), p(rK), out.rows, out.cols, N]);
  }

  rowMatVec(y: Tensor, x: Tensor, m: Tensor): void {
    this.be.run(GLUE.rowMatVec, x.rows * x.cols * y.cols, [p(y), p(x), p(m), x.rows, x.cols, y.cols]);
  }

  softcapAttention(y: Tensor, q: Tensor, k: Tensor, v: Tensor, cap: number, scale: number, pos0: number): void {
    const n = q.rows, Cv = v.cols, bytes = align(8 * n * Cv);
    if (this.attentionWork.bytes < bytes) { // f64 accumulators per query, kept for the next call
      if (this.attentionWork.bytes) this.be.release(this.attentionWork.ptr, this.attentionWork.bytes);
      this.attentionWork = { ptr: this.be.alloc(bytes), bytes };
    }
    const keys = n * (pos0 + (n + 1) / 2); // the causal triangle
    this.be.run(GLUE.softcapAttention, keys * (2 * q.cols + Cv) * 2, [p(y), p(q), p(k), p(v), n, q.cols, Cv, pos0,
      f32Bits(cap), f32Bits(scale), this.attentionWork.ptr]);
  }

  wkv4(y: Tensor, w: Tensor, u: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor, row0: number, T: number): void {
    const C = k.cols, o = 4 * row0 * C;
    this.be.run(JOB.wkv4, T * C * 16, [T, C, p(w), p(u), p(k) + o, p(v) + o, p(aa), p(bb), p(pp), p(y) + o]);
  }

  wkv5(y: Tensor, r: Tensor, k: Tensor, v: Tensor, decay: Tensor, u: Tensor, S: Tensor, H: number, row0: number, T: number): void {
    const C = k.cols, N = C / H, o = 4 * row0 * C;
    const perToken = decay.rows > 1 ? 1 : 0;
    this.be.run(JOB.wkv5, T * H * N * N, [T, H, N, p(r) + o, p(k) + o, p(v) + o, p(decay) + perToken * o, perToken, p(u), p(S), p(y) + o]);
  }

  wkv7(y: Tensor, r: Tensor, decay: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, S: Tensor, H: number, row0: number, T: number): void {
    const C = k.cols, N = C / H, o = 4 * row0 * C;
    this.be.run(JOB.wkv7, T * H * N * N * 4, [T, H, N, p(r) + o, p(decay) + o, p(k) + o, p(v) + o, p(a) + o, p(b) + o, p(S), p(y) + o,
      this.be.activationTable]);
  }

  private elementwise(job: number, ptrs: number[], shape: Tensor): void {
    const n = shape.rows * shape.cols;
    this.be.run(job, n, [...ptrs, n]);
  }

  private interpolate(job: number, outs: readonly Tensor[], xx: Tensor, sx: Tensor, ms: readonly Tensor[]): void {
    for (let f0 = 0; f0 < outs.length; f0 += MAX_PAIRS) {
      const n = Math.min(MAX_PAIRS, outs.length - f0);
      const args = [p(xx), p(sx), xx.rows, xx.cols, n];
      for (let f = 0; f < n; f++) args.push(p(outs[f0 + f]));
      for (let f = 0; f < n; f++) args.push(p(ms[f0 + f]));
      this.be.run(job, n * xx.rows * xx.cols * GLUE_WORK, args);
    }
  }
}
