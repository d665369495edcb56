/**
 * The small set of kernels the models are written against. The plain TypeScript implementation
 * (reference.ts) is the specification; faster backends (WebAssembly SIMD, WebGPU) implement the
 * same interface and must pass the shared conformance tests against it.
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
 * same values, none of them an f16 subnormal, which x86 multiplies slowly); w = f16(bits)·2^-10.
 */
export type WeightType = "f32" | "f16" | "bf16" | "q8_0" | "q5_0" | "q5_1" | "q4_0" | "q4_1" | "i8" | "f16s";

export const BLOCK_TYPES: ReadonlySet<WeightType> = new Set(["q8_0", "q5_0", "q5_1", "q4_0", "q4_1"]);

/** A weight matrix applied as y = W x, stored (out, in) row-major like torch's nn.Linear. */
export interface Matrix {
  readonly rows: number; // O
  readonly cols: number; // I
  readonly type: WeightType;
  /**
   * f32: Float32Array (O·I); f16/bf16: Uint16Array (O·I) of raw bits; block types: Uint8Array of O
   * rows of blocks; i8: Uint8Array of O·I int8 then O f32 row scales. May be a view into a backend's
   * own memory once adopted.
   */
  readonly data: Float32Array | Uint16Array | Uint8Array;
  /** Where a backend keeps its own copy (e.g. an offset in WebAssembly memory); set by adopt(). */
  readonly handle?: number;
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
   * Takes a weight matrix at load time and returns the form to pass to matmul: the reference
   * keeps it as is; a WebAssembly backend copies (or packs) it into its own memory once.
   */
  adopt(m: Matrix): Matrix;

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
