import { type Backend, BLOCK_TYPES, type Matrix, type WeightType } from "../backend/backend.js";
import { quantizeInt8 } from "../backend/int8.js";
import { matrixBytes, matrixOver } from "../backend/weight-rows.js";
import { referenceBackend } from "../backend/reference.js";
import { FormatError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, numel, transposeLast2 } from "../tensor.js";

/**
 * Typed access to a checkpoint's tensors for model construction: every lookup states the shape it
 * expects, so a wrong or missing tensor is reported by name instead of producing garbage.
 */
export interface WeightOptions {
  /** Kernels that will use the matrices (they may copy them into their own memory). */
  readonly backend?: Backend;
  /**
   * "compact" (default): matrices keep the file's f16 / bf16 / block-quantized type in memory;
   * "f32": every matrix is upcast at load (more memory, faster on the plain reference kernels);
   * "int8": f32/f16/bf16 Linear weights and the v6/v7 LoRA factors are quantized at load to per-row
   * int8 ("i8", a quarter of f32); block-quantized ones stay as stored.
   */
  readonly matrices?: "compact" | "f32" | "int8";
}

const COMPACT_TYPES: ReadonlySet<string> = new Set<WeightType>(["f16", "bf16", ...BLOCK_TYPES]);
const BLOCK = 32;

export class Weights {
  private readonly backend: Backend;
  private readonly compact: boolean;
  private readonly int8: boolean;
  private readonly used = new Set<string>();
  /** Each Linear weight linear() made, by tensor name: where an unmerged adapter adds its delta. */
  readonly linears = new Map<string, Matrix>();

  constructor(readonly ckpt: Checkpoint, readonly arch: string, options: WeightOptions = {}) {
    this.backend = options.backend ?? referenceBackend;
    this.compact = (options.matrices ?? "compact") !== "f32";
    this.int8 = options.matrices === "int8";
  }

  has(name: string): boolean {
    return this.ckpt.tensors.has(name);
  }

  shape(name: string): readonly number[] {
    return this.entry(name).shape;
  }

  /** A tensor flattened to f32 (e.g. `(1,1,C)` mix vectors, `(H,N)` decays), with its element count checked. */
  vec(name: string, count: number): Float32Array {
    const e = this.entry(name);
    if (numel(e.shape) !== count) {
      throw new FormatError(this.ckpt.source, `tensor ${name} has shape [${e.shape}] but ${this.arch} needs ${count} elements`);
    }
    return e.toFloat32();
  }

  /**
   * A per-head tensor (H, N) flattened: a 2-D shape must be exactly [H, N] (leading/trailing 1s
   * aside), since the head count is read from one such tensor and a transposed copy elsewhere
   * would otherwise pass on its element count alone and compute with the wrong heads.
   */
  heads(name: string, H: number, N: number): Float32Array {
    const s = this.entry(name).shape.filter((d) => d !== 1);
    if (s.length > 1 && (s.length !== 2 || s[0] !== H || s[1] !== N)) {
      throw new FormatError(this.ckpt.source, `tensor ${name} has shape [${this.entry(name).shape}] but ${this.arch} needs [${H}, ${N}] (heads, head size)`);
    }
    return this.vec(name, H * N);
  }

  /**
   * A Linear weight stored (out, in): used as y = W x. Kept in its stored type when it can be.
   * `onHost`, when given, sees the matrix while its weights are in JavaScript memory, before the
   * backend adopts it: the only time CPU code can read a matrix that a backend moves out of the
   * CPU's reach (WebGPU releases its data).
   */
  linear(name: string, out: number, inp: number, onHost?: (m: Matrix) => void): Matrix {
    const m = this.readLinear(name, out, inp, false, onHost);
    this.linears.set(name, m);
    return m;
  }

  /**
   * A Linear weight that only the backend's Float32Array methods read (a load-time product on the
   * CPU, e.g. DeepEmbed's fold), never its tensor kernels: adopted with adoptForHost where the
   * backend has it, so it stays readable there (see Backend.adoptForHost). Not one of `linears`:
   * no forward multiplies by it, so an unmerged adapter could not change it, and the model keeps
   * `linears` (a CPU copy held there would live as long as the model).
   */
  hostLinear(name: string, out: number, inp: number): Matrix {
    return this.readLinear(name, out, inp, true);
  }

  private readLinear(name: string, out: number, inp: number, forHost: boolean, onHost?: (m: Matrix) => void): Matrix {
    this.expectShape(name, [out, inp]);
    const e = this.entry(name);
    const blocks = BLOCK_TYPES.has(e.dtype as WeightType);
    const hostAdopt = forHost ? this.backend.adoptForHost?.bind(this.backend) : undefined;
    const adopt = (m: Matrix): Matrix => {
      const named: Matrix = { ...m, name };
      onHost?.(named);
      return hostAdopt ? hostAdopt(named) : this.backend.adopt(named);
    };
    if (this.int8 && !blocks) return adopt(quantizeInt8(e.toFloat32(), out, inp));
    const keep = e.dtype === "f32" || (this.compact && COMPACT_TYPES.has(e.dtype) && (!blocks || inp % BLOCK === 0));
    const rawInto = e.rawInto, adoptFrom = this.backend.adoptFrom?.bind(this.backend);
    if (keep && rawInto && adoptFrom && !hostAdopt) {
      // From the file straight into the backend's memory: no copy of the matrix in JavaScript.
      const type = e.dtype as WeightType;
      return adoptFrom(out, inp, type, matrixBytes(type, out, inp), (dest) => {
        rawInto(dest);
        onHost?.(matrixOver(type, out, inp, dest, name));
      });
    }
    if (this.compact && e.raw && COMPACT_TYPES.has(e.dtype) && (!blocks || inp % BLOCK === 0)) {
      // Typed views need aligned, private storage: matrixOver copies once where needed (the source buffer is per-read anyway).
      return adopt(matrixOver(e.dtype as WeightType, out, inp, e.raw(), name));
    }
    return adopt({ rows: out, cols: inp, type: "f32", data: e.toFloat32() });
  }

  /** A (rows, cols) tensor as plain f32, e.g. the embedding, which is layer-normed at load. */
  dense(name: string, rows: number, cols: number): Float32Array {
    this.expectShape(name, [rows, cols]);
    const e = this.entry(name);
    if (e.dtype === "f32" && e.rawInto) {
      // Read into the result itself: an f32 embedding is the largest tensor, and a read buffer
      // plus its copy would briefly hold it twice. (Little-endian bytes, as every wasm/JS host here.)
      const out = new Float32Array(rows * cols);
      e.rawInto(new Uint8Array(out.buffer));
      return out;
    }
    if ((e.dtype === "f16" || e.dtype === "bf16") && e.rawInto) {
      // The 16-bit values read into the upper half of the result, then widened front to back in
      // place: element n's 4 bytes only cover 16-bit elements at or before n, already read.
      const n = rows * cols;
      const out = new Float32Array(n);
      const half = new Uint16Array(out.buffer, 2 * n, n);
      e.rawInto(new Uint8Array(half.buffer, half.byteOffset, 2 * n));
      const widen = e.dtype === "f16" ? f16ToF32 : (h: number) => bf16ToF32(h);
      for (let i = 0; i < n; i++) out[i] = widen(half[i]);
      return out;
    }
    return e.toFloat32();
  }

  /**
   * A (rows, cols) tensor kept in the file's compact type (f16, bf16, block-quantized), for tables
   * of which a forward reads a few rows (the embedding); null when the file stores it otherwise or
   * matrices are upcast to f32.
   */
  storedTable(name: string, rows: number, cols: number): Matrix | null {
    this.expectShape(name, [rows, cols]);
    const e = this.entry(name);
    const blocks = BLOCK_TYPES.has(e.dtype as WeightType);
    if (!this.compact || !e.raw || !COMPACT_TYPES.has(e.dtype) || (blocks && cols % BLOCK !== 0)) return null;
    return matrixOver(e.dtype as WeightType, rows, cols, e.raw());
  }

  /**
   * A per-token table (rows, cols) of which a forward reads only its tokens' rows (DeepEmbed's
   * V x 1024 per layer): kept on the JavaScript side, never adopted by the kernels, in a compact
   * type (the file's f16/bf16; f16 for block-quantized files; i8 with matrices "int8"; f32 for f32
   * files or matrices "f32"). `add` (rows, cols), when given, is added in f32 first: a load-time fold.
   */
  table(name: string, rows: number, cols: number, add?: Float32Array): Matrix {
    this.expectShape(name, [rows, cols]);
    const e = this.entry(name);
    const t = e.toFloat32(); // (rows, cols)
    if (add) for (let n = 0; n < t.length; n++) t[n] += add[n];
    if (this.int8) return quantizeInt8(t, rows, cols);
    const type = !this.compact || e.dtype === "f32" ? "f32" : e.dtype === "bf16" ? "bf16" : "f16";
    if (type === "f32") return { rows, cols, type, data: t };
    const bits = new Uint16Array(t.length);
    const enc = type === "f16" ? f32ToF16 : f32ToBf16;
    for (let n = 0; n < t.length; n++) bits[n] = enc(t[n]);
    return { rows, cols, type, data: bits };
  }

  /**
   * A matrix stored (in, out) and used as x @ M (v6/v7 LoRA factors): transposed here once so the
   * kernels see a single (out, in) convention.
   */
  projection(name: string, inp: number, out: number): Matrix {
    this.expectShape(name, [inp, out]);
    const e = this.entry(name);
    const t = transpose(e.toFloat32(), inp, out);
    if (this.compact && !this.int8 && (e.dtype === "f16" || e.dtype === "bf16")) {
      // Kept in the file's 16-bit type (its values convert back exactly): half the memory and
      // half the bytes a token streams of f32 (a G1 2.9B's LoRA factors: 189 MB, not 377).
      const enc = e.dtype === "f16" ? f32ToF16 : f32ToBf16;
      const bits = new Uint16Array(t.length);
      for (let n = 0; n < t.length; n++) bits[n] = enc(t[n]);
      return this.backend.adopt({ rows: out, cols: inp, type: e.dtype, data: bits, name });
    }
    const m: Matrix = this.int8 ? quantizeInt8(t, out, inp) : { rows: out, cols: inp, type: "f32", data: t };
    return this.backend.adopt({ ...m, name });
  }

  /** A (B, I, O) stack of [in, out] matrices (v6 time_maa_w2), each used as x @ M. */
  projections(name: string, B: number, inp: number, out: number): Matrix[] {
    this.expectShape(name, [B, inp, out]);
    const all = this.entry(name).toFloat32(); // (B, I, O)
    return Array.from({ length: B }, (_, b) => {
      const t = transpose(all.subarray(b * inp * out, (b + 1) * inp * out), inp, out);
      const m: Matrix = this.int8 ? quantizeInt8(t, out, inp) : { rows: out, cols: inp, type: "f32", data: t };
      return this.backend.adopt({ ...m, name: `${name}[${b}]` });
    });
  }

  private expectShape(name: string, want: number[]): void {
    const got = this.entry(name).shape;
    if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
      throw new FormatError(this.ckpt.source, `tensor ${name} has shape [${got}] but ${this.arch} needs [${want}]`);
    }
  }

  /** Tensors of the checkpoint that the model construction never read (in checkpoint order). */
  unread(): string[] {
    return [...this.ckpt.tensors.keys()].filter((n) => !this.used.has(n));
  }

  private entry(name: string) {
    const e = this.ckpt.tensors.get(name);
    if (!e) throw new FormatError(this.ckpt.source, `missing tensor ${name} (needed by ${this.arch})`);
    this.used.add(name);
    return e;
  }
}

/** (R, K) row-major -> (K, R) row-major. */
export function transpose(m: Float32Array, R: number, K: number): Float32Array {
  return transposeLast2(m, 1, R, K);
}
