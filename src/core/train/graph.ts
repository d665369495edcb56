import type { Matrix } from "../backend/backend.js";
import type { Buf, TrainDType } from "../backend/buffers.js";
import { linearBackward, linearForward, projectBackward, projectForward, type TrainKernels } from "../backend/train-kernels.js";
import type { Activation } from "../backend/train-ops.js";
import { decodeWeightRow } from "../backend/weight-rows.js";

/*
 * A forward pass that remembers how to run itself backwards. Every method runs one op of its
 * kernels (their `ops` table, products, WKV scans) on Vars and, when recording, pushes the matching
 * backward call onto a tape; backward() replays the tape in reverse. There is no automatic
 * differentiation: each op's gradient is the hand-written one beside its forward.
 *
 * A Var is a (rows, cols) row-major tensor. Parameters wrap the parameter's storage and its
 * persistent gradient buffer, so backward accumulates straight into the parameter gradients.
 * Every tensor (outputs and gradients) comes from the kernels' `alloc`, so a fast kernel set can
 * keep them in its own memory; they live until the caller releases the step (trainer.ts).
 */

export class Var {
  /** dL/d(this), created (zeros) by the first consumer that has a gradient for it. */
  grad: Buf | null;

  constructor(readonly data: Buf, readonly rows: number, readonly cols: number, readonly requiresGrad: boolean, grad: Buf | null = null,
    private readonly kernels: TrainKernels | null = null) {
    this.grad = grad;
  }

  /** The gradient buffer (allocated on first use) or null when no gradient flows to this Var. */
  g(): Buf | null {
    if (!this.requiresGrad) return null;
    if (!this.grad) {
      const dtype = this.data instanceof Float32Array ? "f32" : "f64";
      this.grad = this.kernels ? this.kernels.alloc(dtype, this.data.length) : dtype === "f32" ? new Float32Array(this.data.length) : new Float64Array(this.data.length);
    }
    return this.grad;
  }
}

/** Decodes a compact frozen matrix to f32 storage the kernels read (model.ts: one reused scratch, one matrix at a time). */
export interface MatrixDecoder {
  /** How many rows of m one decode holds: all of them, or fewer for a matrix larger than the scratch. */
  chunkRows(m: Matrix): number;
  /** Rows [r0, r0 + n) of m as f32 (n·cols, row-major; default all rows), valid until the next decode. */
  decode(m: Matrix, r0?: number, n?: number): Buf;
}

const NO_DATA = new Float32Array(0);

/**
 * A frozen matrix of the base kept in its stored compact type (QLoRA): only linear, project and
 * embedding read it, decoding it (whole, into the decoder's scratch) when they run and again in
 * their backward, which computes the input's gradient with the same f32 product as an f32 base.
 */
export class CompactVar extends Var {
  constructor(readonly matrix: Matrix, readonly decoder: MatrixDecoder) {
    super(NO_DATA, matrix.rows, matrix.cols, false);
  }
}

/**
 * A Linear weight with a LoRA update, W + s·B A, which linear() applies in factored form:
 * x Wᵀ + s·(x Aᵀ) Bᵀ, so the base W (frozen, possibly compact) is never added to nor differentiated.
 */
export class LoraVar extends Var {
  /** A (r, in), B (out, r) as RWKV-PEFT stores them. */
  constructor(readonly base: Var, readonly A: Var, readonly B: Var, readonly scale: number) {
    super(NO_DATA, base.rows, base.cols, false);
  }
}

export class Graph {
  private readonly tape: Array<() => void> = [];

  /** recording = false: inference only (validation), no tape, no gradient buffers. */
  constructor(readonly dtype: TrainDType, readonly kernels: TrainKernels, readonly recording: boolean) {}

  /** Wraps existing storage (a parameter) with its gradient buffer. */
  leaf(data: Buf, rows: number, cols: number, grad: Buf | null): Var {
    return new Var(data, rows, cols, this.recording && grad !== null, grad);
  }

  /** Runs every recorded backward call, last first, and empties the tape. */
  backward(): void {
    for (let i = this.tape.length - 1; i >= 0; i--) this.tape[i]();
    this.tape.length = 0;
  }

  /** A new output Var; every op writes all of its output, so its memory need not be zeroed. */
  private out(rows: number, cols: number, ...inputs: Var[]): Var {
    for (const v of inputs) if (v instanceof CompactVar || v instanceof LoraVar) throw new Error(`a ${v.rows}x${v.cols} weight held as ${v.constructor.name} reached an op that reads plain values`);
    return new Var(this.kernels.alloc(this.dtype, rows * cols, true), rows, cols, this.recording && inputs.some((v) => v.requiresGrad), null, this.kernels);
  }

  /** Records `f(gy)` to run in backward if y ends up with a gradient. */
  private record(y: Var, f: (gy: Buf) => void): void {
    if (!y.requiresGrad) return;
    this.tape.push(() => { if (y.grad) f(y.grad); });
  }

  embedding(E: Var, tokens: Int32Array): Var {
    const C = E.cols;
    if (E instanceof CompactVar) { // frozen: the rows of the batch's tokens, decoded; no gradient
      const y = this.out(tokens.length, C); // (R, C)
      const row = new Float32Array(C);
      for (let t = 0; t < tokens.length; t++) y.data.set(decodeWeightRow(E.matrix, tokens[t], row), t * C);
      return y;
    }
    const y = this.out(tokens.length, C, E); // (R, C)
    this.kernels.ops.embeddingForward(E.data, C, tokens, y.data);
    this.record(y, (gy) => this.kernels.ops.embeddingBackward(E.data, C, tokens, gy, E.g()!));
    return y;
  }

  /** LayerNorm over each row (eps as given). w, b (C). */
  layerNorm(x: Var, w: Var, b: Var, eps: number): Var {
    return this.groupNorm(x, 1, x.cols, w, b, eps);
  }

  /** LayerNorm over each head's N values, per-channel affine (ln_x). */
  groupNorm(x: Var, H: number, N: number, w: Var, b: Var, eps: number): Var {
    const R = x.rows;
    const y = this.out(R, x.cols, x, w, b); // (R, H·N)
    const mean = new Float64Array(R * H), rstd = new Float64Array(R * H);
    this.kernels.ops.groupNormForward(x.data, R, H, N, w.data, b.data, eps, y.data, mean, rstd);
    this.record(y, (gy) => this.kernels.ops.groupNormBackward(x.data, R, H, N, w.data, b.data, eps, mean, rstd, gy, x.g(), w.g(), b.g()));
    return y;
  }

  tokenShift(x: Var, B: number, T: number): Var {
    const C = x.cols;
    const y = this.out(x.rows, C, x); // (B·T, C)
    this.kernels.ops.tokenShiftForward(x.data, B, T, C, y.data);
    this.record(y, (gy) => this.kernels.ops.tokenShiftBackward(x.data, B, T, C, gy, x.g()!));
    return y;
  }

  /** v4/v5: x·m + sx·(1-m) = sx + (x - sx)·m, the lerp from sx to x. */
  mix(x: Var, sx: Var, m: Var): Var {
    return this.lerp(sx, x, m);
  }

  /** v6/v7: x + (sx - x)·m. */
  lerp(x: Var, sx: Var, m: Var): Var {
    const C = x.cols;
    const y = this.out(x.rows, C, x, sx, m); // (R, C)
    this.kernels.ops.lerpForward(x.data, sx.data, m.data, C, y.data);
    this.record(y, (gy) => this.kernels.ops.lerpBackward(x.data, sx.data, m.data, C, gy, x.g(), sx.g(), m.g()));
    return y;
  }

  /** v6: x + d·(m + dm). */
  lerpDyn(x: Var, d: Var, m: Var, dm: Var): Var {
    const C = x.cols;
    const y = this.out(x.rows, C, x, d, m, dm); // (R, C)
    this.kernels.ops.lerpDynForward(x.data, d.data, m.data, dm.data, C, y.data);
    this.record(y, (gy) => this.kernels.ops.lerpDynBackward(x.data, d.data, m.data, dm.data, C, gy, x.g(), d.g(), m.g(), dm.g()));
    return y;
  }

  /** v7 value residual: v + (vf - v)·gate. */
  residualMix(v: Var, vf: Var, gate: Var): Var {
    const y = this.out(v.rows, v.cols, v, vf, gate); // (R, C)
    this.kernels.ops.residualMixForward(v.data, vf.data, gate.data, y.data);
    this.record(y, (gy) => this.kernels.ops.residualMixBackward(v.data, vf.data, gate.data, gy, v.g(), vf.g(), gate.g()));
    return y;
  }

  /** y = x Wᵀ, W (O, I) (nn.Linear). */
  linear(x: Var, W: Var): Var {
    if (W instanceof LoraVar) return this.add(this.linear(x, W.base), this.scale(this.linear(this.linear(x, W.A), W.B), W.scale)); // (R, O)
    const R = x.rows, I = x.cols, O = W.rows;
    if (W instanceof CompactVar) return this.linearCompact(x, W);
    const y = this.out(R, O, x, W); // (R, O)
    linearForward(this.kernels, x.data, R, I, W.data, O, y.data);
    this.record(y, (gy) => linearBackward(this.kernels, x.data, R, I, W.data, O, gy, x.g(), W.g()));
    return y;
  }

  /**
   * y = x Wᵀ for a compact frozen W: decoded whole into the scratch, or, when it is larger than
   * the scratch, in chunks of Oc rows: y[:, chunk] = x W_cᵀ, and in the backward gx += gy[:, chunk] W_c.
   */
  private linearCompact(x: Var, W: CompactVar): Var {
    const R = x.rows, I = x.cols, O = W.rows, K = this.kernels, m = W.matrix, D = W.decoder;
    const y = this.out(R, O, x); // (R, O)
    const Oc = D.chunkRows(m);
    if (Oc >= O) {
      linearForward(K, x.data, R, I, D.decode(m), O, y.data);
      this.record(y, (gy) => linearBackward(K, x.data, R, I, D.decode(m), O, gy, x.g(), null));
      return y;
    }
    const each = (f: (o0: number, n: number, part: Buf) => void) => this.chunks(R, O, Oc, f);
    each((o0, n, part) => {
      linearForward(K, x.data, R, I, D.decode(m, o0, n), n, part); // (R, n)
      for (let r = 0; r < R; r++) y.data.set(part.subarray(r * n, (r + 1) * n), r * O + o0);
    });
    this.record(y, (gy) => {
      const gx = x.g();
      if (!gx) return;
      each((o0, n, part) => {
        for (let r = 0; r < R; r++) part.set(gy.subarray(r * O + o0, r * O + o0 + n), r * n);
        linearBackward(K, x.data, R, I, D.decode(m, o0, n), n, part, gx, null); // gx += part (R, n) · W_c (n, I)
      });
    });
    return y;
  }

  /** y = x M for a compact frozen M (I, O): whole, or by chunks of its rows: y = Σ x[:, chunk] M_c, gx[:, chunk] = gy M_cᵀ. */
  private projectCompact(x: Var, M: CompactVar): Var {
    const R = x.rows, I = x.cols, O = M.cols, K = this.kernels, m = M.matrix, D = M.decoder;
    const y = this.out(R, O, x); // (R, O)
    const Ic = D.chunkRows(m);
    if (Ic >= I) {
      projectForward(K, x.data, R, I, D.decode(m), O, y.data);
      this.record(y, (gy) => projectBackward(K, x.data, R, I, D.decode(m), O, gy, x.g(), null));
      return y;
    }
    this.chunks(R, I, Ic, (i0, n, part) => {
      for (let r = 0; r < R; r++) part.set(x.data.subarray(r * I + i0, r * I + i0 + n), r * n);
      K.gemm(false, false, R, O, n, part, D.decode(m, i0, n), y.data, i0 > 0); // y (+)= x_c (R, n) · M_c (n, O)
    });
    this.record(y, (gy) => {
      const gx = x.g();
      if (!gx) return;
      this.chunks(R, I, Ic, (i0, n, part) => {
        K.gemm(false, true, R, n, O, gy, D.decode(m, i0, n), part, false); // gy (R, O) · M_cᵀ
        for (let r = 0; r < R; r++) for (let j = 0; j < n; j++) gx[r * I + i0 + j] += part[r * n + j];
      });
    });
    return y;
  }

  /** f(c0, n, part) for the chunks [c0, c0 + n) of W columns by Wc, part an (R, Wc) temporary freed when they are done. */
  private chunks(R: number, W: number, Wc: number, f: (c0: number, n: number, part: Buf) => void): void {
    const K = this.kernels, mark = K.mark();
    try {
      const part = K.alloc(this.dtype, R * Wc, true); // (R, Wc)
      for (let c0 = 0; c0 < W; c0 += Wc) f(c0, Math.min(Wc, W - c0), part);
    } finally {
      K.release(mark);
    }
  }

  /** y = x M, M (I, O) (LoRA factors). */
  project(x: Var, M: Var): Var {
    const R = x.rows, I = x.cols, O = M.cols;
    if (M instanceof CompactVar) return this.projectCompact(x, M);
    const y = this.out(R, O, x, M); // (R, O)
    projectForward(this.kernels, x.data, R, I, M.data, O, y.data);
    this.record(y, (gy) => projectBackward(this.kernels, x.data, R, I, M.data, O, gy, x.g(), M.g()));
    return y;
  }

  act(f: Activation, x: Var): Var {
    const y = this.out(x.rows, x.cols, x);
    this.kernels.ops.activationForward(f, x.data, y.data);
    this.record(y, (gy) => this.kernels.ops.activationBackward(f, x.data, y.data, gy, x.g()!));
    return y;
  }

  /** a + b, b (R, C) or a row vector (C). */
  add(a: Var, b: Var): Var {
    const C = a.cols;
    const y = this.out(a.rows, C, a, b);
    this.kernels.ops.addForward(a.data, b.data, C, y.data);
    this.record(y, (gy) => this.kernels.ops.addBackward(a.data, b.data, C, gy, a.g(), b.g()));
    return y;
  }

  /** a · b element-wise, b (R, C) or a row vector (C). */
  mul(a: Var, b: Var): Var {
    const C = a.cols;
    const y = this.out(a.rows, C, a, b);
    this.kernels.ops.mulForward(a.data, b.data, C, y.data);
    this.record(y, (gy) => this.kernels.ops.mulBackward(a.data, b.data, C, gy, a.g(), b.g()));
    return y;
  }

  sub(a: Var, b: Var): Var {
    const y = this.out(a.rows, a.cols, a, b);
    this.kernels.ops.subForward(a.data, b.data, y.data);
    this.record(y, (gy) => this.kernels.ops.subBackward(a.data, b.data, gy, a.g(), b.g()));
    return y;
  }

  scale(a: Var, s: number): Var {
    const y = this.out(a.rows, a.cols, a);
    this.kernels.ops.scaleForward(a.data, s, y.data);
    this.record(y, (gy) => this.kernels.ops.scaleBackward(a.data, s, gy, a.g()!));
    return y;
  }

  /** Unit L2 norm over each head's N values (F.normalize). */
  l2Normalize(x: Var, N: number): Var {
    const groups = x.data.length / N;
    const y = this.out(x.rows, x.cols, x);
    const norm = new Float64Array(groups);
    this.kernels.ops.l2NormalizeForward(x.data, groups, N, y.data, norm);
    this.record(y, (gy) => this.kernels.ops.l2NormalizeBackward(x.data, groups, N, norm, gy, x.g()!));
    return y;
  }

  /** v7: k·(1 + (a-1)·k_a). */
  keyUpdate(k: Var, a: Var, ka: Var): Var {
    const C = k.cols;
    const y = this.out(k.rows, C, k, a, ka);
    this.kernels.ops.keyUpdateForward(k.data, a.data, ka.data, C, y.data);
    this.record(y, (gy) => this.kernels.ops.keyUpdateBackward(k.data, a.data, ka.data, C, gy, k.g(), a.g(), ka.g()));
    return y;
  }

  /** v7: (Σ_j r k r_k) v per head. */
  bonus(r: Var, k: Var, v: Var, rk: Var, H: number, N: number): Var {
    const R = r.rows;
    const y = this.out(R, r.cols, r, k, v, rk);
    this.kernels.ops.bonusForward(r.data, k.data, v.data, rk.data, R, H, N, y.data);
    this.record(y, (gy) => this.kernels.ops.bonusBackward(r.data, k.data, v.data, rk.data, R, H, N, gy, r.g(), k.g(), v.g(), rk.g()));
    return y;
  }

  sliceCols(x: Var, c0: number, n: number): Var {
    const R = x.rows, W = x.cols;
    const y = this.out(R, n, x);
    this.kernels.ops.sliceColsForward(x.data, R, W, c0, n, y.data);
    this.record(y, (gy) => this.kernels.ops.sliceColsBackward(x.data, R, W, c0, n, gy, x.g()!));
    return y;
  }

  wkv4(B: number, T: number, timeDecay: Var, timeFirst: Var, k: Var, v: Var): Var {
    const C = k.cols;
    const y = this.out(k.rows, C, timeDecay, timeFirst, k, v); // (B·T, C)
    const K = this.kernels;
    K.wkv4Forward(B, T, C, timeDecay.data, timeFirst.data, k.data, v.data, y.data);
    this.record(y, (gy) => K.wkv4Backward(B, T, C, timeDecay.data, timeFirst.data, k.data, v.data, y.data, gy, timeDecay.g(), timeFirst.g(), k.g(), v.g()));
    return y;
  }

  /** v5.2 (wraw (C), the time_decay parameter) and v6 (wraw (B·T, C)). */
  wkv5(B: number, T: number, H: number, N: number, r: Var, k: Var, v: Var, wraw: Var, u: Var): Var {
    const y = this.out(r.rows, r.cols, r, k, v, wraw, u); // (B·T, C)
    const K = this.kernels;
    const ckpt = K.wkv5Forward(B, T, H, N, r.data, k.data, v.data, wraw.data, u.data, y.data, y.requiresGrad); // state checkpoints
    this.record(y, (gy) => K.wkv5Backward(B, T, H, N, r.data, k.data, v.data, wraw.data, u.data, ckpt!, gy, r.g(), k.g(), v.g(), wraw.g(), u.g()));
    return y;
  }

  /** s0: a trained initial state (H·N·N, state tuning) every sequence starts from, with its gradient. */
  wkv7(B: number, T: number, H: number, N: number, r: Var, wraw: Var, k: Var, v: Var, a: Var, b: Var, s0?: Var): Var {
    const inputs = s0 ? [r, wraw, k, v, a, b, s0] : [r, wraw, k, v, a, b];
    const y = this.out(r.rows, r.cols, ...inputs); // (B·T, C)
    const K = this.kernels;
    const ckpt = K.wkv7Forward(B, T, H, N, r.data, wraw.data, k.data, v.data, a.data, b.data, y.data, y.requiresGrad, s0?.data); // state checkpoints
    this.record(y, (gy) => K.wkv7Backward(B, T, H, N, r.data, wraw.data, k.data, v.data, a.data, b.data, ckpt!, gy,
      r.g(), wraw.g(), k.g(), v.g(), a.g(), b.g(), s0?.g()));
    return y;
  }

  /**
   * Mean cross entropy of logits (R, V) against targets (IGNORE_TARGET = no loss); seeds the
   * backward with dLoss = 1 (plus L2Wrap when asked). Returns the loss.
   */
  crossEntropy(logits: Var, targets: Int32Array, l2wrap: boolean): number {
    const R = logits.rows, V = logits.cols;
    const lse = new Float64Array(R);
    const loss = this.kernels.ops.crossEntropyForward(logits.data, R, V, targets, lse);
    // Pushed last, so it runs first in backward(): it creates the gradient everything else consumes.
    if (logits.requiresGrad) this.tape.push(() => this.kernels.ops.crossEntropyBackward(logits.data, R, V, targets, lse, 1, l2wrap, logits.g()!));
    return loss;
  }
}
