import type { KernelDType, TrainingOp } from "./backend.js";
import { alloc as jsAlloc, type Buf, type TrainDType } from "./buffers.js";
import { type ParamPlacement, referenceTrainKernels, type TrainKernels } from "./train-kernels.js";
import { type Activation, NORMALIZE_EPS, referenceOps, type TrainOps } from "./train-ops.js";
import { TRAIN_WASM_RELAXED_SIMD, TRAIN_WASM_SIMD } from "./wasm-train-binary.js";
import { wkvChunks } from "./wkv-train.js";
import { WA, WasmBuilds, type WasmMemory, type WasmSimd, type WasmWorkerSpawner } from "../wasm-runtime.js";

/*
 * The "wasm" training kernels: assembly/train.ts (WebAssembly SIMD, f32) over one shared
 * WebAssembly memory, optionally run by several threads.
 *
 * Memory (one wasm32 memory, shared so workers see the same bytes), managed as a stack:
 *   [0, heapBase)   the module's own (empty) data area
 *   control block   epoch / ticket / done counters and the argument slots of the current job
 *   parameters      values and gradients of the model (placeParams), for the whole session
 *   step tensors    every activation and gradient of a training step (Graph allocates through
 *                   `alloc`), released in one move when the step ends (trainer.ts mark/release)
 *   call scratch    packing buffers and recurrent states of one kernel call, released on return
 * So the kernels read and write training tensors in place: nothing is copied per call, nothing is
 * left for finalizers, and a step allocates no JS garbage beyond the small typed-array views. An
 * operand that lives elsewhere (a plain Float32Array) is copied into call scratch and back, so any
 * caller gets correct results; f64 storage runs the reference kernels.
 *
 * Threads: workers (started by a WasmWorkerSpawner, e.g. Node's worker_threads) instantiate the
 * same module over the same memory and sit in workerLoop. A kernel call is published as a ticket
 * of chunks (tiles of a product's rows or columns, (sequence, head) pairs of a v5/v6/v7 WKV scan,
 * (sequence, 4 channels) items of a v4 one); every thread, the caller included, claims chunks until
 * none is left. Each output is computed by the same code whoever claims it, so any thread count
 * gives bit-identical results; a parameter gradient that sums over sequences (time_decay,
 * time_first, u, a trained initial state) is written per sequence into call scratch and summed in
 * sequence order after the job, never added to by two threads.
 */

/** Training ops these kernels leave to the reference's code: a gather by token ids and the loss, few operations per element. */
export const WASM_TRAIN_REFERENCE_OPS: ReadonlySet<TrainingOp> = new Set<TrainingOp>(
  ["embeddingForward", "embeddingBackward", "crossEntropyForward", "crossEntropyBackward"]);

/** The training half of the wasm backend's table (WasmBackendOptions.training). */
export const wasmTraining = {
  create: (o: WasmTrainKernelOptions): TrainKernels => new WasmTrainKernels(o),
  /** f32 storage, every op but WASM_TRAIN_REFERENCE_OPS; f64 storage runs the reference's code. */
  own: (op: TrainingOp, dtype: KernelDType): boolean => dtype === "f32" && !WASM_TRAIN_REFERENCE_OPS.has(op),
};

const BUILDS = new WasmBuilds({ "simd": TRAIN_WASM_SIMD, "relaxed-simd": TRAIN_WASM_RELAXED_SIMD });

export interface WasmTrainKernelOptions {
  /** Threads computing each kernel, the calling thread included (default 1). Needs `spawn` when > 1. */
  readonly threads?: number;
  readonly spawn?: WasmWorkerSpawner;
  /** Which build: default the relaxed one (fused multiply-add) where the runtime validates it, else plain SIMD. */
  readonly simd?: WasmSimd;
  /** Cap on the WebAssembly memory (default and most: 4 GiB). */
  readonly maxMemoryBytes?: number;
}

/** Job ids of assembly/train.ts. */
const JOB = { gemm: 1, wkv7Forward: 2, wkv7Backward: 3, wkv4Forward: 4, wkv4Backward: 5, wkv5Forward: 6, wkv5Backward: 7 } as const;

const PAGE = 65536;
const MAX_PAGES = 65536;
const ALIGN = 64;
const F32 = 4;
const CTRL_BYTES = 256;
const CTRL_ARGS = 32;
/** Tiles of assembly/train.ts's gemm: MR rows x NR columns, KC steps of K per packed block. */
const MR = 4, NR = 8, KC = 256;
/** WKV_CHUNK of assembly/train.ts and wkv.ts. */
const WKV_CHUNK = 16;
/**
 * Chunks per thread of a parallel job: more than one, so a thread descheduled by another process
 * leaves only part of its share for the others to wait on (the machine is shared).
 */
const CHUNKS_PER_THREAD = 2;
/** Below this many multiply-adds a kernel runs on the calling thread alone: waking the others costs more. */
const PARALLEL_MIN_WORK = 1 << 16;
/**
 * Spin iterations (an atomic load each, ~1 ns) before sleeping in atomic.wait: long enough to
 * bridge the element-wise JS work between two kernels of a step, short enough not to burn a core
 * when training stops.
 */
const SPIN_ITERATIONS = 1 << 14;

/** Rough multiply-add equivalents per element and step of the v4 scan (four exponentials, a division): sizes its parallel split. */
const V4_WORK_PER_ELEMENT = 64;

/** Activation ids of assembly/train.ts. */
const ACT: Record<Activation, number> = { sigmoid: 0, tanh: 1, relu2: 2, v7decay: 3, silu: 4 };

interface Exports {
  heapBase(): number;
  zero(p: number, bytes: number): void;
  lerpF(x: number, sx: number, m: number, R: number, C: number, y: number): void;
  lerpB(x: number, sx: number, m: number, R: number, C: number, gy: number, gx: number, gsx: number, gm: number): void;
  lerpDynF(x: number, d: number, m: number, dm: number, R: number, C: number, y: number): void;
  lerpDynB(d: number, m: number, dm: number, R: number, C: number, gy: number, gx: number, gd: number, gm: number, gdm: number): void;
  subF(a: number, b: number, n: number, y: number): void;
  subB(n: number, gy: number, ga: number, gb: number): void;
  scaleF(a: number, s: number, n: number, y: number): void;
  scaleB(s: number, n: number, gy: number, ga: number): void;
  shiftF(x: number, B: number, T: number, C: number, y: number): void;
  shiftB(B: number, T: number, C: number, gy: number, gx: number): void;
  sliceF(x: number, R: number, W: number, c0: number, n: number, y: number): void;
  sliceB(R: number, W: number, c0: number, n: number, gy: number, gx: number): void;
  addF(a: number, b: number, n: number, C: number, y: number): void;
  addB(n: number, C: number, gy: number, ga: number, gb: number): void;
  mulF(a: number, b: number, n: number, C: number, y: number): void;
  mulB(a: number, b: number, n: number, C: number, gy: number, ga: number, gb: number): void;
  actF(f: number, x: number, n: number, y: number): void;
  actB(f: number, x: number, y: number, n: number, gy: number, gx: number): void;
  normF(x: number, R: number, G: number, N: number, w: number, b: number, eps: number, y: number, mean: number, rstd: number): void;
  normB(x: number, R: number, G: number, N: number, w: number, mean: number, rstd: number, gy: number, gx: number, gw: number, gb: number): void;
  resMixF(v: number, vf: number, gate: number, n: number, y: number): void;
  resMixB(v: number, vf: number, gate: number, n: number, gy: number, gv: number, gvf: number, ggate: number): void;
  keyUpdF(k: number, a: number, ka: number, R: number, C: number, y: number): void;
  keyUpdB(k: number, a: number, ka: number, R: number, C: number, gy: number, gk: number, ga: number, gka: number): void;
  l2nF(x: number, groups: number, N: number, y: number, norm: number, eps: number): void;
  l2nB(x: number, groups: number, N: number, norm: number, gy: number, gx: number, eps: number): void;
  bonusF(r: number, k: number, v: number, rk: number, R: number, H: number, N: number, y: number): void;
  bonusB(r: number, k: number, v: number, rk: number, R: number, H: number, N: number, gy: number, gr: number, gk: number, gv: number, grk: number): void;
  sumRows(dst: number, src: number, R: number, C: number): void;
  adamw(p: number, g: number, m: number, v: number, n: number, rate: number, wd: number, b1: number, b2: number, eps: number, bc1: number, bc2: number): void;
  runJob(ctrl: number, job: number, part: number, nparts: number): void;
  dispatch(ctrl: number, job: number, nchunks: number, spin: number): void;
  stopWorkers(ctrl: number): void;
}

/** Whether this runtime can run the relaxed-SIMD build (Node 20 needs --experimental-wasm-relaxed-simd). */
export function trainRelaxedSimdAvailable(): boolean {
  return BUILDS.relaxedAvailable();
}

/** Whether the wasm training kernels can run here at all (WebAssembly SIMD and shared memory). */
export function wasmTrainAvailable(): boolean {
  return BUILDS.available();
}

/** A pending copy of call scratch back into an operand that lives outside the wasm memory. */
interface CopyBack { readonly dst: Buf; readonly ptr: number; readonly n: number }

export class WasmTrainKernels implements TrainKernels {
  readonly name: string;
  readonly build: string;
  readonly threads: number;
  readonly simd: WasmSimd;
  /** Kernel calls run by all threads / by the calling thread alone (tests, tuning). */
  readonly calls = { parallel: 0, single: 0 };
  private readonly memory: WasmMemory;
  private readonly x: Exports;
  private readonly ctrl: number;
  private readonly maxBytes: number;
  /** Every ArrayBuffer this memory has had (a new one after each grow): how `owns` recognises our tensors. */
  private readonly buffers = new WeakSet<ArrayBufferLike>();
  private f32: Float32Array = new Float32Array(0);
  private i32: Int32Array = new Int32Array(0);
  /** Top of the allocation stack and the number of open marks. */
  private top: number;
  private marks = 0;
  private closed = false;
  readonly ops: TrainOps;

  constructor(options: WasmTrainKernelOptions = {}) {
    if (!WA) throw new Error("WebAssembly is not available in this runtime");
    this.threads = Math.max(1, Math.floor(options.threads ?? 1));
    if (this.threads > 1 && !options.spawn) throw new Error("wasm training kernels with several threads need a worker spawner");
    this.simd = options.simd ?? (trainRelaxedSimdAvailable() ? "relaxed-simd" : "simd");
    this.build = `wasm ${this.simd}`;
    this.name = `${this.build}, ${this.threads} thread${this.threads > 1 ? "s" : ""}`;
    this.maxBytes = Math.min(MAX_PAGES * PAGE, options.maxMemoryBytes ?? Infinity);
    const module = new WA.Module(BUILDS.bytes(this.simd));
    this.memory = new WA.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
    this.x = new WA.Instance(module, { env: { memory: this.memory } }).exports as unknown as Exports;
    this.top = align(this.x.heapBase());
    this.views();
    this.ctrl = this.bump(CTRL_BYTES);
    this.ops = this.makeOps();
    for (let p = 1; p < this.threads; p++) options.spawn!({ module, memory: this.memory, ctrl: this.ctrl, spin: SPIN_ITERATIONS });
  }

  /** Bytes of WebAssembly memory reserved so far (it never shrinks; freed space is reused). */
  get memoryBytes(): number {
    return this.memory.buffer.byteLength;
  }

  /** Bytes currently allocated (parameters plus whatever the open marks hold). */
  get usedBytes(): number {
    return this.top;
  }

  /** Stops the worker threads; the kernels then run on the calling thread only. */
  close(): void {
    if (this.threads > 1 && !this.closed) this.x.stopWorkers(this.ctrl);
    this.closed = true;
  }

  // ---- memory --------------------------------------------------------------------------------

  private views(): void {
    const buf = this.memory.buffer;
    if (this.f32.buffer !== buf) {
      this.buffers.add(buf);
      this.f32 = new Float32Array(buf);
      this.i32 = new Int32Array(buf);
    }
  }

  /** `bytes` (rounded up to 64) from the top of the stack, growing the memory as needed. */
  private bump(bytes: number): number {
    const off = this.top, end = off + align(bytes);
    if (end > this.maxBytes) {
      throw new Error(`training needs ${(end / 2 ** 30).toFixed(2)} GiB of WebAssembly memory, over the ` +
        `${(this.maxBytes / 2 ** 30).toFixed(2)} GiB limit (4 GiB at most for wasm32): use a smaller --batch, --ctx or model`);
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE));
    this.top = end;
    this.views();
    return off;
  }

  /** Whether `b` is a view of this memory (and so can be handed to the kernels by its offset). */
  owns(b: Buf): b is Float32Array {
    return b instanceof Float32Array && this.buffers.has(b.buffer);
  }

  alloc(dtype: TrainDType, n: number, uninitialized = false): Buf {
    if (dtype !== "f32") return jsAlloc(dtype, n);
    const ptr = this.bump(n * F32);
    if (!uninitialized) this.x.zero(ptr, n * F32); // the stack reuses the memory of released steps
    return new Float32Array(this.memory.buffer, ptr, n);
  }

  mark(): number {
    this.marks++;
    return this.top;
  }

  release(mark: number): void {
    if (this.marks <= 0 || mark > this.top) throw new Error("wasm training kernels: release without a matching mark");
    this.marks--;
    this.top = mark;
  }

  placeParams(store: ParamPlacement): void {
    if (store.dtype !== "f32") return; // f64 stores run the reference kernels
    if (this.marks > 0) throw new Error("wasm training kernels: parameters must be placed outside a step");
    store.relocate((n) => this.alloc("f32", n));
  }

  /** The offset of an input in this memory, copying it into call scratch when it lives elsewhere. */
  private input(b: Buf, n: number): number {
    if (this.owns(b)) return b.byteOffset;
    const p = this.bump(n * F32);
    this.f32.set(b.subarray(0, n), p >>> 2);
    return p;
  }

  /** The offset of an output; one that lives elsewhere gets call scratch (its values copied in when read) and a copy back. */
  private output(b: Buf | null, n: number, read: boolean, back: CopyBack[]): number {
    if (!b) return 0;
    if (this.owns(b)) return b.byteOffset;
    const p = this.bump(n * F32);
    if (read) this.f32.set(b.subarray(0, n), p >>> 2);
    back.push({ dst: b, ptr: p, n });
    return p;
  }

  private copyBack(back: readonly CopyBack[]): void {
    for (const c of back) c.dst.set(this.f32.subarray(c.ptr >>> 2, (c.ptr >>> 2) + c.n));
  }

  /** Runs a job whose arguments are stored, over `chunks` chunks (1: on this thread alone). */
  private run(job: number, args: readonly number[], chunks: number): void {
    const a = (this.ctrl + CTRL_ARGS) >>> 2;
    for (let i = 0; i < args.length; i++) this.i32[a + i] = args[i];
    if (chunks > 1 && !this.closed) {
      this.calls.parallel++;
      this.x.dispatch(this.ctrl, job, chunks, SPIN_ITERATIONS);
    } else {
      this.calls.single++;
      this.x.runJob(this.ctrl, job, 0, 1);
    }
  }

  private chunksFor(work: number, items: number): number {
    if (this.threads === 1 || this.closed || work < PARALLEL_MIN_WORK) return 1;
    return Math.max(1, Math.min(items, this.threads * CHUNKS_PER_THREAD));
  }

  // ---- element-wise ops ----------------------------------------------------------------------

  /** Offsets of tensors that all live in this memory (null ones as 0), or null: then the reference runs. */
  private offsets(...bufs: Array<Buf | null>): number[] | null {
    const out: number[] = [];
    for (const b of bufs) {
      if (b === null) { out.push(0); continue; }
      if (!this.owns(b)) return null;
      out.push(b.byteOffset);
    }
    return out;
  }

  /**
   * Runs `f` with f32 call scratch for the statistics `arrays` (n values each, one after another,
   * at the offset `f` gets): the kernels keep them in f32, the graph in f64. With `load` they are
   * copied in first (a backward reads them), else copied out after (a forward writes them).
   */
  private statistics(n: number, arrays: readonly Float64Array[], load: boolean, f: (p: number) => void): void {
    const mark = this.top, p = this.bump(arrays.length * n * F32), at = p >>> 2;
    if (load) arrays.forEach((a, i) => this.f32.set(a.subarray(0, n), at + i * n));
    f(p);
    if (!load) arrays.forEach((a, i) => a.set(this.f32.subarray(at + i * n, at + (i + 1) * n)));
    this.top = mark;
  }

  /**
   * The wasm element-wise ops (f32x4, on the calling thread): each runs the reference when a
   * tensor lives outside this memory or a length is not a multiple of 4.
   */
  private makeOps(): TrainOps {
    const x = this.x, ref = referenceOps;
    const by4 = (...n: number[]) => n.every((v) => v % 4 === 0);
    /** The row-vector width of a broadcast operand: 0 when b is as long as a. */
    const bcast = (a: Buf, b: Buf, C: number) => (b.length === a.length ? 0 : C);
    return {
      // WASM_TRAIN_REFERENCE_OPS: left to the reference.
      embeddingForward: ref.embeddingForward,
      embeddingBackward: ref.embeddingBackward,
      crossEntropyForward: ref.crossEntropyForward,
      crossEntropyBackward: ref.crossEntropyBackward,
      tokenShiftForward: (xx, B, T, C, y) => {
        const p = this.offsets(xx, y);
        if (p) x.shiftF(p[0], B, T, C, p[1]); else ref.tokenShiftForward(xx, B, T, C, y);
      },
      tokenShiftBackward: (xx, B, T, C, gy, gx) => {
        const p = by4(C) ? this.offsets(gy, gx) : null;
        if (p) x.shiftB(B, T, C, p[0], p[1]); else ref.tokenShiftBackward(xx, B, T, C, gy, gx);
      },
      lerpDynForward: (xx, d, m, dm, C, y) => {
        const p = by4(C) ? this.offsets(xx, d, m, dm, y) : null;
        if (p) x.lerpDynF(p[0], p[1], p[2], p[3], xx.length / C, C, p[4]); else ref.lerpDynForward(xx, d, m, dm, C, y);
      },
      lerpDynBackward: (xx, d, m, dm, C, gy, gx, gd, gm, gdm) => {
        const p = by4(C) ? this.offsets(d, m, dm, gy, gx, gd, gm, gdm) : null;
        if (p) x.lerpDynB(p[0], p[1], p[2], d.length / C, C, p[3], p[4], p[5], p[6], p[7]); else ref.lerpDynBackward(xx, d, m, dm, C, gy, gx, gd, gm, gdm);
      },
      subForward: (a, b, y) => {
        const p = by4(a.length) ? this.offsets(a, b, y) : null;
        if (p) x.subF(p[0], p[1], a.length, p[2]); else ref.subForward(a, b, y);
      },
      subBackward: (a, b, gy, ga, gb) => {
        const p = by4(gy.length) ? this.offsets(gy, ga, gb) : null;
        if (p) x.subB(gy.length, p[0], p[1], p[2]); else ref.subBackward(a, b, gy, ga, gb);
      },
      scaleForward: (a, s, y) => {
        const p = by4(a.length) ? this.offsets(a, y) : null;
        if (p) x.scaleF(p[0], s, a.length, p[1]); else ref.scaleForward(a, s, y);
      },
      scaleBackward: (a, s, gy, ga) => {
        const p = by4(gy.length) ? this.offsets(gy, ga) : null;
        if (p) x.scaleB(s, gy.length, p[0], p[1]); else ref.scaleBackward(a, s, gy, ga);
      },
      sliceColsForward: (xx, R, W, c0, n, y) => {
        const p = this.offsets(xx, y);
        if (p) x.sliceF(p[0], R, W, c0, n, p[1]); else ref.sliceColsForward(xx, R, W, c0, n, y);
      },
      sliceColsBackward: (xx, R, W, c0, n, gy, gx) => {
        const p = by4(n) ? this.offsets(gy, gx) : null;
        if (p) x.sliceB(R, W, c0, n, p[0], p[1]); else ref.sliceColsBackward(xx, R, W, c0, n, gy, gx);
      },
      lerpForward: (xx, sx, m, C, y) => {
        const p = by4(C) ? this.offsets(xx, sx, m, y) : null;
        if (p) x.lerpF(p[0], p[1], p[2], xx.length / C, C, p[3]); else ref.lerpForward(xx, sx, m, C, y);
      },
      lerpBackward: (xx, sx, m, C, gy, gx, gsx, gm) => {
        const p = by4(C) ? this.offsets(xx, sx, m, gy, gx, gsx, gm) : null;
        if (p) x.lerpB(p[0], p[1], p[2], xx.length / C, C, p[3], p[4], p[5], p[6]); else ref.lerpBackward(xx, sx, m, C, gy, gx, gsx, gm);
      },
      addForward: (a, b, C, y) => {
        const p = by4(a.length, C) ? this.offsets(a, b, y) : null;
        if (p) x.addF(p[0], p[1], a.length, bcast(a, b, C), p[2]); else ref.addForward(a, b, C, y);
      },
      addBackward: (a, b, C, gy, ga, gb) => {
        const p = by4(a.length, C) ? this.offsets(gy, ga, gb) : null;
        if (p) x.addB(a.length, bcast(a, b, C), p[0], p[1], p[2]); else ref.addBackward(a, b, C, gy, ga, gb);
      },
      mulForward: (a, b, C, y) => {
        const p = by4(a.length, C) ? this.offsets(a, b, y) : null;
        if (p) x.mulF(p[0], p[1], a.length, bcast(a, b, C), p[2]); else ref.mulForward(a, b, C, y);
      },
      mulBackward: (a, b, C, gy, ga, gb) => {
        const p = by4(a.length, C) ? this.offsets(a, b, gy, ga, gb) : null;
        if (p) x.mulB(p[0], p[1], a.length, bcast(a, b, C), p[2], p[3], p[4]); else ref.mulBackward(a, b, C, gy, ga, gb);
      },
      activationForward: (f, xx, y) => {
        const id = ACT[f], p = by4(xx.length) ? this.offsets(xx, y) : null;
        if (p) x.actF(id, p[0], xx.length, p[1]); else ref.activationForward(f, xx, y);
      },
      activationBackward: (f, xx, y, gy, gx) => {
        const id = ACT[f], p = by4(xx.length) ? this.offsets(xx, y, gy, gx) : null;
        if (p) x.actB(id, p[0], p[1], xx.length, p[2], p[3]); else ref.activationBackward(f, xx, y, gy, gx);
      },
      groupNormForward: (xx, R, H, N, w, b, eps, y, mean, rstd) => {
        const p = by4(N) ? this.offsets(xx, w, b, y) : null;
        if (!p) { ref.groupNormForward(xx, R, H, N, w, b, eps, y, mean, rstd); return; }
        const G = R * H;
        this.statistics(G, [mean, rstd], false, (sp) => x.normF(p[0], R, H, N, p[1], p[2], eps, p[3], sp, sp + G * F32));
      },
      groupNormBackward: (xx, R, H, N, w, b, eps, mean, rstd, gy, gx, gw, gb) => {
        const p = by4(N) ? this.offsets(xx, w, gy, gx, gw, gb) : null;
        if (!p) { ref.groupNormBackward(xx, R, H, N, w, b, eps, mean, rstd, gy, gx, gw, gb); return; }
        const G = R * H;
        this.statistics(G, [mean, rstd], true, (sp) => x.normB(p[0], R, H, N, p[1], sp, sp + G * F32, p[2], p[3], p[4], p[5]));
      },
      residualMixForward: (v, vf, gate, y) => {
        const p = by4(v.length) ? this.offsets(v, vf, gate, y) : null;
        if (p) x.resMixF(p[0], p[1], p[2], v.length, p[3]); else ref.residualMixForward(v, vf, gate, y);
      },
      residualMixBackward: (v, vf, gate, gy, gv, gvf, ggate) => {
        const p = by4(v.length) ? this.offsets(v, vf, gate, gy, gv, gvf, ggate) : null;
        if (p) x.resMixB(p[0], p[1], p[2], v.length, p[3], p[4], p[5], p[6]); else ref.residualMixBackward(v, vf, gate, gy, gv, gvf, ggate);
      },
      keyUpdateForward: (k, a, ka, C, y) => {
        const p = by4(C) ? this.offsets(k, a, ka, y) : null;
        if (p) x.keyUpdF(p[0], p[1], p[2], k.length / C, C, p[3]); else ref.keyUpdateForward(k, a, ka, C, y);
      },
      keyUpdateBackward: (k, a, ka, C, gy, gk, ga, gka) => {
        const p = by4(C) ? this.offsets(k, a, ka, gy, gk, ga, gka) : null;
        if (p) x.keyUpdB(p[0], p[1], p[2], k.length / C, C, p[3], p[4], p[5], p[6]); else ref.keyUpdateBackward(k, a, ka, C, gy, gk, ga, gka);
      },
      l2NormalizeForward: (xx, groups, N, y, norm) => {
        const p = by4(N) ? this.offsets(xx, y) : null;
        if (!p) { ref.l2NormalizeForward(xx, groups, N, y, norm); return; }
        this.statistics(groups, [norm], false, (sp) => x.l2nF(p[0], groups, N, p[1], sp, NORMALIZE_EPS));
      },
      l2NormalizeBackward: (xx, groups, N, norm, gy, gx) => {
        const p = by4(N) ? this.offsets(xx, gy, gx) : null;
        if (!p) { ref.l2NormalizeBackward(xx, groups, N, norm, gy, gx); return; }
        this.statistics(groups, [norm], true, (sp) => x.l2nB(p[0], groups, N, sp, p[1], p[2], NORMALIZE_EPS));
      },
      bonusForward: (r, k, v, rk, R, H, N, y) => {
        const p = by4(N) ? this.offsets(r, k, v, rk, y) : null;
        if (p) x.bonusF(p[0], p[1], p[2], p[3], R, H, N, p[4]); else ref.bonusForward(r, k, v, rk, R, H, N, y);
      },
      bonusBackward: (r, k, v, rk, R, H, N, gy, gr, gk, gv, grk) => {
        const p = by4(N) ? this.offsets(r, k, v, rk, gy, gr, gk, gv, grk) : null;
        if (p) x.bonusB(p[0], p[1], p[2], p[3], R, H, N, p[4], p[5], p[6], p[7], p[8]); else ref.bonusBackward(r, k, v, rk, R, H, N, gy, gr, gk, gv, grk);
      },
    };
  }

  adamwUpdate(data: Buf, grad: Buf, m: Buf, v: Buf, rate: number, wd: number, beta1: number, beta2: number, eps: number, bc1: number, bc2: number): boolean {
    const p = this.offsets(data, grad, m, v);
    if (!p) return false;
    this.x.adamw(p[0], p[1], p[2], p[3], data.length, rate, wd, beta1, beta2, eps, bc1, bc2);
    return true;
  }

  // ---- kernels -------------------------------------------------------------------------------

  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Buf, B: Buf, C: Buf, accumulate: boolean): void {
    if (!(A instanceof Float32Array && B instanceof Float32Array && C instanceof Float32Array)) {
      referenceTrainKernels.gemm(transA, transB, M, N, K, A, B, C, accumulate);
      return;
    }
    if (M === 0 || N === 0) return;
    if (K === 0) { if (!accumulate) C.fill(0, 0, M * N); return; }
    const mark = this.top;
    try {
      const back: CopyBack[] = [];
      const pa = this.input(A, M * K), pb = this.input(B, K * N), pc = this.output(C, M * N, accumulate, back);
      // Split the dimension with more tiles; each part packs the other operand whole.
      const mTiles = Math.ceil(M / MR), nTiles = Math.ceil(N / NR);
      const axis = mTiles >= nTiles ? 0 : 1;
      const chunks = this.chunksFor(M * N * K, axis === 0 ? mTiles : nTiles);
      const stride = align(F32 * (KC * MR + MR * NR + Math.min(K, KC) * nTiles * NR));
      const ws = this.bump(stride * chunks);
      this.run(JOB.gemm, [transA ? 1 : 0, transB ? 1 : 0, M, N, K, pa, pb, pc, accumulate ? 1 : 0, axis, ws, stride], chunks);
      this.copyBack(back);
    } finally {
      this.top = mark;
    }
  }

  /** The fast WKV path takes f32 tensors and head sizes that are multiples of the SIMD width. */
  private wkvFast(N: number, bufs: ReadonlyArray<Buf | null>): boolean {
    return N % 4 === 0 && bufs.every((b) => b === null || b instanceof Float32Array);
  }

  /**
   * Zeroed (B, C) call scratch for per-sequence partials of a parameter gradient (see sumRows in
   * assembly/train.ts), or 0 when that gradient is not asked for.
   */
  private partials(g: Buf | null, B: number, C: number): number {
    if (!g) return 0;
    const p = this.bump(B * C * F32);
    this.x.zero(p, B * C * F32);
    return p;
  }

  wkv4Forward(B: number, T: number, C: number, timeDecay: Buf, timeFirst: Buf, k: Buf, v: Buf, y: Buf): void {
    if (!this.wkvFast(C, [timeDecay, timeFirst, k, v, y])) { referenceTrainKernels.wkv4Forward(B, T, C, timeDecay, timeFirst, k, v, y); return; }
    const n = B * T * C, mark = this.top;
    try {
      const back: CopyBack[] = [];
      const ins = [this.input(timeDecay, C), this.input(timeFirst, C), this.input(k, n), this.input(v, n)];
      const py = this.output(y, n, false, back);
      this.run(JOB.wkv4Forward, [B, T, C, ...ins, py], this.chunksFor(n * V4_WORK_PER_ELEMENT, B * C / 4));
      this.copyBack(back);
    } finally {
      this.top = mark;
    }
  }

  wkv4Backward(B: number, T: number, C: number, timeDecay: Buf, timeFirst: Buf, k: Buf, v: Buf, y: Buf, gy: Buf,
    gTimeDecay: Buf | null, gTimeFirst: Buf | null, gk: Buf | null, gv: Buf | null): void {
    if (!this.wkvFast(C, [timeDecay, timeFirst, k, v, y, gy, gTimeDecay, gTimeFirst, gk, gv])) {
      referenceTrainKernels.wkv4Backward(B, T, C, timeDecay, timeFirst, k, v, y, gy, gTimeDecay, gTimeFirst, gk, gv);
      return;
    }
    const n = B * T * C, mark = this.top;
    try {
      const back: CopyBack[] = [];
      const ins = [this.input(timeDecay, C), this.input(timeFirst, C), this.input(k, n), this.input(v, n), this.input(y, n), this.input(gy, n)];
      const [ptd, ptf] = [this.output(gTimeDecay, C, true, back), this.output(gTimeFirst, C, true, back)];
      const [pk, pv] = [this.output(gk, n, true, back), this.output(gv, n, true, back)];
      const [partTd, partTf] = [this.partials(gTimeDecay, B, C), this.partials(gTimeFirst, B, C)];
      const chunks = this.chunksFor(n * 2 * V4_WORK_PER_ELEMENT, B * C / 4);
      const stride = align(F32 * 2 * 4 * T); // q and r, 4 channels per step
      const ws = this.bump(stride * chunks);
      this.run(JOB.wkv4Backward, [B, T, C, ...ins, partTd, partTf, pk, pv, ws, stride], chunks);
      if (partTd) this.x.sumRows(ptd, partTd, B, C);
      if (partTf) this.x.sumRows(ptf, partTf, B, C);
      this.copyBack(back);
    } finally {
      this.top = mark;
    }
  }

  wkv5Forward(B: number, T: number, H: number, N: number, r: Buf, k: Buf, v: Buf, wraw: Buf, u: Buf, y: Buf, save: boolean): Buf | null {
    if (!this.wkvFast(N, [r, k, v, wraw, u, y])) return referenceTrainKernels.wkv5Forward(B, T, H, N, r, k, v, wraw, u, y, save);
    const C = H * N, NN = N * N, n = B * T * C, perToken = wraw.length !== C;
    const ckpt = save ? this.alloc("f32", B * H * wkvChunks(T) * NN, true) : null; // every chunk written; lives with the step, for the backward
    const mark = this.top;
    try {
      const back: CopyBack[] = [];
      const ins = [this.input(r, n), this.input(k, n), this.input(v, n), this.input(wraw, perToken ? n : C), this.input(u, C)];
      const py = this.output(y, n, false, back);
      const chunks = this.chunksFor(B * T * H * NN * 3, B * H);
      const stride = align(F32 * (NN + N));
      const ws = this.bump(stride * chunks);
      this.run(JOB.wkv5Forward, [B, T, H, N, ...ins, perToken ? 1 : 0, py, ckpt ? ckpt.byteOffset : 0, ws, stride], chunks);
      this.copyBack(back);
    } finally {
      this.top = mark;
    }
    return ckpt;
  }

  wkv5Backward(B: number, T: number, H: number, N: number, r: Buf, k: Buf, v: Buf, wraw: Buf, u: Buf, ckpt: Buf, gy: Buf,
    gr: Buf | null, gk: Buf | null, gv: Buf | null, gw: Buf | null, gu: Buf | null): void {
    if (!this.owns(ckpt) || !this.wkvFast(N, [gr, gk, gv, gw, gu])) {
      referenceTrainKernels.wkv5Backward(B, T, H, N, r, k, v, wraw, u, ckpt, gy, gr, gk, gv, gw, gu);
      return;
    }
    const C = H * N, NN = N * N, n = B * T * C, perToken = wraw.length !== C, nw = perToken ? n : C;
    const mark = this.top;
    try {
      const back: CopyBack[] = [];
      const ins = [this.input(r, n), this.input(k, n), this.input(v, n), this.input(wraw, nw), this.input(u, C)];
      const pg = this.input(gy, n);
      const [pr, pk, pv, pw, pu] = [this.output(gr, n, true, back), this.output(gk, n, true, back), this.output(gv, n, true, back),
        this.output(gw, nw, true, back), this.output(gu, C, true, back)];
      // u's gradient, and a constant decay's, sum over sequences: per-sequence partials, added in order after the job.
      const partU = this.partials(gu, B, C), partW = perToken ? 0 : this.partials(gw, B, C);
      const chunks = this.chunksFor(B * T * H * NN * 8, B * H);
      const stride = align(F32 * ((WKV_CHUNK + 2) * NN + 3 * N));
      const ws = this.bump(stride * chunks);
      this.run(JOB.wkv5Backward, [B, T, H, N, ...ins, perToken ? 1 : 0, ckpt.byteOffset, pg, pr, pk, pv, perToken ? pw : partW, partU, ws, stride], chunks);
      if (partU) this.x.sumRows(pu, partU, B, C);
      if (partW) this.x.sumRows(pw, partW, B, C);
      this.copyBack(back);
    } finally {
      this.top = mark;
    }
  }

  wkv7Forward(B: number, T: number, H: number, N: number, r: Buf, wraw: Buf, k: Buf, v: Buf, a: Buf, b: Buf, y: Buf, save: boolean,
    s0: Buf | null = null): Buf | null {
    if (!this.wkvFast(N, [r, wraw, k, v, a, b, y, s0])) return referenceTrainKernels.wkv7Forward(B, T, H, N, r, wraw, k, v, a, b, y, save, s0);
    const NN = N * N, n = B * T * H * N;
    const ckpt = save ? this.alloc("f32", B * H * wkvChunks(T) * NN, true) : null; // every chunk written; lives with the step, for the backward
    const mark = this.top;
    try {
      const back: CopyBack[] = [];
      const ins = [r, wraw, k, v, a, b].map((t) => this.input(t, n));
      const py = this.output(y, n, false, back);
      const ps0 = s0 ? this.input(s0, H * NN) : 0;
      const chunks = this.chunksFor(B * T * H * NN * 4, B * H);
      const stride = align(F32 * (NN + N));
      const ws = this.bump(stride * chunks);
      this.run(JOB.wkv7Forward, [B, T, H, N, ...ins, py, ckpt ? ckpt.byteOffset : 0, ps0, ws, stride], chunks);
      this.copyBack(back);
    } finally {
      this.top = mark;
    }
    return ckpt;
  }

  wkv7Backward(B: number, T: number, H: number, N: number, r: Buf, wraw: Buf, k: Buf, v: Buf, a: Buf, b: Buf, ckpt: Buf, gy: Buf,
    gr: Buf | null, gw: Buf | null, gk: Buf | null, gv: Buf | null, ga: Buf | null, gb: Buf | null, gs0: Buf | null = null): void {
    if (!this.owns(ckpt) || !this.wkvFast(N, [gr, gw, gk, gv, ga, gb, gs0])) {
      referenceTrainKernels.wkv7Backward(B, T, H, N, r, wraw, k, v, a, b, ckpt, gy, gr, gw, gk, gv, ga, gb, gs0);
      return;
    }
    const NN = N * N, n = B * T * H * N;
    const mark = this.top;
    try {
      const back: CopyBack[] = [];
      const ins = [r, wraw, k, v, a, b].map((t) => this.input(t, n));
      const pg = this.input(gy, n);
      const outs = [gr, gw, gk, gv, ga, gb].map((t) => this.output(t, n, true, back));
      // The initial state's gradient sums over sequences: per-sequence partials, added in order after the job.
      const pgs0 = this.output(gs0, H * NN, true, back), partS0 = this.partials(gs0, B, H * NN);
      const chunks = this.chunksFor(B * T * H * NN * 12, B * H);
      const stride = align(F32 * ((WKV_CHUNK + 1) * NN + NN + WKV_CHUNK * N + 10 * N));
      const ws = this.bump(stride * chunks);
      this.run(JOB.wkv7Backward, [B, T, H, N, ...ins, ckpt.byteOffset, pg, ...outs, partS0, ws, stride], chunks);
      if (partS0) this.x.sumRows(pgs0, partS0, B, H * NN);
      this.copyBack(back);
    } finally {
      this.top = mark;
    }
  }
}

function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}
