import type { StateDevice } from "../model/state.js";
import type { TrainDType } from "./buffers.js";
import type { TrainKernels } from "./train-kernels.js";
import type { TrainOps } from "./train-ops.js";

/**
 * The kernel table: one per backend, the ops the models run for inference and, beside them, the
 * ops training runs, each forward with its backward in the same argument order. The plain
 * TypeScript implementation (reference.ts, train-kernels.ts, train-ops.ts) is the specification;
 * faster backends (WebAssembly SIMD, WebGPU) implement the same interfaces and must pass the
 * shared conformance suite (test/backend-conformance.test.ts) against it.
 *
 * Letters: T tokens in the sequence, C channels, H heads, N head size (C = H*N),
 * I/O a matrix's input/output width. All arrays are row-major Float32Array.
 */

/**
 * Storage types of weight matrices. Matrices stay in their checkpoint's compact type in memory
 * (a bf16 model costs 2 bytes a weight, Q4_0 4.5 bits) and kernels dequantize on the fly.
 * Block types are ggml's: each row is cols/32 blocks of 32 consecutive elements.
 * "i8" is symmetric int8 with one scale per row, made at load time (int8.ts): data is a Uint8Array
 * of O·I signed bytes (row-major, any I) followed by O little-endian f32 scales; w[o][i] = q·scale[o].
 * "f16s" is how the wasm backend keeps f16 weights: Uint16Array of the f16 bits of w·2^10 (the
 * same values, none of them an f16 subnormal, which x86 multiplies slowly); w = f16(bits)·2^-10,
 * each row's full groups of 8 columns stored in the order of weight-rows.ts f16sPosition.
 * "q5_0s" and "q5_1s" are how the wasm backend keeps q5_0 and q5_1: ggml's blocks, byte for byte,
 * except each block's 32 fifth bits (qh), stored in the order of weight-rows.ts q5sBit.
 */
export type WeightType = "f32" | "f16" | "bf16" | "q8_0" | "q5_0" | "q5_1" | "q4_0" | "q4_1" | "i8" | "f16s" | "q5_0s" | "q5_1s";

export const BLOCK_TYPES: ReadonlySet<WeightType> = new Set(["q8_0", "q5_0", "q5_1", "q4_0", "q4_1"]);

/** A weight matrix applied as y = W x, stored (out, in) row-major like torch's nn.Linear. */
export interface Matrix {
  readonly rows: number; // O
  readonly cols: number; // I
  readonly type: WeightType;
  /**
   * f32: Float32Array (O·I); f16/bf16: Uint16Array (O·I) of raw bits; block types: Uint8Array of O
   * rows of blocks; i8: Uint8Array of O·I int8 then O f32 row scales. May be a view into a backend's
   * own memory once adopted, or empty (length 0) when the backend keeps the weights only where the
   * CPU cannot read them (the WebGPU backend's adopt): CPU readers then throw (requireHostData).
   */
  readonly data: Float32Array | Uint16Array | Uint8Array;
  /** Where a backend keeps its own copy (e.g. an offset in WebAssembly memory); set by adopt(). */
  readonly handle?: number;
  /** The checkpoint tensor it was read from, for messages (set by Weights). */
  readonly name?: string;
}

/**
 * Element-wise functions between the models' matmuls, as in the reference (JS numbers, so f64,
 * rounded to f32 when stored): sigmoid 1/(1+e^-z), tanh, silu z/(1+e^-z), relu2 (z > 0 ? z : 0)²,
 * exp e^z.
 */
export type Activation = "sigmoid" | "tanh" | "silu" | "relu2" | "exp";

/** v4 WKV state per channel: numerator aa, denominator bb, running max exponent pp. */
export interface Wkv4State { aa: Float32Array; bb: Float32Array; pp: Float32Array } // (C) each

export interface Backend {
  readonly name: string;

  /**
   * Optional: the training half of this backend's table (every TrainingOp), a new kernel set with
   * its own memory per model trained. A backend without one (e.g. a WebGPU backend that serves
   * inference only) trains on the reference's: see `trainingKernels` in registry.ts, which makes
   * that fallback explicit in the kernel set's name.
   */
  trainKernels?(): TrainKernels;

  /**
   * Optional: whether this backend's own code runs `op` on `dtype` (a weight type for matmul, the
   * storage type for the training ops); false: that call runs the reference's code (the wasm
   * training kernels do so for f64 storage, for instance). Absent: every InferenceOp on f32
   * tensors and matmul on every WeightType, no TrainingOp. Read it through `supports` in registry.ts.
   */
  supports?(op: KernelOp, dtype: KernelDType): boolean;

  /**
   * The kernel table over tensors that live in this backend's memory: what the models' forward
   * runs on (one fixed sequence of these calls per token, no JavaScript arrays in between). The
   * Float32Array methods below are the older calling convention, kept for training, tools and
   * tests: each call copies its inputs in and its outputs out.
   */
  readonly tensors: TensorKernels;

  /**
   * Takes a weight matrix at load time and returns the form to pass to matmul: the reference
   * keeps it as is; a WebAssembly backend copies (or packs) it into its own memory once.
   */
  adopt(m: Matrix): Matrix;

  /**
   * Optional: adopt() for a matrix whose stored bytes (`bytes` of them, in `type`'s layout) `fill`
   * writes straight into the backend's own memory, e.g. read there from the file, so loading
   * never holds a second copy of it. Same result as adopt() of those bytes.
   */
  adoptFrom?(rows: number, cols: number, type: WeightType, bytes: number, fill: (dest: Uint8Array) => void): Matrix;

  /**
   * Optional: adopt() for a matrix that only the Float32Array methods below will read (a load-time
   * product such as DeepEmbed's fold), never the tensor kernels. Absent: adopt() serves both. A
   * backend whose adopt() moves the weights out of the CPU's reach (WebGPU) keeps such a matrix
   * as it is, since its Float32Array methods run on the CPU.
   */
  adoptForHost?(m: Matrix): Matrix;

  /**
   * Optional: an array with a's values that this backend's kernels can update in place, for the
   * recurrent state, which every token reads and writes whole (the wasm backend: a view of its
   * memory, so a WKV scan copies nothing). Returns `a` itself when it already is one, or when the
   * backend keeps no more (it caps their total). The model stores the result back into the state.
   */
  residentArray?(a: Float32Array): Float32Array;

  /** y (T, O) = x (T, I) Wᵀ. */
  matmul(x: Float32Array, T: number, W: Matrix): Float32Array;

  /** In place, x[n] <- f(scale · x[n]) (scale default 1, the product in f64). Returns x. */
  activate(f: Activation, x: Float32Array, scale?: number): Float32Array;

  /** Per row: (x - mean) / sqrt(var + eps) * weight + bias, biased variance. x (T, C) -> (T, C). */
  layerNorm(x: Float32Array, T: number, C: number, weight: Float32Array, bias: Float32Array, eps: number): Float32Array;

  /** Layer norm over each head's N values, then per-channel affine. x (T, H*N) -> (T, H*N). */
  groupNorm(x: Float32Array, T: number, H: number, N: number, weight: Float32Array, bias: Float32Array, eps: number): Float32Array;

  /**
   * RWKV-4 WKV, log-space with a running max. w = -exp(time_decay) (C), u = time_first (C),
   * k, v (T, C). Returns wkv (T, C); advances `state`.
   */
  wkv4(T: number, C: number, w: Float32Array, u: Float32Array, k: Float32Array, v: Float32Array, state: Wkv4State): Float32Array;

  /**
   * RWKV-5/6 WKV per head, S[h][j=key][i=value]:
   *   out[i] = Σ_j r[j] (u[j] k[j] v[i] + S[j,i]);   S[j,i] <- k[j] v[i] + decay[j] S[j,i]
   * r, k, v (T, C); u (C); decay is multiplicative, (C) for v5 (constant) or (T, C) for v6 (per token).
   * Returns out (T, C); advances S (H, N, N).
   */
  wkv5(T: number, H: number, N: number, r: Float32Array, k: Float32Array, v: Float32Array,
    decay: Float32Array, u: Float32Array, S: Float32Array): Float32Array;

  /**
   * RWKV-7 WKV per head, S[h][i=value][j=key]:
   *   sa = S a;  S <- S diag(decay) + sa bᵀ + v kᵀ;  y = S r
   * All inputs (T, C); returns y (T, C); advances S (H, N, N).
   */
  wkv7(T: number, H: number, N: number, r: Float32Array, decay: Float32Array, k: Float32Array, v: Float32Array,
    a: Float32Array, b: Float32Array, S: Float32Array): Float32Array;
}

// ---- backend-resident tensors -----------------------------------------------------------------

/**
 * A (rows, cols) row-major f32 tensor owned by one backend: a Float32Array for the reference, a
 * region of WebAssembly memory for the wasm backend (a GPU buffer for a GPU backend). Only its
 * backend's kernels read or write it; `TensorKernels.read` copies it out to JavaScript. Arena
 * tensors are reused between calls, and their shape is that of the latest request.
 */
export interface Tensor {
  readonly rows: number;
  readonly cols: number;
  readonly dtype: "f32";
}

/**
 * Per-model scratch for the activations of a forward, reused between tokens. Requests are served
 * in order from slots: after rewind(m), the i-th request after m gets the same slot (and the same
 * Tensor object) as last time, grown only when it asks for more elements than the slot had. So a
 * forward that repeats the same sequence of requests allocates nothing after its first run, and a
 * model's scratch is the largest a single layer needs, not the sum over layers (each layer's
 * temporaries are rewound). Freed with the arena (no per-token finalizers; see `dispose`).
 */
export interface Arena {
  /** A (rows, cols) tensor, contents undefined. */
  take(rows: number, cols: number): Tensor;
  /** The current position, to rewind to. */
  mark(): number;
  /** Makes every slot taken after `mark` available again, in the same order. */
  rewind(mark: number): void;
  /** Backing allocations made so far: constant once a forward's shapes have all been seen. */
  readonly allocations: number;
  /** Frees the backing memory now (later use is an error); otherwise it goes with the arena object. */
  dispose(): void;
}

/**
 * The kernels the models are written against, over backend-resident tensors. The plain
 * TypeScript implementation (reference.ts) is the specification; every backend implements all of
 * them and passes the conformance suite (test/backend-conformance.test.ts) against it.
 * Outputs are the first argument(s) and are written, never allocated. Element-wise formulas are
 * evaluated in f64 and rounded to f32 once, as the JavaScript reference does, so a backend that
 * does the same matches it bit for bit.
 *
 * Per-sequence kernels (shift, the WKV scans) take `row0, T`: rows row0 … row0+T-1 of their
 * (R, ·) inputs are one sequence, whose recurrent state is the given state tensor(s).
 */
export interface TensorKernels {
  /** A new arena for one model's activations. */
  arena(): Arena;
  /**
   * A constant (rows, cols) tensor with `data`'s values (a model's parameter vectors, norms'
   * weights), copied once into backend memory and freed with the returned object.
   */
  constant(data: Float32Array, rows?: number): Tensor;
  /**
   * A recurrent state array (State.layers[i][name]) as a tensor kernels update in place. When the
   * backend can keep `a` itself as its memory (the reference; the wasm backend for the arrays
   * residentArray made) no copy is made and the tensor is the same object each call; otherwise the
   * values are copied into an arena slot and `unbindState` must copy them back after the forward.
   */
  bindState(a: Float32Array, arena: Arena): Tensor;
  /** Copies a bound state's values back into `a` where bindState had to copy them in. */
  unbindState(a: Float32Array, t: Tensor): void;
  /** t[dst + i] = src[from + i] for i < n (element offsets): inputs from JavaScript. */
  write(t: Tensor, dst: number, src: Float32Array, from: number, n: number): void;
  /**
   * The first `rows` rows of t (default all) copied out to JavaScript: into `out` at element `at`
   * when given, else into a new Float32Array. Returns the array written.
   */
  read(t: Tensor, rows?: number, out?: Float32Array, at?: number): Float32Array;
  /**
   * read() for backends that cannot answer at once (a GPU): resolves with the values t has at this
   * point of the sequence of kernel calls, whatever runs after it. What the model's forward uses;
   * the CPU backends read at once and resolve immediately. A backend whose read() throws implements
   * only this one.
   */
  readAsync(t: Tensor, rows?: number, out?: Float32Array, at?: number): Promise<Float32Array>;
  /**
   * Present where bound states keep their values in the backend's memory rather than in the arrays
   * (a GPU): the model hands it to each State it advanced (State.sync, State.clone use it).
   */
  readonly stateDevice?: StateDevice;
  /** dst rows [d0, d0+n) = src rows [s0, s0+n) (same cols). */
  copyRows(dst: Tensor, d0: number, src: Tensor, s0: number, n: number): void;
  /** dst (R, n) = columns [c0, c0+n) of src (R, W). */
  columns(dst: Tensor, src: Tensor, c0: number): void;

  /** y (R, O) = x (R, I) Wᵀ. */
  matmul(y: Tensor, x: Tensor, W: Matrix): void;
  /** In place, x <- f(scale · x) (the Activation formulas; scale default 1). */
  activate(f: Activation, x: Tensor, scale?: number): void;
  /** y (R, C) = layer norm of each row of x, then · weight + bias (both (1, C)); biased variance. */
  layerNorm(y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, eps: number): void;
  /** y (R, H·N) = layer norm of each head's N values, then per-channel · weight + bias. */
  groupNorm(y: Tensor, x: Tensor, H: number, weight: Tensor, bias: Tensor, eps: number): void;

  /** x += d (same shape). */
  add(x: Tensor, d: Tensor): void;
  /** x ⊙= d (same shape). */
  mul(x: Tensor, d: Tensor): void;
  /** x[r] += bias for every row (bias (1, C)). */
  addRow(x: Tensor, bias: Tensor): void;
  /** y = a - b (same shape). */
  sub(y: Tensor, a: Tensor, b: Tensor): void;

  /**
   * Token shift of one sequence (rows row0 … row0+T-1): sx[row0] = prev, sx[row0+t] = xx[row0+t-1],
   * then prev = xx[row0+T-1]. xx, sx (R, C); prev (1, C) the carried state.
   */
  shift(sx: Tensor, xx: Tensor, prev: Tensor, row0: number, T: number): void;
  /** v6/v7 interpolation for each pair: outs[f] = xx + (sx - xx) ⊙ ms[f] (ms (1, C)). */
  lerp(outs: readonly Tensor[], xx: Tensor, sx: Tensor, ms: readonly Tensor[]): void;
  /** v4/v5 interpolation for each pair: outs[f] = xx ⊙ ms[f] + sx ⊙ (1 - ms[f]). */
  mix(outs: readonly Tensor[], xx: Tensor, sx: Tensor, ms: readonly Tensor[]): void;
  /** v6 data-dependent interpolation: y = xx + d ⊙ (m + dyn) (m (1, C); dyn (R, C), or m alone when null). */
  lerpBy(y: Tensor, xx: Tensor, d: Tensor, m: Tensor, dyn: Tensor | null): void;

  /**
   * RWKV-7 per head of N (in place on k and v; writes a and b of the WKV): with kk = normalize(k ⊙ k_k),
   *   a_out = -kk;  b_out = kk ⊙ iclr;  k <- k ⊙ (1 + (iclr - 1) ⊙ k_a);
   *   v <- v + (vFirst - v) ⊙ vGate   (when vGate is not null).
   * k_k, k_a (1, C); the rest (R, C).
   */
  v7Keys(aOut: Tensor, bOut: Tensor, k: Tensor, v: Tensor, iclr: Tensor, kK: Tensor, kA: Tensor,
    vGate: Tensor | null, vFirst: Tensor | null, N: number): void;
  /** RWKV-7 per head of N: out <- (out + (Σ_j r_j k_j rK_j) v) ⊙ g; rK (1, C). */
  v7Bonus(out: Tensor, r: Tensor, k: Tensor, v: Tensor, g: Tensor, rK: Tensor, N: number): void;

  /**
   * DeepEmbed's per-token matrix (RWKV-7a): y[r] = x[r] M_r with M_r the row m[r] read as (I, J):
   *   y[r][j] = Σ_i x[r][i] m[r][i·J + j].   y (R, J), x (R, I), m (R, I·J).
   */
  rowMatVec(y: Tensor, x: Tensor, m: Tensor): void;
  /**
   * Causal softmax attention with a tanh soft-cap (RWKV-7b DeepEmbedAttention, the RWKV-8 hybrid),
   * for n queries at positions pos0 … pos0+n-1 of a context of k.rows keys:
   *   s_j = cap · tanh(scale · q·k_j) for j ≤ pos0 + t;  y[t] = Σ_j softmax(s)_j v_j.
   * y (n, Cv), q (n, D), k (Tk, D), v (Tk, Cv).
   */
  softcapAttention(y: Tensor, q: Tensor, k: Tensor, v: Tensor, cap: number, scale: number, pos0: number): void;

  /** Backend.wkv4 over rows row0 … row0+T-1 of k, v and y; w, u (1, C); aa, bb, pp (1, C) state. */
  wkv4(y: Tensor, w: Tensor, u: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor, row0: number, T: number): void;
  /** Backend.wkv5 over rows row0 …; decay (1, C) constant or (R, C) per token; S (1, H·N·N). */
  wkv5(y: Tensor, r: Tensor, k: Tensor, v: Tensor, decay: Tensor, u: Tensor, S: Tensor, H: number, row0: number, T: number): void;
  /** Backend.wkv7 over rows row0 …; S (1, H·N·N). */
  wkv7(y: Tensor, r: Tensor, decay: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, S: Tensor, H: number, row0: number, T: number): void;
}

// ---- the one table: its ops --------------------------------------------------------------------

/** The computing ops of the inference half (TensorKernels less its memory methods). */
export type InferenceOp = Exclude<keyof TensorKernels, "arena" | "constant" | "bindState" | "unbindState" | "write" | "read" | "readAsync" | "stateDevice">;

/**
 * The ops of the training half, forwards with their backwards (TrainOps), the matrix product
 * (whose backward is two more products, train-kernels.ts linearBackward) and the optimizer step.
 */
export type TrainingOp = keyof TrainOps | "gemm" | "wkv4Forward" | "wkv4Backward" | "wkv5Forward" | "wkv5Backward" |
  "wkv7Forward" | "wkv7Backward" | "adamwUpdate";

export type KernelOp = InferenceOp | TrainingOp;
/** A matmul's weight type, or a tensor's storage type (inference tensors are f32). */
export type KernelDType = WeightType | TrainDType;

/**
 * Every inference op (the compiler checks this list against TensorKernels), and what it is
 * for, so tests and tools can iterate the table.
 */
const INFERENCE: Readonly<Record<InferenceOp, string>> = {
  copyRows: "rows of one tensor into another", columns: "a column slice", matmul: "y = x Wᵀ, W in any WeightType",
  activate: "x <- f(scale·x)", layerNorm: "layer norm of rows", groupNorm: "layer norm per head",
  add: "x += d", mul: "x ⊙= d", addRow: "x[r] += bias", sub: "y = a - b", shift: "token shift with carried state",
  lerp: "v6/v7 interpolation", mix: "v4/v5 interpolation", lerpBy: "v6 data-dependent interpolation",
  v7Keys: "RWKV-7 key normalisation and in-context learning rate", v7Bonus: "RWKV-7 bonus and gate",
  rowMatVec: "DeepEmbed per-token matrix", softcapAttention: "soft-capped causal attention",
  wkv4: "RWKV-4 WKV scan", wkv5: "RWKV-5/6 WKV scan", wkv7: "RWKV-7 WKV scan",
};

/**
 * Every training op with its backward (null: the op is its own kind of update), the compiler
 * checking the list against TrainOps. A forward and its backward take the same leading arguments.
 */
const TRAINING: Readonly<Record<TrainingOp, TrainingOp | null>> = {
  gemm: "gemm", embeddingForward: "embeddingBackward", embeddingBackward: null, tokenShiftForward: "tokenShiftBackward",
  tokenShiftBackward: null, lerpForward: "lerpBackward", lerpBackward: null, lerpDynForward: "lerpDynBackward",
  lerpDynBackward: null, residualMixForward: "residualMixBackward", residualMixBackward: null, addForward: "addBackward",
  addBackward: null, mulForward: "mulBackward", mulBackward: null, subForward: "subBackward", subBackward: null,
  scaleForward: "scaleBackward", scaleBackward: null, sliceColsForward: "sliceColsBackward", sliceColsBackward: null,
  activationForward: "activationBackward", activationBackward: null, groupNormForward: "groupNormBackward",
  groupNormBackward: null, l2NormalizeForward: "l2NormalizeBackward", l2NormalizeBackward: null,
  keyUpdateForward: "keyUpdateBackward", keyUpdateBackward: null, bonusForward: "bonusBackward", bonusBackward: null,
  crossEntropyForward: "crossEntropyBackward", crossEntropyBackward: null, wkv4Forward: "wkv4Backward", wkv4Backward: null,
  wkv5Forward: "wkv5Backward", wkv5Backward: null, wkv7Forward: "wkv7Backward", wkv7Backward: null, adamwUpdate: null,
};

export const INFERENCE_OPS: readonly InferenceOp[] = Object.keys(INFERENCE) as InferenceOp[];
export const TRAINING_OPS: readonly TrainingOp[] = Object.keys(TRAINING) as TrainingOp[];

/** The backward of a training op (gemm's is gemm), or null for a backward or an update. */
export function backwardOf(op: TrainingOp): TrainingOp | null {
  return TRAINING[op];
}

export function isTrainingOp(op: KernelOp): op is TrainingOp {
  return op in TRAINING;
}
