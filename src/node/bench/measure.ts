import { readFileSync } from "node:fs";
import type { Activation, Backend, Matrix, TensorKernels, WeightType, Wkv4State } from "../../core/backend/backend.js";
import { matrixBytes, matrixOver } from "../../core/backend/weight-rows.js";
import type { Checkpoint } from "../../core/formats/checkpoint.js";
import { type MatrixDType, retypeMatrices } from "../../core/formats/retype.js";
import { architectureFor, detectVersion } from "../../core/model/detect.js";
import { buildModel, type Model } from "../../core/model/model.js";
import { randomCheckpoint, type RandomModelSpec } from "../../core/model/random.js";
import { loadCheckpoint } from "../load.js";

/*
 * The pieces of `rwkv bench`: building the model a row measures, timing decode and prefill with a
 * guard against other processes on the CPU, counting the weight bytes a token reads, and the
 * bandwidth probe. The model calls are awaited (the Model API is asynchronous) but nothing else
 * runs meanwhile: the CPU backends finish the work inside the call (the wasm backend's threads are
 * workers over shared memory), so a timed run is exactly the work of its calls.
 */

/** Where a benchmark's weights come from: a model file, or a random model built in memory. */
export type ModelSource = { readonly file: string } | { readonly random: RandomModelSpec };

/**
 * How the matrices are stored: a MatrixDType re-encodes them in memory; "int8" is f32 quantized to
 * per-row int8 at load (--int8); "stored" keeps a file's own types.
 */
export type BenchDType = MatrixDType | "int8" | "stored";

export function describeSource(source: ModelSource): string {
  if ("file" in source) return source.file;
  const s = source.random;
  return `random RWKV-${s.version}, ${s.nLayer} layers, width ${s.nEmbd}, vocab ${s.vocabSize}, seed ${s.seed ?? 1}`;
}

/** Opens the source's checkpoint (a file's tensor index only; random tensors are made when read). */
export function openSource(source: ModelSource): { checkpoint: Checkpoint; close(): void } {
  if ("file" in source) return loadCheckpoint(source.file);
  return { checkpoint: randomCheckpoint(source.random), close: () => undefined };
}

/** Builds the model a row measures: the source's weights in `dtype`, on `backend`. */
export function benchModel(source: ModelSource, dtype: BenchDType, backend: Backend): Model {
  const { checkpoint, close } = openSource(source);
  try {
    const ckpt = dtype === "stored" ? checkpoint : retypeMatrices(checkpoint, dtype === "int8" ? "f32" : dtype);
    const version = detectVersion(ckpt);
    return buildModel(ckpt, architectureFor(version, ckpt.source), version, backend, { matrices: dtype === "int8" ? "int8" : undefined });
  } finally {
    close();
  }
}

/**
 * A backend that passes every call through and, while counting, adds up the bytes of the weight
 * matrices that matmul reads: the memory traffic a token costs, whatever the storage types.
 */
export class CountingBackend implements Backend {
  counting = false;
  weightBytes = 0;
  /** The inner backend's tensor kernels, matmul counted (the rest inherited as they are). */
  readonly tensors: TensorKernels;
  constructor(readonly inner: Backend) {
    const kernels = inner.tensors;
    this.tensors = Object.assign(Object.create(kernels) as TensorKernels, {
      matmul: (y: Parameters<TensorKernels["matmul"]>[0], x: Parameters<TensorKernels["matmul"]>[1], W: Matrix): void => {
        if (this.counting) this.weightBytes += matrixBytes(W.type, W.rows, W.cols); // not W.data: empty for a matrix kept on a GPU
        kernels.matmul(y, x, W);
      },
    });
  }
  get name(): string { return this.inner.name; }
  adopt(m: Matrix): Matrix { return this.inner.adopt(m); }
  // A method, not a getter: wrappers (the model's unmerged-adapter backend) copy methods only.
  adoptFrom(rows: number, cols: number, type: WeightType, bytes: number, fill: (dest: Uint8Array) => void): Matrix {
    if (this.inner.adoptFrom) return this.inner.adoptFrom(rows, cols, type, bytes, fill);
    const raw = new Uint8Array(bytes);
    fill(raw);
    return this.inner.adopt(matrixOver(type, rows, cols, raw));
  }
  get adoptForHost(): ((m: Matrix) => Matrix) | undefined {
    return this.inner.adoptForHost?.bind(this.inner);
  }
  get residentArray(): ((a: Float32Array) => Float32Array) | undefined {
    return this.inner.residentArray?.bind(this.inner);
  }
  matmul(x: Float32Array, T: number, W: Matrix): Float32Array {
    if (this.counting) this.weightBytes += matrixBytes(W.type, W.rows, W.cols); // not W.data: empty for a matrix kept on a GPU
    return this.inner.matmul(x, T, W);
  }
  activate(f: Activation, x: Float32Array, scale?: number): Float32Array {
    return this.inner.activate(f, x, scale);
  }
  layerNorm(x: Float32Array, T: number, C: number, weight: Float32Array, bias: Float32Array, eps: number): Float32Array {
    return this.inner.layerNorm(x, T, C, weight, bias, eps);
  }
  groupNorm(x: Float32Array, T: number, H: number, N: number, weight: Float32Array, bias: Float32Array, eps: number): Float32Array {
    return this.inner.groupNorm(x, T, H, N, weight, bias, eps);
  }
  wkv4(T: number, C: number, w: Float32Array, u: Float32Array, k: Float32Array, v: Float32Array, state: Wkv4State): Float32Array {
    return this.inner.wkv4(T, C, w, u, k, v, state);
  }
  wkv5(T: number, H: number, N: number, r: Float32Array, k: Float32Array, v: Float32Array, decay: Float32Array, u: Float32Array, S: Float32Array): Float32Array {
    return this.inner.wkv5(T, H, N, r, k, v, decay, u, S);
  }
  wkv7(T: number, H: number, N: number, r: Float32Array, decay: Float32Array, k: Float32Array, v: Float32Array, a: Float32Array, b: Float32Array, S: Float32Array): Float32Array {
    return this.inner.wkv7(T, H, N, r, decay, k, v, a, b, S);
  }
}

// ---- timing with a quiet-machine guard -----------------------------------------------------

/** Linux counts /proc/stat in USER_HZ ticks, 100 per second on every mainstream build. */
const PROC_STAT_MS_PER_TICK = 10;
const MS_PER_S = 1000;
const US_PER_MS = 1000;
/** A run is "disturbed" when other processes used more than this many cores on average during it. */
export const DISTURBED_CORES = 0.1;
/** A disturbed run is repeated after a pause, at most this many times; then it counts as it is. */
const RETRIES = 2;
const RETRY_PAUSE_MS = 500;
/**
 * /proc/stat counts in 10 ms ticks: over a shorter run one tick of someone else's work would read
 * as a whole core, so runs under this are not judged (their otherCores is null).
 */
const MIN_JUDGED_MS = 200;

/** Busy CPU time of the whole machine in ms (all cores), or null where /proc/stat is not readable. */
function machineBusyMs(): number | null {
  try {
    const f = readFileSync("/proc/stat", "utf8").split("\n", 1)[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: everything but idle and iowait is busy;
    // steal is time the hypervisor gave to other machines, which slows this one just the same.
    const busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0);
    return Number.isFinite(busy) ? busy * PROC_STAT_MS_PER_TICK : null;
  } catch {
    return null;
  }
}

/** CPU time of this process, all its threads (the kernel workers included), in ms. */
function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / US_PER_MS;
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export interface Timed {
  /** Wall-clock seconds of the accepted run. */
  readonly seconds: number;
  /** Cores other processes used during it on average (null: not measurable here). */
  readonly otherCores: number | null;
}

/**
 * Times `fn` once; when other processes used more than DISTURBED_CORES meanwhile (Linux only, runs
 * of MIN_JUDGED_MS or more), pauses and runs it again, up to RETRIES times. The last run is
 * returned with what it saw.
 */
export async function timeQuietly(fn: () => void | Promise<void>, guard: boolean): Promise<Timed> {
  for (let attempt = 0; ; attempt++) {
    const busy0 = guard ? machineBusyMs() : null, own0 = ownCpuMs();
    const t0 = performance.now();
    await fn();
    const wallMs = performance.now() - t0;
    const busy1 = busy0 === null ? null : machineBusyMs();
    const otherCores = busy0 === null || busy1 === null || wallMs < MIN_JUDGED_MS ? null
      : Math.max(0, (busy1 - busy0 - (ownCpuMs() - own0)) / wallMs);
    if (otherCores === null || otherCores <= DISTURBED_CORES || attempt >= RETRIES) return { seconds: wallMs / MS_PER_S, otherCores };
    sleepMs(RETRY_PAUSE_MS);
  }
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** One rate measured over several runs. */
export interface RateStat {
  /** Median tokens per second. */
  readonly median: number;
  /** Each run's tokens per second, in run order. */
  readonly runs: number[];
  /** Each run's average use of other processes, in cores (null where not measurable). */
  readonly otherCores: Array<number | null>;
}

function rateStat(tokens: number, timed: Timed[]): RateStat {
  const runs = timed.map((t) => tokens / t.seconds);
  return { median: median(runs), runs, otherCores: timed.map((t) => t.otherCores) };
}

export interface SpeedOptions {
  readonly runs: number;
  /** Tokens per decode run. */
  readonly decodeTokens: number;
  /** Sequence lengths of the prefill runs. */
  readonly prefill: readonly number[];
  /** Repeat runs disturbed by other processes (Linux). */
  readonly quiet: boolean;
  /** Untimed whole runs first, for at least this long (at least one run). */
  readonly warmupSeconds: number;
  /** Batch sizes of the batched-decode runs (model.stepBatch over that many states); none when absent. */
  readonly batch?: readonly number[];
}

export interface SpeedResult {
  readonly decode: RateStat;
  /** Keyed by sequence length. */
  readonly prefill: Record<string, RateStat>;
  /** Bytes of weight matrices one decode step reads (every matmul of a token, the head included). */
  readonly weightBytesPerToken: number;
  /** Batched decode keyed by batch size: tokens per second over all sequences of the batch. */
  readonly batchDecode?: Record<string, RateStat>;
}

/** Token ids spread over the vocabulary, the same for every run and dtype. */
function tokenSequence(n: number, vocab: number, offset: number): number[] {
  const PRIME = 7919;
  return Array.from({ length: n }, (_, i) => ((i + offset) * PRIME) % vocab);
}

/**
 * Decode: `decodeTokens` model.step calls per run (logits included), continuing one state.
 * Prefill: model.forward over a fresh state. Runs interleave (decode, then each prefill length) so
 * a passing disturbance spreads over all of them rather than spoiling one; warm-up first.
 */
export async function measureSpeed(model: Model, counter: CountingBackend, o: SpeedOptions): Promise<SpeedResult> {
  const V = model.config.vocabSize;
  const state = model.initState();
  const decodeTokens = tokenSequence(o.decodeTokens, V, 1);
  const prompts = o.prefill.map((n) => tokenSequence(n, V, 0));
  const decodeRun = async () => { for (const t of decodeTokens) await model.step(t, state); };
  const prefillRun = (p: number[]) => async () => { await model.forward(p, model.initState()); };
  // Batched decode: B states each fed decodeTokens tokens, one stepBatch call per token position.
  const batches = (o.batch ?? []).map((B) => Array.from({ length: B }, () => model.initState()));
  const batchRun = (states: ReturnType<Model["initState"]>[]) => async () => {
    for (const [i, t] of decodeTokens.entries()) await model.stepBatch(states.map((_, b) => (t + b + i) % V), states);
  };
  // Warm-up: whole runs until warmupSeconds have passed (at least one). V8 optimizes the JavaScript
  // between the kernels only after many calls: measured on the int8 0.1B model (2 threads), the
  // first decode run after 4 warm-up steps was 20% slower than the later ones.
  const warmupEnd = performance.now() + o.warmupSeconds * MS_PER_S;
  do {
    await decodeRun();
    for (const p of prompts) await prefillRun(p)();
    for (const b of batches) await batchRun(b)();
  } while (performance.now() < warmupEnd);

  counter.weightBytes = 0;
  counter.counting = true;
  await model.step(decodeTokens[0], state);
  counter.counting = false;
  const weightBytesPerToken = counter.weightBytes;

  const dec: Timed[] = [];
  const pre: Timed[][] = prompts.map(() => []);
  const bat: Timed[][] = batches.map(() => []);
  for (let r = 0; r < o.runs; r++) {
    dec.push(await timeQuietly(decodeRun, o.quiet));
    for (const [i, p] of prompts.entries()) pre[i].push(await timeQuietly(prefillRun(p), o.quiet));
    for (const [i, b] of batches.entries()) bat[i].push(await timeQuietly(batchRun(b), o.quiet));
  }
  return {
    decode: rateStat(o.decodeTokens, dec),
    prefill: Object.fromEntries(o.prefill.map((n, i) => [String(n), rateStat(n, pre[i])])),
    weightBytesPerToken,
    ...(batches.length ? { batchDecode: Object.fromEntries(batches.map((b, i) => [String(b.length), rateStat(b.length * o.decodeTokens, bat[i])])) } : {}),
  };
}

// ---- bandwidth probe -------------------------------------------------------------------------

const PROBE_WARMUP = 2;
/** Timed probe runs (median taken). */
export const PROBE_RUNS = 7;
/** Target duration of one probe run, reached with at most PROBE_MAX_PASSES passes (256 MiB: ~40). */
const PROBE_RUN_MS = 300;
const PROBE_MAX_PASSES = 64;

export interface ProbeResult {
  /** Bytes of the f32 matrix streamed per pass, and its width. */
  readonly bytes: number;
  readonly cols: number;
  /** Median bytes per second over the runs. */
  readonly bytesPerSecond: number;
  readonly runs: number[];
  /** Each run's average use of other processes, in cores (null where not measurable). */
  readonly otherCores: Array<number | null>;
}

/**
 * The memory bandwidth the runtime reaches: the backend's own f32 matrix-vector product over a
 * matrix far larger than the caches (≈ `mib` MiB) with `cols` columns (a model's width: the rate
 * depends on the row length by ±10%), the access pattern of a decode step's weights. f32 needs the
 * least arithmetic per byte of all weight types, so it is about the rate the weight streaming of
 * any type can approach; not a hard bound (other shapes, cache reuse between matrices).
 */
export async function probeBandwidth(backend: Backend, cols: number, mib: number, runs: number, quiet: boolean): Promise<ProbeResult> {
  const rows = Math.max(1, Math.round((mib * 2 ** 20) / (4 * cols)));
  const fill = (data: Float32Array) => { // (rows, cols)
    for (let i = 0; i < data.length; i++) data[i] = ((i * 2654435761) >>> 0) / 2 ** 32 - 0.5; // any finite values
  };
  const bytes = rows * cols * 4;
  // Written in the backend's memory where it can: the probe's matrix is not held twice either. The
  // probe times the Float32Array matmul, so a backend that has adoptForHost (WebGPU, whose adopt()
  // leaves the CPU no weights and whose Float32Array methods run on the CPU) gets it that way.
  const filled = () => { const d = new Float32Array(rows * cols); fill(d); return d; }; // (rows, cols)
  const W = backend.adoptForHost ? backend.adoptForHost({ rows, cols, type: "f32", data: filled() })
    : backend.adoptFrom ? backend.adoptFrom(rows, cols, "f32", bytes, (d) => fill(new Float32Array(d.buffer, d.byteOffset, rows * cols)))
      : backend.adopt({ rows, cols, type: "f32", data: filled() });
  const x = new Float32Array(cols).fill(1 / cols); // (cols)
  let passMs = 0;
  for (let i = 0; i < PROBE_WARMUP; i++) {
    const t0 = performance.now();
    backend.matmul(x, 1, W);
    passMs = performance.now() - t0; // the last warm-up pass: the first also grows scratch memory
  }
  // Several passes a run, so that a run over a big matrix is long enough for the quiet guard to
  // judge; a small one (tests) stays short.
  const passes = Math.min(PROBE_MAX_PASSES, Math.max(1, Math.ceil(PROBE_RUN_MS / Math.max(passMs, 1e-3))));
  const timed: Timed[] = [];
  for (let r = 0; r < runs; r++) timed.push(await timeQuietly(() => { for (let p = 0; p < passes; p++) backend.matmul(x, 1, W); }, quiet));
  const rates = timed.map((t) => (passes * bytes) / t.seconds);
  return { bytes, cols, bytesPerSecond: median(rates), runs: rates, otherCores: timed.map((t) => t.otherCores) };
}
