import { type Backend, BLOCK_TYPES, type Matrix, type WeightType } from "../backend/backend.js";
import { referenceBackend } from "../backend/reference.js";
import { FormatError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { numel, transposeLast2 } from "../tensor.js";

/**
 * Typed access to a checkpoint's tensors for model construction: every lookup states the shape it
 * expects, so a wrong or missing tensor is reported by name instead of producing garbage.
 */
export interface WeightOptions {
  /** Kernels that will use the matrices (they may copy them into their own memory). */
  readonly backend?: Backend;
  /**
   * "compact" (default): matrices keep the file's f16 / bf16 / block-quantized type in memory;
   * "f32": every matrix is upcast at load (more memory, faster on the plain reference kernels).
   */
  readonly matrices?: "compact" | "f32";
}

const COMPACT_TYPES: ReadonlySet<string> = new Set<WeightType>(["f16", "bf16", ...BLOCK_TYPES]);
const BLOCK = 32;

export class Weights {
  private readonly backend: Backend;
  private readonly compact: boolean;

  constructor(readonly ckpt: Checkpoint, readonly arch: string, options: WeightOptions = {}) {
    this.backend = options.backend ?? referenceBackend;
    this.compact = (options.matrices ?? "compact") === "compact";
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

  /** A Linear weight stored (out, in): used as y = W x. Kept in its stored type when it can be. */
  linear(name: string, out: number, inp: number): Matrix {
    this.expectShape(name, [out, inp]);
    const e = this.entry(name);
    const blocks = BLOCK_TYPES.has(e.dtype as WeightType);
    if (this.compact && e.raw && COMPACT_TYPES.has(e.dtype) && (!blocks || inp % BLOCK === 0)) {
      const bytes = e.raw();
      const type = e.dtype as WeightType;
      // Typed views need aligned, private storage: copy once (the source buffer is per-read anyway).
      const own = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
      const data = blocks ? own : new Uint16Array(own.buffer, own.byteOffset, out * inp);
      return this.backend.adopt({ rows: out, cols: inp, type, data });
    }
    return this.backend.adopt({ rows: out, cols: inp, type: "f32", data: e.toFloat32() });
  }

  /** A (rows, cols) tensor as plain f32, e.g. the embedding, which is layer-normed at load. */
  dense(name: string, rows: number, cols: number): Float32Array {
    this.expectShape(name, [rows, cols]);
    return this.entry(name).toFloat32();
  }

  /**
   * A matrix stored (in, out) and used as x @ M (v6/v7 LoRA factors): transposed here once so the
   * kernels see a single (out, in) convention.
   */
  projection(name: string, inp: number, out: number): Matrix {
    this.expectShape(name, [inp, out]);
    const m = this.entry(name).toFloat32();
    return this.backend.adopt({ rows: out, cols: inp, type: "f32", data: transpose(m, inp, out) });
  }

  /** A (B, I, O) stack of [in, out] matrices (v6 time_maa_w2), each used as x @ M. */
  projections(name: string, B: number, inp: number, out: number): Matrix[] {
    this.expectShape(name, [B, inp, out]);
    const all = this.entry(name).toFloat32(); // (B, I, O)
    return Array.from({ length: B }, (_, b) =>
      this.backend.adopt({ rows: out, cols: inp, type: "f32", data: transpose(all.subarray(b * inp * out, (b + 1) * inp * out), inp, out) }));
  }

  private expectShape(name: string, want: number[]): void {
    const got = this.entry(name).shape;
    if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
      throw new FormatError(this.ckpt.source, `tensor ${name} has shape [${got}] but ${this.arch} needs [${want}]`);
    }
  }

  private entry(name: string) {
    const e = this.ckpt.tensors.get(name);
    if (!e) throw new FormatError(this.ckpt.source, `missing tensor ${name} (needed by ${this.arch})`);
    return e;
  }
}

/** (R, K) row-major -> (K, R) row-major. */
export function transpose(m: Float32Array, R: number, K: number): Float32Array {
  return transposeLast2(m, 1, R, K);
}
