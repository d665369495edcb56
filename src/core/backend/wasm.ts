import { type Activation, type Backend, isTrainingOp, type KernelDType, type KernelOp, type Matrix, type TrainingOp, type WeightType, type Wkv4State } from "./backend.js";
import type { TrainKernels } from "./train-kernels.js";
import { WasmTensor, WasmTensorKernels } from "./wasm-tensors.js";
import { referenceBackend } from "./reference.js";
import { WASM_RELAXED_SIMD, WASM_SIMD } from "./wasm-binary.js";
import { decodeMatrix, fitsF16s, requireHostData, toF16s, toQ5s } from "./weight-rows.js";
import {
  kernelImports, type RunInMemory, WA, WasmBuilds, type WasmMemory, type WasmModule, type WasmSimd, type WasmWorkerSpawner,
} from "../wasm-runtime.js";

/*
 * The "wasm" backend: the kernels of assembly/kernels.ts (WebAssembly SIMD) over shared
 * WebAssembly memories, optionally run by several threads.
 *
 * Memory layout of memory 0 (wasm32, at most 4 GiB, shared so workers see the same bytes):
 *   [0, heapBase)            the module's own (empty) data area
 *   control block (256 B)    epoch / ticket / done counters and the argument slots of the current job
 *   f16 table (256 KiB)      f32 value of every f16 bit pattern, for the ggml block scales
 *   weights                  one block per adopted matrix in its compact type (f32, f16, bf16,
 *                            ggml blocks, i8 + row scales), 64-byte aligned; freed when the
 *                            Matrix object is garbage-collected
 *   arenas, constants        each model's activation slots and parameter vectors (wasm-tensors.ts)
 *   scratch                  growing blocks for quantized activations and the array methods' copies
 * The JS side owns the allocator (first fit over a free list; memory grows in pages as needed).
 *
 * Models larger than one memory: weights past weightBytesPerMemory (default 3.5 GiB) go to
 * memory 1, 2, ..., each with its own instance of the module, control block, tables and
 * scratch. A matmul runs in the memory that holds its weights: x is copied in and y out (a
 * token's are KiB, the weights MiB); everything else (activations, states, constants) stays in
 * memory 0. The threads wait on memory 0's control block only: a job of memory k is published
 * there as JOB.inMemory (k, job) and each thread runs its chunks through k's instance
 * (kernels.ts runInMemory), so one protocol serves all memories. Workers instantiate the module
 * over every memory when they start; a new memory restarts them (during a load, once per memory).
 *
 * The models' forward runs on the tensor kernels (wasm-tensors.ts): activations live in per-model
 * arenas in this memory, so only token embeddings go in and logits come out. The Float32Array
 * methods (training, tools) copy their inputs in and outputs out through scratch, chunked over
 * rows so scratch stays bounded (SCRATCH_CHUNK_BYTES) however long the sequence. Recurrent
 * states get a home in this memory through residentArray (views of it, up to
 * RESIDENT_STATE_BYTES, freed by finalizers as states are collected); the scans update them in
 * place, and past the cap a forward copies them into its arena and back.
 *
 * Kernels (assembly/kernels.ts): matmul over f32/f16/bf16 weights in f32 (T = 1: four rows at a
 * time converting on the fly, f16 kept as "f16s" in a layout converted by a multiply-add and a mask; T > 1:
 * 4x2 register tiles, f16/bf16 rows converted into a panel and reused for a tile of activation rows
 * that stays in L2); over ggml blocks and i8 with activations quantized per block of 32 to int8 and
 * integer dot products (as rwkv.cpp; T = 1: pairs of rows a quarter of the range apart, four long
 * memory streams, q8_0/i8 against even/odd-split activations, q4/q5 on
 * i16x8.relaxed_dot_i8x16_i7x16_s where the engine computes it as specified);
 * WKV v4, v5/v6 and v7 scans (assembly/wkv.ts, the same code as the training kernels' forward);
 * layer/group norm (f64 statistics, equal to the reference); the activations in f64 (equal to the
 * reference after rounding to f32).
 *
 * Threads: workers (started by a WasmWorkerSpawner, e.g. Node's worker_threads) instantiate the
 * same module over the same memory and sit in workerLoop. Each parallel kernel is published as a
 * ticket of threads x CHUNKS_PER_THREAD chunks of its outputs; every thread, the caller included,
 * claims chunks by CAS until none is left, then the caller waits for the last to finish. Idle
 * workers spin SPIN_ITERATIONS, then sleep in atomic.wait. An output is computed by the same code
 * whoever claims it, so any thread count gives bit-identical results, and a descheduled worker only
 * means the others run its chunks.
 */

export type { WasmExtraMemory, WasmMemory, WasmModule, WasmSimd, WasmWorkerInit, WasmWorkerSpawner } from "../wasm-runtime.js";

const BUILDS = new WasmBuilds({ "simd": WASM_SIMD, "relaxed-simd": WASM_RELAXED_SIMD });

export interface WasmBackendOptions {
  /** Threads computing each kernel, the calling thread included (default 1). Needs `spawn` when > 1. */
  readonly threads?: number;
  readonly spawn?: WasmWorkerSpawner;
  /** Which build: default the relaxed one where the runtime validates it, else plain SIMD. */
  readonly simd?: WasmSimd;
  /**
   * Cap on the WebAssembly memories together (default: none but the machine's); adopt() and the
   * arenas fail clearly (WasmMemoryLimitError) beyond it.
   */
  readonly maxMemoryBytes?: number;
  /**
   * Most bytes of weights one memory takes before the next memory is used (default
   * WEIGHTS_PER_MEMORY); a memory holds 4 GiB at most (wasm32). Tests split small models with it.
   */
  readonly weightBytesPerMemory?: number;
  /** Cap on the state arrays kept in wasm memory (default RESIDENT_STATE_BYTES); past it they are copied per call. */
  readonly residentStateBytes?: number;
  /**
   * The training half of this backend's table (wasm-train.ts `wasmTraining`), given by the host
   * that trains (src/node/threads/pool.ts) so that an inference-only bundle (the browser's) does
   * not carry the training kernels: `create` makes a kernel set with this backend's build, thread
   * count and spawner; `own` says which training ops it runs itself.
   */
  readonly training?: {
    create(o: { threads: number; simd: WasmSimd; spawn?: WasmWorkerSpawner }): TrainKernels;
    own(op: TrainingOp, dtype: KernelDType): boolean;
  };
}

/** Weight type ids of assembly/kernels.ts. */
const WASM_TYPE_IDS: Readonly<Record<WeightType, number>> = {
  // q5_0 and q5_1 are adopted as q5_0s and q5_1s (the layout kernels 4 and 5 read): their ids are never passed.
  f32: 0, f16: 1, bf16: 2, q8_0: 3, q5_0: 4, q5_1: 5, q4_0: 6, q4_1: 7, i8: 8, f16s: 9, q5_0s: 4, q5_1s: 5,
};
const FLOAT_TYPES: ReadonlySet<WeightType> = new Set<WeightType>(["f32", "f16", "bf16", "f16s"]);
/**
 * Types the relaxed build multiplies with i16x8.relaxed_dot_i8x16_i7x16_s (their weights decode
 * to 0..31, the 7-bit operand; see kernels.ts); q8_0 and i8 weights are full signed bytes.
 */
const I7_TYPES: ReadonlySet<WeightType> = new Set<WeightType>(["q4_0", "q4_1", "q5_0s", "q5_1s"]);
/** Weight types whose T = 1 integer kernel takes the split i16 activations (kernels.ts splitDot). */
const SPLIT_TYPES: ReadonlySet<WeightType> = new Set<WeightType>(["q8_0", "i8"]);

/**
 * Most bytes of state arrays kept in wasm memory (residentArray); past it states stay in JS memory
 * and each WKV call copies them in and out. States are freed by finalizers, which never run inside
 * a synchronous loop, so without a cap such a loop creating states could fill the 4 GiB.
 */
const RESIDENT_STATE_BYTES = 256 << 20;

/** Job ids of assembly/kernels.ts. */
export const JOB = { matmulFloat: 1, matmulInt: 2, quantize: 3, norm: 4, wkv4: 5, wkv5: 6, wkv7: 7, activate: 8, inMemory: 9 } as const;

/** Activation ids of assembly/kernels.ts. */
export const ACTIVATION_IDS: Readonly<Record<Activation, number>> = { sigmoid: 0, tanh: 1, silu: 2, relu2: 3, exp: 4 };
/** Work units of one activated element (f64 exp: ~30 operations), against PARALLEL_MIN_WORK. */
export const ACTIVATE_WORK = 32;
/** Byte offset in the argument slots of activate's f64 scale, slots 4-5 (8-aligned: the control block is). */
const ARG_F64_OFFSET = 16;

const PAGE = 65536;
/** wasm32: 65536 pages = 4 GiB. */
const MAX_PAGES = 65536;
/**
 * Default bytes of weights per memory: wasm32's 4 GiB less 512 MiB that memory 0 keeps for what
 * is not weights (arenas of long prompts, resident states up to RESIDENT_STATE_BYTES, scratch up
 * to 2 x SCRATCH_CHUNK_BYTES); further memories keep the same margin for their scratch.
 */
const WEIGHTS_PER_MEMORY = MAX_PAGES * PAGE - (512 << 20);
const ALIGN = 64;
/** Control block: epoch, done, ticket, job, sleepers, exit, then 24 argument slots (see kernels.ts). */
const CTRL_BYTES = 256;
const CTRL_ARGS = 32;
/**
 * Chunks per thread of a parallel job: more than one, so a thread that is descheduled mid-job
 * leaves only part of its share for the others to wait on; few, because each chunk restarts the
 * hardware prefetch streams (measured int8 decode, 2 threads: 2 per thread 120 tok/s, 4: 107).
 */
export const CHUNKS_PER_THREAD = 2;
const HALF_TABLE_BYTES = 65536 * 4;
/** Bytes a weight block may be read past its end (partial i8 activation blocks read a whole 32). */
const WEIGHT_SLACK = 64;
/** Activation scratch per call is kept under this by splitting long sequences into row chunks. */
const SCRATCH_CHUNK_BYTES = 32 << 20;
/** Activation quantization block (ggml QK). */
const QK = 32;
/**
 * Below this much work a kernel runs on the calling thread alone: waking the others costs more
 * than it saves. Work is multiply-adds, or for a matmul the weight bytes when more (one-row
 * products are memory-bound). Measured on 2 threads (v7 768-wide decode): with the LoRA factors
 * parallel below 2^17 int8 decode drops 104 -> 91 tok/s, with f32 ones serial f32 drops 43 -> 37.
 */
const PARALLEL_MIN_WORK = 1 << 17;
/**
 * Spin iterations (an atomic load each, ~1 ns) before sleeping in atomic.wait: long enough to
 * bridge the JS work between two kernels of one token, short enough not to burn a core when idle.
 */
const SPIN_ITERATIONS = 1 << 18;

export interface Adopted {
  readonly ptr: number;
  readonly bytes: number;
  readonly type: WeightType;
  /** Which of the backend's memories holds the weights (0: the one with activations and states). */
  readonly mem: number;
}

interface Exports {
  heapBase(): number;
  fillHalfTable(tab: number): void;
  fillActivationTable(tab: number): void;
  activationTableBytes(): number;
  runJob(ctrl: number, job: number, part: number, nparts: number): void;
  dispatch(ctrl: number, job: number, nchunks: number, spin: number): void;
  stopWorkers(ctrl: number): void;
  relaxedDotOk(scratch: number): number;
}

/** Memory going past a limit of the backend: what the allocation needed and the limit it hit. */
export class WasmMemoryLimitError extends Error {
  constructor(readonly needed: number, readonly limit: number) {
    super(`the wasm backend would need ${gib(needed)} GiB of WebAssembly memory, over its ${gib(limit)} GiB limit: ` +
      "use a smaller weight type (--matrices int8, a bf16/f16 or quantized file) or --backend reference");
    this.name = "WasmMemoryLimitError";
  }
}

const gib = (n: number) => (n / 2 ** 30).toFixed(2);

/**
 * One WebAssembly memory of the backend with the kernel instance over it: the allocator (first
 * fit over a free list, growing in pages), its control block (job arguments), the tables the
 * kernels read, and scratch blocks. Memory 0 holds everything but the weights that did not fit it.
 */
class WasmHeap {
  readonly memory: WasmMemory;
  readonly x: Exports;
  readonly ctrl: number;
  /** f16 -> f32 of every bit pattern: block scales convert with one load. */
  readonly halfTable: number;
  /** The activations' f64x2 constants (see kernels.ts). */
  readonly activationTable: number;
  /** Views of the whole memory, renewed when it grows. */
  f32: Float32Array<ArrayBufferLike> = new Float32Array(0);
  u8: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
  i32: Int32Array<ArrayBufferLike> = new Int32Array(0);
  f64: Float64Array<ArrayBufferLike> = new Float64Array(0);
  /** Free blocks [offset, size], sorted by offset, adjacent ones merged. */
  private readonly free: Array<[number, number]> = [];
  /** End of the allocated part: the memory's size is at least this. */
  top: number;
  /** Bytes of live weight blocks here (against the backend's weights-per-memory). */
  weightBytes = 0;
  readonly scratchBlock = { ptr: 0, bytes: 0 };
  readonly ioBlock = { ptr: 0, bytes: 0 };

  /** `grant(heap, to)` throws when growing `heap`'s top to `to` would take the memories past the backend's total limit. */
  constructor(readonly index: number, module: WasmModule, route: RunInMemory, private readonly grant: (heap: WasmHeap, to: number) => void) {
    this.memory = new WA!.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
    this.x = new WA!.Instance(module, kernelImports(this.memory, route)).exports as unknown as Exports;
    this.top = align(this.x.heapBase());
    this.ctrl = this.alloc(CTRL_BYTES);
    this.halfTable = this.alloc(HALF_TABLE_BYTES);
    this.x.fillHalfTable(this.halfTable);
    this.activationTable = this.alloc(this.x.activationTableBytes());
    this.x.fillActivationTable(this.activationTable);
  }

  views(): void {
    const buf = this.memory.buffer;
    if (this.u8.buffer !== buf || this.u8.byteLength !== buf.byteLength) {
      this.f32 = new Float32Array(buf);
      this.u8 = new Uint8Array(buf);
      this.i32 = new Int32Array(buf);
      this.f64 = new Float64Array(buf);
    }
  }

  /** A 64-byte aligned block of `size` bytes, or -1 when it would take this memory past 4 GiB. */
  tryAlloc(size: number): number {
    const need = align(size);
    for (let i = 0; i < this.free.length; i++) {
      const [off, sz] = this.free[i];
      if (sz < need) continue;
      if (sz === need) this.free.splice(i, 1);
      else this.free[i] = [off + need, sz - need];
      return off;
    }
    const off = this.top;
    const end = off + need;
    if (end > MAX_PAGES * PAGE) return -1;
    this.grant(this, end);
    const have = this.memory.buffer.byteLength;
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE));
    this.top = end;
    this.views();
    return off;
  }

  alloc(size: number): number {
    const ptr = this.tryAlloc(size);
    if (ptr < 0) throw new WasmMemoryLimitError(this.top + align(size), MAX_PAGES * PAGE);
    return ptr;
  }

  release(ptr: number, size: number): void {
    const sz = align(size);
    let i = 0;
    while (i < this.free.length && this.free[i][0] < ptr) i++;
    this.free.splice(i, 0, [ptr, sz]);
    // Merge with the neighbours so big blocks can be reused.
    if (i + 1 < this.free.length && this.free[i][0] + this.free[i][1] === this.free[i + 1][0]) {
      this.free[i][1] += this.free[i + 1][1];
      this.free.splice(i + 1, 1);
    }
    if (i > 0 && this.free[i - 1][0] + this.free[i - 1][1] === this.free[i][0]) {
      this.free[i - 1][1] += this.free[i][1];
      this.free.splice(i, 1);
    }
  }

  /** `block` grown (doubling, contents lost) to at least `bytes`; its offset. */
  grown(block: { ptr: number; bytes: number }, bytes: number): number {
    if (bytes > block.bytes) {
      if (block.bytes > 0) this.release(block.ptr, block.bytes);
      block.bytes = align(Math.max(bytes, block.bytes * 2));
      block.ptr = this.alloc(block.bytes);
    }
    this.views();
    return block.ptr;
  }
}

/** Whether this runtime can run the relaxed-SIMD build (Node 20 needs --experimental-wasm-relaxed-simd). */
export function relaxedSimdAvailable(): boolean {
  return BUILDS.relaxedAvailable();
}

/** Whether WebAssembly SIMD with shared memory works here at all. */
export function wasmAvailable(): boolean {
  return BUILDS.available();
}

export class WasmBackend implements Backend {
  readonly name: string;
  readonly threads: number;
  readonly simd: WasmSimd;
  private readonly module: WasmModule;
  private readonly spawn?: WasmWorkerSpawner;
  /** Memory 0 (activations, states, constants, scratch, the first weights), then further memories of weights. */
  private readonly heaps: WasmHeap[] = [];
  private readonly home: WasmHeap;
  /** Memory 0's control block the threads wait on (a new one each time they are restarted). */
  private ctrl: number;
  private readonly maxBytes: number;
  private readonly weightsPerMemory: number;
  private readonly maxResidentBytes: number;
  /** The activations' f64x2 constants of memory 0 (see kernels.ts). */
  readonly activationTable: number;
  /** The kernels over tensors in memory 0 (the models' forward). */
  readonly tensors: WasmTensorKernels;
  private readonly adopted = new WeakMap<Matrix, Adopted>();
  /**
   * Whether the q4/q5 matmuls run the i8·i7 kernels: the relaxed build, on an engine whose
   * i16x8.relaxed_dot_i8x16_i7x16_s gives the specified sums (kernels.ts relaxedDotOk).
   */
  readonly i7: boolean;
  /** Kernel calls run by all threads / by the calling thread alone (tests, tuning). */
  readonly calls = { parallel: 0, single: 0 };
  private readonly finalizer = new FinalizationRegistry<[number, number, number]>(([mem, ptr, bytes]) => {
    this.heaps[mem].release(ptr, bytes);
    this.heaps[mem].weightBytes -= bytes;
  });
  /** Every buffer object resident arrays were made on (growing the memory gives a new one). */
  private readonly residentBuffers = new WeakSet<ArrayBufferLike>();
  private residentBytes = 0;
  private readonly residentFinalizer = new FinalizationRegistry<[number, number]>(([ptr, bytes]) => {
    this.release(ptr, bytes);
    this.residentBytes -= bytes;
  });
  /** The main thread's route for kernels.ts JOB_IN_MEMORY: the job in memory `mem`'s instance. */
  private readonly route: RunInMemory = (mem, job, part, nparts) => {
    const h = this.heaps[mem];
    h.x.runJob(h.ctrl, job, part, nparts);
  };

  constructor(options: WasmBackendOptions = {}) {
    if (!WA) throw new Error("WebAssembly is not available in this runtime");
    this.threads = Math.max(1, Math.floor(options.threads ?? 1));
    if (this.threads > 1 && !options.spawn) throw new Error("a wasm backend with several threads needs a worker spawner");
    this.spawn = options.spawn;
    this.simd = options.simd ?? (relaxedSimdAvailable() ? "relaxed-simd" : "simd");
    this.name = "wasm";
    this.maxBytes = options.maxMemoryBytes ?? Infinity;
    this.weightsPerMemory = options.weightBytesPerMemory ?? WEIGHTS_PER_MEMORY;
    if (!(this.maxBytes > 0) || !(this.weightsPerMemory > 0)) {
      throw new Error(`wasm backend memory limits must be positive (maxMemoryBytes ${this.maxBytes}, weightBytesPerMemory ${this.weightsPerMemory})`);
    }
    this.maxResidentBytes = options.residentStateBytes ?? RESIDENT_STATE_BYTES;
    this.module = new WA.Module(BUILDS.bytes(this.simd));
    this.home = this.addHeap();
    this.ctrl = this.home.ctrl;
    const probe = this.home.alloc(32);
    this.i7 = this.home.x.relaxedDotOk(probe) === 1;
    this.home.release(probe, 32);
    this.activationTable = this.home.activationTable;
    this.tensors = new WasmTensorKernels(this);
    this.startWorkers();
    const training = options.training, spawn = options.spawn;
    if (training) this.trainKernels = () => training.create({ threads: this.threads, simd: this.simd, spawn });
    this.trainingOwn = training?.own;
  }

  /** The training half of the table, where `options.training` gave one (see WasmBackendOptions). */
  readonly trainKernels?: () => TrainKernels;
  private readonly trainingOwn?: (op: TrainingOp, dtype: KernelDType) => boolean;

  /** Every inference op on f32, matmul on every weight type; the training ops its training half runs itself. */
  supports(op: KernelOp, dtype: KernelDType): boolean {
    if (isTrainingOp(op)) return this.trainingOwn?.(op, dtype) ?? false;
    return op === "matmul" ? dtype in WASM_TYPE_IDS : dtype === "f32";
  }

  /** Bytes of WebAssembly memory in use by weights and scratch, all memories together (it never shrinks). */
  get memoryBytes(): number {
    return this.heaps.reduce((s, h) => s + h.memory.buffer.byteLength, 0);
  }

  /** Per memory, its size and the bytes of weights it holds (tests, tools). */
  memories(): Array<{ bytes: number; weightBytes: number }> {
    return this.heaps.map((h) => ({ bytes: h.memory.buffer.byteLength, weightBytes: h.weightBytes }));
  }

  /** Views of memory 0 (for wasm-tensors.ts). */
  get f32(): Float32Array<ArrayBufferLike> { return this.home.f32; }
  get u8(): Uint8Array<ArrayBufferLike> { return this.home.u8; }

  /** Stops the worker threads; the backend then runs on the calling thread only. */
  close(): void {
    if (this.threads > 1 && !this.closed) this.home.x.stopWorkers(this.ctrl);
    this.closed = true;
  }
  private closed = false;

  /** Starts threads - 1 workers on memory 0's control block `ctrl`, each joining every memory there is now. */
  private startWorkers(): void {
    const memories = this.heaps.slice(1).map((h) => ({ memory: h.memory, ctrl: h.ctrl }));
    for (let p = 1; p < this.threads; p++) {
      this.spawn!({ module: this.module, memory: this.home.memory, ctrl: this.ctrl, spin: SPIN_ITERATIONS, memories });
    }
  }

  /** Growth of any memory is checked here against the total limit. */
  private readonly grant = (heap: WasmHeap, to: number): void => {
    const total = this.heaps.reduce((s, h) => s + (h === heap ? 0 : h.top), to);
    if (total > this.maxBytes) throw new WasmMemoryLimitError(total, this.maxBytes);
  };

  /** A new memory with its instance (the first: memory 0). */
  private addHeap(): WasmHeap {
    const h = new WasmHeap(this.heaps.length, this.module, this.route, this.grant);
    this.heaps.push(h);
    return h;
  }

  /**
   * A block of `bytes` for weights: in the first memory whose weights stay under
   * weightsPerMemory with it (an empty memory takes any matrix that fits its 4 GiB), else in a
   * new memory. The workers then restart to join it: the old ones leave their control block
   * (kept, never reused, so a late one reads its exit flag) and new ones get every memory.
   */
  private placeWeights(bytes: number): { mem: number; ptr: number } {
    for (let mem = 0; mem < this.heaps.length; mem++) {
      const h = this.heaps[mem];
      if (h.weightBytes > 0 && h.weightBytes + bytes > this.weightsPerMemory) continue;
      const ptr = h.tryAlloc(bytes);
      if (ptr >= 0) return this.placed(mem, ptr, bytes);
    }
    const h = this.addHeap();
    const mem = this.heaps.length - 1;
    const ptr = h.alloc(bytes);
    if (this.threads > 1 && !this.closed) {
      this.home.x.stopWorkers(this.ctrl);
      this.ctrl = this.home.alloc(CTRL_BYTES);
      this.home.u8.fill(0, this.ctrl, this.ctrl + CTRL_BYTES);
      this.startWorkers();
    }
    return this.placed(mem, ptr, bytes);
  }

  private placed(mem: number, ptr: number, bytes: number): { mem: number; ptr: number } {
    this.heaps[mem].weightBytes += align(bytes);
    return { mem, ptr };
  }

  // ---- memory 0 ------------------------------------------------------------------------------

  /** A 64-byte aligned block of `size` bytes in memory 0 (grows it). */
  alloc(size: number): number {
    return this.home.alloc(size);
  }

  release(ptr: number, size: number): void {
    this.home.release(ptr, size);
  }

  /** A scratch block of memory 0 of at least `bytes` (contents undefined), valid until the next call. */
  scratch(bytes: number): number {
    return this.home.grown(this.home.scratchBlock, bytes);
  }

  /** A second scratch block, for the Float32Array methods' inputs and outputs (valid until the next call). */
  private ioScratch(bytes: number): number {
    return this.home.grown(this.home.ioBlock, bytes);
  }

  private put(ptr: number, a: Float32Array): void {
    if (a.length > 0) this.home.f32.set(a, ptr >>> 2);
  }

  /**
   * Runs a job of memory `h` (default 0): i32 args in its slots, then `eps` (f32) after them, or
   * `scale` (f64) over slots 4-5. In parallel a job of another memory is dispatched over memory
   * 0's control block as JOB.inMemory, each thread running its chunks in that memory.
   */
  run(job: number, work: number, args: readonly number[], eps?: number, scale?: number, h: WasmHeap = this.home): void {
    const ctrl = h === this.home ? this.ctrl : h.ctrl;
    const a = (ctrl + CTRL_ARGS) >>> 2;
    for (let i = 0; i < args.length; i++) h.i32[a + i] = args[i];
    if (eps !== undefined) h.f32[a + args.length] = eps;
    if (scale !== undefined) h.f64[(ctrl + CTRL_ARGS + ARG_F64_OFFSET) >>> 3] = scale;
    if (this.threads > 1 && !this.closed && work >= PARALLEL_MIN_WORK) {
      this.calls.parallel++;
      if (h !== this.home) {
        const a0 = (this.ctrl + CTRL_ARGS) >>> 2;
        this.home.i32[a0] = h.index;
        this.home.i32[a0 + 1] = job;
        job = JOB.inMemory;
      }
      this.home.x.dispatch(this.ctrl, job, this.threads * CHUNKS_PER_THREAD, SPIN_ITERATIONS);
    } else {
      this.calls.single++;
      h.x.runJob(ctrl, job, 0, 1);
    }
  }

  // ---- Backend -------------------------------------------------------------------------------

  adopt(m: Matrix): Matrix {
    if (this.adopted.has(m)) return m;
    requireHostData(m); // a matrix another backend keeps on a GPU: nothing here to copy
    let type = m.type;
    let src = new Uint8Array(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    if (type === "f16" && hasF16InfNaN(m.data as Uint16Array)) {
      // The SIMD f16 conversion assumes finite weights; keep such a (never seen) matrix exact as f32.
      const f = decodeMatrix(m); // exact
      type = "f32";
      src = new Uint8Array(f.buffer);
    }
    const bytes = src.byteLength;
    const { mem, ptr } = this.placeWeights(bytes + WEIGHT_SLACK);
    const h = this.heaps[mem];
    // f16 is rewritten as f16s straight into this memory (no second copy in JS); a matrix with
    // weights too large for f16s keeps its f16 bits.
    if (type === "f16" && toF16s(m.data as Uint16Array, m.cols, new Uint16Array(h.memory.buffer, ptr, bytes >>> 1))) type = "f16s";
    else {
      h.u8.set(src, ptr);
      type = kernelLayout(h.u8.subarray(ptr, ptr + bytes), type);
    }
    h.u8.fill(0, ptr + bytes, ptr + bytes + WEIGHT_SLACK);
    return this.adoptedAt(m.rows, m.cols, type, mem, ptr, bytes);
  }

  adoptFrom(rows: number, cols: number, type: WeightType, bytes: number, fill: (dest: Uint8Array) => void): Matrix {
    const { mem, ptr } = this.placeWeights(bytes + WEIGHT_SLACK);
    const h = this.heaps[mem];
    const free = () => { h.release(ptr, bytes + WEIGHT_SLACK); h.weightBytes -= align(bytes + WEIGHT_SLACK); };
    try {
      fill(new Uint8Array(h.memory.buffer, ptr, bytes));
    } catch (e) {
      free();
      throw e;
    }
    h.views();
    let stored: WeightType = type;
    if (type === "f16") {
      const bits = new Uint16Array(h.memory.buffer, ptr, bytes >>> 1);
      if (hasF16InfNaN(bits) || !fitsF16s(bits)) {
        // The rare cases adopt() handles by copying (f32 for Inf/NaN, plain f16 bits when too large).
        const copy = bits.slice();
        free();
        return this.adopt({ rows, cols, type, data: copy });
      }
      // f16 -> f16s in place, one row at a time through a row-sized buffer.
      const row = new Uint16Array(cols);
      for (let r = 0; r < rows; r++) {
        const dst = bits.subarray(r * cols, (r + 1) * cols);
        row.set(dst);
        toF16s(row, cols, dst);
      }
      stored = "f16s";
    } else {
      stored = kernelLayout(new Uint8Array(h.memory.buffer, ptr, bytes), type);
    }
    h.u8.fill(0, ptr + bytes, ptr + bytes + WEIGHT_SLACK);
    return this.adoptedAt(rows, cols, stored, mem, ptr, bytes);
  }

  /** The Matrix for weights already in place at `ptr` of memory `mem`, registered for matmul and for release. */
  private adoptedAt(rows: number, cols: number, type: WeightType, mem: number, ptr: number, bytes: number): Matrix {
    const buf = this.heaps[mem].memory.buffer;
    const view = type === "f32" ? new Float32Array(buf, ptr, bytes >>> 2)
      : type === "f16" || type === "bf16" || type === "f16s" ? new Uint16Array(buf, ptr, bytes >>> 1)
        : new Uint8Array(buf, ptr, bytes);
    const out: Matrix = { rows, cols, type, data: view, handle: ptr };
    this.adopted.set(out, { ptr, bytes: bytes + WEIGHT_SLACK, type, mem });
    this.finalizer.register(out, [mem, ptr, align(bytes + WEIGHT_SLACK)]);
    return out;
  }

  residentArray(a: Float32Array): Float32Array {
    if (this.isResident(a)) return a;
    const bytes = align(a.byteLength);
    if (this.residentBytes + bytes > this.maxResidentBytes) return a;
    let ptr: number;
    try {
      ptr = this.alloc(bytes);
    } catch {
      return a; // no room under the memory limit: the copying path still works
    }
    this.residentBytes += bytes;
    const buf = this.home.memory.buffer;
    this.residentBuffers.add(buf);
    const view = new Float32Array(buf, ptr, a.length);
    view.set(a);
    this.residentFinalizer.register(view, [ptr, bytes]);
    return view;
  }

  isResident(a: Float32Array): boolean {
    return this.residentBuffers.has(a.buffer);
  }

  /** The adopted form of W, or undefined when another backend adopted it. */
  adoptedInfo(W: Matrix): Adopted | undefined {
    return this.adopted.get(W);
  }

  matmul(x: Float32Array, T: number, W: Matrix): Float32Array {
    const info = this.adopted.get(W);
    if (!info) return referenceBackend.matmul(x, T, W); // adopted elsewhere: still correct
    const { rows: O, cols: I } = W;
    const rows = Math.max(1, Math.min(T, Math.floor(SCRATCH_CHUNK_BYTES / (4 * (I + O)))));
    const y = new Float32Array(T * O); // (T, O)
    const io = this.ioScratch(4 * rows * (I + O));
    for (let t0 = 0; t0 < T; t0 += rows) {
      const n = Math.min(rows, T - t0);
      const xp = io, yp = io + align(4 * n * I);
      this.put(xp, x.subarray(t0 * I, (t0 + n) * I));
      this.matmulAt(xp, yp, n, W, info);
      y.set(this.home.f32.subarray(yp >>> 2, (yp >>> 2) + n * O), t0 * O);
    }
    return y;
  }

  /**
   * y (T, O) at yp = x (T, I) at xp · Wᵀ, both in memory 0. Weights in another memory are
   * multiplied there: x copied into that memory's io scratch, y copied back, in row chunks under
   * SCRATCH_CHUNK_BYTES (a token's x and y are a few KiB against the matrix's MiB).
   */
  matmulAt(xp: number, yp: number, T: number, W: Matrix, info: Adopted): void {
    if (info.mem === 0) return this.matmulIn(this.home, xp, yp, T, W, info);
    const h = this.heaps[info.mem];
    const { rows: O, cols: I } = W;
    const rows = Math.max(1, Math.min(T, Math.floor(SCRATCH_CHUNK_BYTES / (4 * (I + O)))));
    for (let t0 = 0; t0 < T; t0 += rows) {
      const n = Math.min(rows, T - t0);
      const hx = h.grown(h.ioBlock, align(4 * n * I) + 4 * n * O), hy = hx + align(4 * n * I);
      const home = this.home.u8, x0 = xp + 4 * t0 * I, y0 = yp + 4 * t0 * O;
      h.u8.set(home.subarray(x0, x0 + 4 * n * I), hx);
      this.matmulIn(h, hx, hy, n, W, info);
      this.home.u8.set(h.u8.subarray(hy, hy + 4 * n * O), y0);
    }
  }

  /**
   * y (T, O) at yp = x (T, I) at xp · Wᵀ, all in memory `h`; scratch there only for the quantized
   * activations and f16/bf16 panels, in row chunks under SCRATCH_CHUNK_BYTES.
   */
  private matmulIn(h: WasmHeap, xp: number, yp: number, T: number, W: Matrix, info: Adopted): void {
    const { rows: O, cols: I } = W;
    const float = FLOAT_TYPES.has(info.type);
    const nb = Math.ceil(I / QK);
    const perRow = float ? 4 * I : 2 * nb * QK + 16 * nb;
    const rows = Math.max(1, Math.min(T, Math.floor(SCRATCH_CHUNK_BYTES / perRow)));
    for (let t0 = 0; t0 < T; t0 += rows) {
      const n = Math.min(rows, T - t0);
      const x0 = xp + 4 * t0 * I, y0 = yp + 4 * t0 * O;
      const work = Math.max(n * O * I, info.bytes);
      if (float) {
        // Two dequantized f16/bf16 rows per chunk; for T = 1 over f16s weights, x·2^102 (kernels.ts scaleX).
        const panel = n > 1 ? align(2 * 4 * I) : info.type === "f16s" ? align(4 * I) : 0;
        const base = h.grown(h.scratchBlock, panel * this.threads * CHUNKS_PER_THREAD + ALIGN);
        this.run(JOB.matmulFloat, work, [info.ptr, WASM_TYPE_IDS[info.type], O, I, n, x0, y0, base, panel, h.activationTable], undefined, undefined, h);
      } else {
        // i16 activations, or for the i8·i7 kernels a 64-byte record per block (i8 values, lane sums, scale, sum).
        // Those run T = 1 only: they give the i16 kernels' bits, and the tiled i16 kernels (which
        // decode a weight block once for 8 activation rows) are the faster ones for T > 1.
        const i7 = this.i7 && n === 1 && I7_TYPES.has(info.type);
        // A T > 1 product's tiles take the scales and block sums per group of 4 rows (kernels.ts quantizeRows g4).
        const tiled = !i7 && n > 1;
        const qb = align(2 * n * nb * QK), sb = align(4 * n * nb); // i16 values, or records of the same 64 bytes a block
        const gb = tiled ? 2 * 16 * nb * Math.ceil(n / 4) : 0;
        const qp = h.grown(h.scratchBlock, qb + 2 * sb + gb), dp = qp + qb, sp = dp + sb, records = i7 ? 1 : 0;
        const gp = tiled ? sp + sb : 0;
        // T = 1 over q8_0 and i8: the activations' even and odd elements apart (kernels.ts splitDot).
        const split = n === 1 && SPLIT_TYPES.has(info.type) ? 1 : 0;
        this.run(JOB.quantize, n * I * 4, [x0, n, I, qp, dp, sp, records, gp, split], undefined, undefined, h);
        const scales = info.type === "i8" ? info.ptr + O * I : 0;
        this.run(JOB.matmulInt, work, [info.ptr, WASM_TYPE_IDS[info.type], O, I, n, qp, dp, sp, y0, scales, h.halfTable, records, h.activationTable, gp, split], undefined, undefined, h);
      }
    }
  }


  // The Float32Array methods: their arrays copied into io scratch as tensors, the tensor kernel
  // run over them, the outputs (and states not resident here) copied back.

  activate(f: Activation, x: Float32Array, scale = 1): Float32Array {
    const chunk = SCRATCH_CHUNK_BYTES >>> 2;
    for (let i0 = 0; i0 < x.length; i0 += chunk) {
      const part = x.subarray(i0, Math.min(x.length, i0 + chunk));
      const [t] = this.stage([[part, 1]]);
      this.tensors.activate(f, t, scale);
      this.copyOut(t, part);
    }
    return x;
  }

  layerNorm(x: Float32Array, T: number, C: number, weight: Float32Array, bias: Float32Array, eps: number): Float32Array {
    return this.norm(x, T, 1, C, weight, bias, eps);
  }

  groupNorm(x: Float32Array, T: number, H: number, N: number, weight: Float32Array, bias: Float32Array, eps: number): Float32Array {
    return this.norm(x, T, H, N, weight, bias, eps);
  }

  private norm(x: Float32Array, T: number, G: number, N: number, weight: Float32Array, bias: Float32Array, eps: number): Float32Array {
    const C = G * N;
    const y = new Float32Array(T * C); // (T, C)
    const rows = Math.max(1, Math.min(T, Math.floor(SCRATCH_CHUNK_BYTES / (8 * C))));
    for (let t0 = 0; t0 < T; t0 += rows) {
      const n = Math.min(rows, T - t0);
      const [xt, yt, wt, bt] = this.stage([[x.subarray(t0 * C, (t0 + n) * C), n], [n * C, n], [weight.subarray(0, C), 1], [bias.subarray(0, C), 1]]);
      this.tensors.groupNorm(yt, xt, G, wt, bt, eps);
      this.copyOut(yt, y.subarray(t0 * C, (t0 + n) * C));
    }
    return y;
  }

  wkv4(T: number, C: number, w: Float32Array, u: Float32Array, k: Float32Array, v: Float32Array, st: Wkv4State): Float32Array {
    const [wt, ut, kt, vt, yt, aa, bb, pp] = this.stage([[w, 1], [u, 1], [k.subarray(0, T * C), T], [v.subarray(0, T * C), T], [T * C, T],
      this.stateArg(st.aa), this.stateArg(st.bb), this.stateArg(st.pp)]);
    this.tensors.wkv4(yt, wt, ut, kt, vt, aa, bb, pp, 0, T);
    this.stateBack(st.aa, aa); this.stateBack(st.bb, bb); this.stateBack(st.pp, pp);
    return this.copyOut(yt, new Float32Array(T * C));
  }

  wkv5(T: number, H: number, N: number, r: Float32Array, k: Float32Array, v: Float32Array,
    decay: Float32Array, u: Float32Array, S: Float32Array): Float32Array {
    const C = H * N;
    const perToken = decay.length === T * C && T > 1;
    const seq = (a: Float32Array): [Float32Array, number] => [a.subarray(0, T * C), T];
    const [rt, kt, vt, dt, ut, St, yt] = this.stage([seq(r), seq(k), seq(v), perToken ? seq(decay) : [decay.subarray(0, C), 1],
      [u.subarray(0, C), 1], this.stateArg(S), [T * C, T]]);
    this.tensors.wkv5(yt, rt, kt, vt, dt, ut, St, H, 0, T);
    this.stateBack(S, St);
    return this.copyOut(yt, new Float32Array(T * C));
  }

  wkv7(T: number, H: number, N: number, r: Float32Array, decay: Float32Array, k: Float32Array, v: Float32Array,
    a: Float32Array, b: Float32Array, S: Float32Array): Float32Array {
    const C = H * N;
    const seq = (x: Float32Array): [Float32Array, number] => [x.subarray(0, T * C), T];
    const [rt, dt, kt, vt, at, bt, St, yt] = this.stage([seq(r), seq(decay), seq(k), seq(v), seq(a), seq(b), this.stateArg(S), [T * C, T]]);
    this.tensors.wkv7(yt, rt, dt, kt, vt, at, bt, St, H, 0, T);
    this.stateBack(S, St);
    return this.copyOut(yt, new Float32Array(T * C));
  }

  /**
   * Tensors in io scratch for `[data or element count, rows]` each (a count: an output, contents
   * undefined), data copied in; a resident state passes through as its own memory.
   */
  private stage(specs: ReadonlyArray<[Float32Array | number, number] | WasmTensor>): WasmTensor[] {
    const len = (s: [Float32Array | number, number]) => (typeof s[0] === "number" ? s[0] : s[0].length);
    let bytes = 0;
    for (const s of specs) if (!(s instanceof WasmTensor)) bytes += align(4 * len(s));
    let ptr = this.ioScratch(bytes);
    return specs.map((s) => {
      if (s instanceof WasmTensor) return s;
      const n = len(s), t = new WasmTensor(s[1], n / s[1], ptr);
      if (typeof s[0] !== "number") this.put(ptr, s[0]);
      ptr += align(4 * n);
      return t;
    });
  }

  /** A state array for stage(): its own memory when resident (updated in place), else a copy. */
  private stateArg(a: Float32Array): [Float32Array, number] | WasmTensor {
    return this.isResident(a) ? new WasmTensor(1, a.length, a.byteOffset) : [a, 1];
  }

  /** Copies a staged state back unless it was the resident array itself. */
  private stateBack(a: Float32Array, t: WasmTensor): void {
    if (!(this.isResident(a) && t.ptr === a.byteOffset)) this.copyOut(t, a);
  }

  private copyOut(t: WasmTensor, out: Float32Array): Float32Array {
    out.set(this.f32.subarray(t.ptr >>> 2, (t.ptr >>> 2) + out.length));
    return out;
  }
}

export function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

function hasF16InfNaN(bits: Uint16Array): boolean {
  for (let i = 0; i < bits.length; i++) if ((bits[i] & 0x7c00) === 0x7c00) return true;
  return false;
}

/**
 * Weights just written to the backend's memory, put in place into the layout the kernels read where
 * their type has one (q5: the fifth bits reordered, weight-rows.ts q5sBit); the type they now have.
 */
function kernelLayout(bytes: Uint8Array, type: WeightType): WeightType {
  return type === "q5_0" || type === "q5_1" ? toQ5s(bytes, type) : type;
}

/** A single-threaded wasm backend with these memory limits (a new one each call), or null where WebAssembly SIMD cannot run. */
export function limitedWasmBackend(limits: { readonly maxBytes?: number; readonly weightBytesPerMemory?: number }): WasmBackend | null {
  return wasmAvailable() ? new WasmBackend({ maxMemoryBytes: limits.maxBytes, weightBytesPerMemory: limits.weightBytesPerMemory }) : null;
}

/** A single-threaded wasm backend (cached), or null where WebAssembly SIMD cannot run. */
let shared: WasmBackend | null | undefined;
export function defaultWasmBackend(): WasmBackend | null {
  if (shared === undefined) {
    try {
      shared = wasmAvailable() ? new WasmBackend() : null;
    } catch {
      shared = null; // e.g. no 4 GiB address space for the memory reservation: the reference runs instead
    }
  }
  return shared;
}
