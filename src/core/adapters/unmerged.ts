import type { Arena, Backend, Matrix, Tensor, TensorKernels } from "../backend/backend.js";
import { FormatError, RwkvInputError } from "../errors.js";
import { type Adapter, BONE, DEFAULT_LORA_ALPHA, DISHA, INIT_LORA_A, INIT_LORA_B, LORA_A, LORA_B, TIME_STATE } from "./adapter.js";

/*
 * Adapters kept unmerged, for hot-swapping in a server: one base model in memory and, per adapter,
 * only its low-rank factors. A LoRA (W' = W + s·B A) or PiSSA (W' = W + B A − B₀ A₀) projection is
 * computed as
 *   y = W x + B'(A' x),   A' = [A; A₀] (r', I),  B' = [s·B, −B₀] (O, r')
 * on the rows of the batch whose sequence uses that adapter: the base matmul, then two small ones.
 * PiSSA's two pairs are stacked into one (r' = 2r) and LoRA's scale s = alpha / r is folded into B'
 * at load, so every adapted projection costs exactly two extra matmuls.
 *
 * This is the only adapter-aware code of the forward: the model hands its version blocks a kernel
 * table whose matmul adds the deltas (UnmergedAdapters.backend), and says before each pass which
 * adapter each sequence uses (select). Replaced layer norms (ln1, ln2, ln_out: RWKV-PEFT saves them
 * next to the LoRA factors when it trains them) are the model's own norm vectors (register): the
 * wrapped layerNorm recomputes the rows of an adapter that replaces them with its vectors (a row's
 * norm depends on that row alone, so this equals the merged model exactly). Other full-tensor
 * replacements (emb and ln0, baked into the embedding at load; head; the versions' own vectors
 * such as time_* and ln_x) and DiSHA are refused with UnmergedUnsupportedError, and such adapters
 * are merged at load instead. A trained time_state (state tuning) is no weight at all: the model
 * keeps it as the adapter's starting state (RwkvModel.loadAdapter) before the rest comes here.
 *
 * Letters: R rows of a pass, O/I a matrix's output/input width, r' the stacked rank.
 */

/** One adapted projection: y += x A'ᵀ B'ᵀ. */
interface LowRank {
  readonly a: Matrix; // (r', I)
  readonly b: Matrix; // (O, r')
}

/** What one adapter changes: its factors by base matrix, its norm vectors by the base's vector. */
interface Loaded {
  readonly lowRank: Map<Matrix, LowRank>;
  readonly vectors: Map<Tensor, Tensor>;
}

/** An adapter that cannot be kept unmerged (DiSHA, most full tensors): merge it at load. */
export class UnmergedUnsupportedError extends RwkvInputError {}

const fmt = (s: readonly number[]) => `[${s.join(", ")}]`;
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);


export class UnmergedAdapters {
  /** The backend to build the version blocks with: the same, except that matmul adds the deltas. */
  readonly backend: Backend;
  private readonly inner: TensorKernels;
  /** Adapter name → its factors by base matrix. */
  private readonly byName = new Map<string, Loaded>();
  /** The model's layer-norm vectors an adapter may replace, by tensor name. */
  private readonly norms = new Map<string, Tensor>();
  /** The current pass: each sequence's adapter (null: base), and the rows per sequence. */
  private active: Array<Loaded | null> = [];
  private rowsPerSeq = 0;
  private arena: Arena | null = null;

  constructor(private readonly base: Backend, private readonly linears: ReadonlyMap<string, Matrix>, private readonly modelSource: string) {
    const inner = this.inner = base.tensors;
    const kernels = withMethods(inner, {
      matmul: (y, x, W) => {
        inner.matmul(y, x, W);
        if (this.active.length) this.addDeltas(y, x, W);
      },
      layerNorm: (y, x, weight, bias, eps) => {
        inner.layerNorm(y, x, weight, bias, eps);
        if (this.active.length) this.renorm(y, x, weight, bias, eps);
      },
    });
    this.backend = withMethods(base, { tensors: kernels });
  }

  /** A layer-norm vector (`ln1.weight`...) of the model, which an adapter may replace. */
  register(name: string, t: Tensor): void {
    this.norms.set(name, t);
  }

  get names(): string[] {
    return [...this.byName.keys()];
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /**
   * Keeps `a` under `name`. Every factor is checked against the base matrix it adapts first: an
   * adapter for another model shape is refused naming the adapter, the tensor and the model.
   */
  add(name: string, a: Adapter): void {
    if (this.byName.has(name)) throw new RwkvInputError(a.source, `an adapter named "${name}" is already loaded`);
    const wrong = (tensor: string, problem: string) => new FormatError(a.source, `tensor ${tensor} ${problem} (model ${this.modelSource})`);
    const terms = new Map<Matrix, LowRank>(), vectors = new Map<Tensor, Tensor>();
    for (const [tName, A] of a.tensors) {
      if (tName.endsWith(LORA_B)) continue; // with its lora_A
      if (!tName.endsWith(LORA_A)) {
        const base = this.norms.get(tName);
        if (!base) {
          const kind = tName.endsWith(DISHA) || tName.endsWith(BONE) ? "DiSHA" : tName.endsWith(TIME_STATE) ? "state-tuning" : "full-tensor";
          throw new UnmergedUnsupportedError(a.source, `${tName} is a ${kind} tensor; adapters kept unmerged may hold only LoRA/PiSSA factors, ln1/ln2/ln_out vectors and time_state (merge this one at load)`);
        }
        if (A.shape.reduce((p, d) => p * d, 1) !== base.cols) throw wrong(tName, `has shape ${fmt(A.shape)} but the model's is [${base.cols}]`);
        vectors.set(base, this.inner.constant(A.toFloat32()));
        continue;
      }
      const prefix = tName.slice(0, -LORA_A.length), key = prefix + ".weight", bName = prefix + LORA_B;
      const W = this.linears.get(key);
      // emb is a lookup table, not a Linear (merging handles it, or names the tensor the model lacks).
      if (!W) throw new UnmergedUnsupportedError(a.source, `${tName} adapts ${key}, which is not a Linear weight of the model; only Linear weights can be adapted unmerged (merge this one at load)`);
      const B = a.tensors.get(bName);
      if (!B) throw new FormatError(a.source, `${tName} has no matching ${bName}`);
      const O = W.rows, I = W.cols, r = A.shape[0];
      if (!sameShape(A.shape, [r, I]) || r < 1) throw wrong(tName, `has shape ${fmt(A.shape)} but ${key} is ${fmt([O, I])}: a LoRA A must be [r, ${I}]`);
      if (!sameShape(B.shape, [O, r])) throw wrong(bName, `has shape ${fmt(B.shape)} but ${key} is ${fmt([O, I])} and ${tName} has rank ${r}: a LoRA B must be [${O}, ${r}]`);
      let a2 = A.toFloat32(), b2: Float32Array; // (r', I), (O, r')
      if (a.pissaInit) {
        const p = a.pissaInit, A0 = p.tensors.get(prefix + INIT_LORA_A), B0 = p.tensors.get(prefix + INIT_LORA_B);
        if (!A0 || !B0) throw new FormatError(p.source, `PiSSA init has no ${prefix}${INIT_LORA_A}/${INIT_LORA_B} for ${tName} of ${a.source}`);
        if (!sameShape(A0.shape, A.shape) || !sameShape(B0.shape, B.shape)) {
          throw new FormatError(p.source, `PiSSA init ${prefix}${INIT_LORA_A} ${fmt(A0.shape)} / ${INIT_LORA_B} ${fmt(B0.shape)} do not match ${a.source}'s ${fmt(A.shape)} / ${fmt(B.shape)}`);
        }
        const stacked = new Float32Array(2 * r * I);
        stacked.set(a2, 0);
        stacked.set(A0.toFloat32(), r * I);
        a2 = stacked;
        b2 = concatColumns(B.toFloat32(), 1, B0.toFloat32(), -1, O, r);
      } else {
        const s = (a.alpha ?? DEFAULT_LORA_ALPHA) / r;
        b2 = B.toFloat32().map((v) => v * s);
      }
      const rr = a2.length / I;
      terms.set(W, {
        a: this.base.adopt({ rows: rr, cols: I, type: "f32", data: a2 }),
        b: this.base.adopt({ rows: O, cols: rr, type: "f32", data: b2 }),
      });
    }
    for (const n of a.tensors.keys()) {
      if (n.endsWith(LORA_B) && !a.tensors.has(n.slice(0, -LORA_B.length) + LORA_A)) throw new FormatError(a.source, `${n} has no matching ${n.slice(0, -LORA_B.length)}${LORA_A}`);
    }
    this.byName.set(name, { lowRank: terms, vectors });
  }

  /**
   * The adapter of each sequence of the next pass (undefined: the base), `rowsPerSeq` consecutive
   * rows each. select([], 0) ends it.
   */
  select(adapters: ReadonlyArray<string | undefined>, rowsPerSeq: number): void {
    this.rowsPerSeq = rowsPerSeq;
    this.active = adapters.some((n) => n !== undefined) ? adapters.map((n) => (n === undefined ? null : this.byName.get(n)!)) : [];
  }

  /** Runs of consecutive sequences with the same adapter: f(adapter, first row, rows). */
  private eachRun(f: (a: Loaded, r0: number, rows: number) => void): void {
    const S = this.active.length, n = this.rowsPerSeq;
    for (let b0 = 0; b0 < S;) {
      const a = this.active[b0];
      let b1 = b0 + 1;
      while (b1 < S && this.active[b1] === a) b1++;
      if (a) f(a, b0 * n, (b1 - b0) * n);
      b0 = b1;
    }
  }

  /** Recomputes the rows of y (R, C) whose adapter replaces this norm's weight or bias. */
  private renorm(y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, eps: number): void {
    const K = this.inner, A = (this.arena ??= K.arena());
    this.eachRun((a, r0, rows) => {
      const w = a.vectors.get(weight), b = a.vectors.get(bias);
      if (!w && !b) return;
      const m = A.mark();
      const xs = A.take(rows, x.cols), ys = A.take(rows, y.cols); // (rows, C)
      K.copyRows(xs, 0, x, r0, rows);
      K.layerNorm(ys, xs, w ?? weight, b ?? bias, eps);
      K.copyRows(y, r0, ys, 0, rows);
      A.rewind(m);
    });
  }

  /** Adds each run of consecutive sequences' delta to its rows of y (R, O), x (R, I). */
  private addDeltas(y: Tensor, x: Tensor, W: Matrix): void {
    const K = this.inner, A = (this.arena ??= K.arena());
    this.eachRun((a, r0, rows) => {
      const t = a.lowRank.get(W);
      if (t) {
        const m = A.mark(), whole = rows === y.rows;
        let xs = x;
        if (!whole) { xs = A.take(rows, W.cols); K.copyRows(xs, 0, x, r0, rows); } // (rows, I)
        const u = A.take(rows, t.a.rows); // (rows, r')
        K.matmul(u, xs, t.a);
        const d = A.take(rows, W.rows); // (rows, O)
        K.matmul(d, u, t.b);
        if (whole) K.add(y, d);
        else {
          const ys = A.take(rows, W.rows); // (rows, O)
          K.copyRows(ys, 0, y, r0, rows);
          K.add(ys, d);
          K.copyRows(y, r0, ys, 0, rows);
        }
        A.rewind(m);
      }
    });
  }

}

/**
 * `target` with some members replaced: a plain object whose other methods are target's, bound to
 * it (a backend's methods keep state on `this`, e.g. the wasm allocator's top, so an object derived
 * from it by prototype would fork that state), and whose other properties read target's live.
 * Built once: a kernel call through it costs one bound call, no lookup or allocation.
 */
function withMethods<T extends object>(target: T, overrides: Partial<T>): T {
  const out: Record<PropertyKey, unknown> = {};
  for (let o: object | null = target; o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
    for (const key of Reflect.ownKeys(o)) {
      if (key === "constructor" || key in out || Object.prototype.hasOwnProperty.call(overrides, key)) continue;
      const d = Object.getOwnPropertyDescriptor(o, key)!;
      if (typeof d.value === "function") out[key] = (d.value as (...args: unknown[]) => unknown).bind(target);
      else Object.defineProperty(out, key, { get: () => Reflect.get(target, key, target), enumerable: true });
    }
  }
  for (const key of Reflect.ownKeys(overrides)) Object.defineProperty(out, key, { value: (overrides as Record<PropertyKey, unknown>)[key], enumerable: true });
  return out as T;
}

/** (O, 2r) = [sb·B, s0·B0] from two (O, r) matrices. */
function concatColumns(B: Float32Array, sb: number, B0: Float32Array, s0: number, O: number, r: number): Float32Array {
  const out = new Float32Array(O * 2 * r);
  for (let o = 0; o < O; o++) {
    for (let k = 0; k < r; k++) {
      out[o * 2 * r + k] = sb * B[o * r + k];
      out[o * 2 * r + r + k] = s0 * B0[o * r + k];
    }
  }
  return out;
}
