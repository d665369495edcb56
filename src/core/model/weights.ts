import type { Matrix } from "../backend/backend.js";
import { FormatError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { numel } from "../tensor.js";

/**
 * Typed access to a checkpoint's tensors for model construction: every lookup states the shape it
 * expects, so a wrong or missing tensor is reported by name instead of producing garbage.
 */
export class Weights {
  constructor(readonly ckpt: Checkpoint, readonly arch: string) {}

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

  /** A Linear weight stored (out, in): used as y = W x. */
  linear(name: string, out: number, inp: number): Matrix {
    this.expectShape(name, [out, inp]);
    return { rows: out, cols: inp, data: this.entry(name).toFloat32() };
  }

  /**
   * A matrix stored (in, out) and used as x @ M (v6/v7 LoRA factors): transposed here once so the
   * kernels see a single (out, in) convention.
   */
  projection(name: string, inp: number, out: number): Matrix {
    this.expectShape(name, [inp, out]);
    const m = this.entry(name).toFloat32();
    return { rows: out, cols: inp, data: transpose(m, inp, out) };
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
  const out = new Float32Array(R * K);
  for (let r = 0; r < R; r++) for (let k = 0; k < K; k++) out[k * R + r] = m[r * K + k];
  return out;
}
