import type { Matrix } from "../backend/backend.js";
import { quantizeInt8 } from "../backend/int8.js";
import { decodeWeightRow } from "../backend/weight-rows.js";
import { RwkvInputError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { numel, type TensorEntry } from "../tensor.js";
import { alloc, type Buf, type TrainDType } from "../backend/buffers.js";

/**
 * The tensors of a model in the official RWKV-LM names, shapes and state-dict order (what
 * `torch.save(model.state_dict())` writes): trained ones with their gradient buffer, and the
 * frozen base of an adapter run (LoRA, state tuning) without one.
 *
 * A frozen matrix may stay in its stored compact type (`compact`: f16, bf16, ggml blocks, or
 * per-row int8 made at load): QLoRA. Its `data` is then empty, and the forward decodes it one
 * matrix at a time into the model's scratch (model.ts); `paramValues` decodes it for the rest.
 */
export interface Param {
  readonly name: string;
  /** PyTorch shape, e.g. (1,1,C) for mix vectors, (H,N) for r_k, (out,in) for Linear weights. */
  readonly shape: readonly number[];
  /** The values (f32 or f64 storage); empty when `compact` holds them. */
  readonly data: Buf;
  /** dL/d(values); null for a frozen tensor, which gets no gradient (nor optimizer moments). */
  readonly grad: Buf | null;
  /** A frozen 2-D tensor kept in its stored compact type, (shape[0], shape[1]). */
  readonly compact?: Matrix;
}

/** How a frozen base keeps its 2-D tensors: as stored (f16, bf16, ggml blocks stay so), int8 for float ones too, or f32. */
export type FrozenMatrices = "compact" | "int8" | "f32";

/** Stored types a frozen matrix keeps in memory (f32 ones are already values). */
const COMPACT_DTYPES: ReadonlySet<string> = new Set(["f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1"]);

/**
 * How the forward sees a parameter: matrices as (rows, cols) (Linear (out, in), LoRA (in, out),
 * v6's (5, Dm, C) stack as (5·Dm, C)); everything else — (1,1,C) mixes, (H,N) r_k / time_decay /
 * time_faaaa, norms — as one flat row vector (1, n) broadcast over rows.
 */
export function matrixShape(name: string, shape: readonly number[]): [number, number] {
  const n = shape.reduce((a, b) => a * b, 1);
  if (name.endsWith("time_maa_w2") && shape.length === 3) return [shape[0] * shape[1], shape[2]];
  const vector = name.endsWith(".r_k") || /\.time_(decay|faaaa|first)$/.test(name);
  if (shape.length === 2 && !vector) return [shape[0], shape[1]];
  return [1, n];
}

/** A parameter's values as f32 (a compact one decoded, a fresh array). */
export function paramValues(p: Param): Float32Array {
  if (!p.compact) return Float32Array.from(p.data);
  const m = p.compact, out = new Float32Array(m.rows * m.cols);
  for (let r = 0; r < m.rows; r++) decodeWeightRow(m, r, out.subarray(r * m.cols, (r + 1) * m.cols));
  return out;
}

export class ParamStore {
  readonly list: Param[] = [];
  private readonly byName = new Map<string, Param>();

  constructor(readonly dtype: TrainDType) {}

  /** A tensor with values (default zeros); `frozen`: without a gradient buffer. */
  add(name: string, shape: readonly number[], values?: ArrayLike<number>, frozen = false): Param {
    const n = numel(shape);
    const data = alloc(this.dtype, n);
    if (values) {
      if (values.length !== n) throw new Error(`parameter ${name}: ${values.length} values for shape [${shape}]`);
      data.set(values);
    }
    return this.push({ name, shape: [...shape], data, grad: frozen ? null : alloc(this.dtype, n) });
  }

  /** A frozen 2-D tensor kept in its compact stored type (m is (shape[0], shape[1])). */
  addCompact(name: string, shape: readonly number[], m: Matrix): Param {
    if (shape.length !== 2 || m.rows !== shape[0] || m.cols !== shape[1]) throw new Error(`parameter ${name}: a ${m.rows}x${m.cols} matrix for shape [${shape}]`);
    return this.push({ name, shape: [...shape], data: alloc(this.dtype, 0), grad: null, compact: m });
  }

  private push(p: Param): Param {
    if (this.byName.has(p.name)) throw new Error(`parameter ${p.name} added twice`);
    this.list.push(p);
    this.byName.set(p.name, p);
    return p;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  get(name: string): Param {
    const p = this.byName.get(name);
    if (!p) throw new RwkvInputError("model", `missing parameter ${name}`);
    return p;
  }

  zeroGrad(): void {
    for (const p of this.list) p.grad?.fill(0);
  }

  /**
   * Moves every tensor (values and gradient) into storage from `allocate`, e.g. a WebAssembly
   * memory the kernels read in place. Param objects obtained before are stale afterwards.
   */
  relocate(allocate: (n: number) => Buf): void {
    for (let i = 0; i < this.list.length; i++) {
      const p = this.list[i];
      if (p.compact) continue; // decoded into the model's scratch on use
      const data = allocate(p.data.length), grad = p.grad ? allocate(p.grad.length) : null;
      data.set(p.data);
      if (grad) grad.set(p.grad!);
      const moved: Param = { name: p.name, shape: p.shape, data, grad };
      this.list[i] = moved;
      this.byName.set(p.name, moved);
    }
  }

  /** Total number of scalars. */
  count(): number {
    return this.list.reduce((s, p) => s + numel(p.shape), 0);
  }

  /**
   * Bytes the store holds: values (f32/f64 arrays), compact matrices (their stored bytes) and
   * gradients; what a QLoRA run's memory bound is checked against.
   */
  bytes(): { values: number; compact: number; grads: number } {
    let values = 0, compact = 0, grads = 0;
    for (const p of this.list) {
      values += p.data.byteLength;
      if (p.compact) compact += p.compact.data.byteLength;
      if (p.grad) grads += p.grad.byteLength;
    }
    return { values, compact, grads };
  }

  /**
   * All tensors of a checkpoint, upcast/decoded to this store's type, in the file's order.
   * `frozen`: the base of an adapter run: no gradients, and 2-D tensors kept as `frozen` says.
   */
  static fromCheckpoint(ckpt: Checkpoint, dtype: TrainDType, frozen?: FrozenMatrices): ParamStore {
    const store = new ParamStore(dtype);
    for (const t of ckpt.tensors.values()) {
      const matrix = t.shape.length === 2 && t.shape[0] > 1 && matrixShape(t.name, t.shape)[0] === t.shape[0]; // not a vector seen as (H, N)
      const m = frozen !== undefined && frozen !== "f32" && matrix ? compactMatrix(t, frozen) : null;
      if (m) store.addCompact(t.name, t.shape, m);
      else store.add(t.name, t.shape, t.toFloat32(), frozen !== undefined);
    }
    return store;
  }

  /** A copy with the same values (and zero gradients), e.g. in another storage type; compact tensors stay shared. */
  clone(dtype: TrainDType = this.dtype): ParamStore {
    const store = new ParamStore(dtype);
    for (const p of this.list) {
      if (p.compact) store.addCompact(p.name, p.shape, p.compact);
      else store.add(p.name, p.shape, p.data, p.grad === null);
    }
    return store;
  }
}

/**
 * The store as an in-memory checkpoint (the official names and shapes, f32 values), so the
 * inference engine, the version detector and the format writers can read trained weights.
 */
export function storeCheckpoint(store: ParamStore, source = "trained model"): Checkpoint {
  const tensors = new Map<string, TensorEntry>();
  for (const p of store.list) {
    tensors.set(p.name, { name: p.name, dtype: "f32", shape: p.shape, toFloat32: () => paramValues(p) });
  }
  return { format: "safetensors", source, tensors, metadata: {} };
}

/**
 * A frozen 2-D tensor in its compact form, or null to keep it as f32 values: the file's f16, bf16
 * or ggml block type as stored (ggml rows are whole 32-element blocks, as raw() guarantees); with
 * "int8", also f32/f16/bf16 `.weight` tensors (Linear weights, emb, head: nn.Linear's (out, in), one
 * scale per output row as the inference's int8) quantized per row (backend/int8.ts).
 */
function compactMatrix(t: TensorEntry, mode: Exclude<FrozenMatrices, "f32">): Matrix | null {
  const [rows, cols] = t.shape;
  if (mode === "int8" && t.name.endsWith(".weight") && (t.dtype === "f32" || t.dtype === "f16" || t.dtype === "bf16")) {
    return quantizeInt8(t.toFloat32(), rows, cols);
  }
  if (!COMPACT_DTYPES.has(t.dtype) || !t.raw) return null;
  const bytes = t.raw();
  const own = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice(); // a Uint16Array view needs alignment
  const type = t.dtype as Matrix["type"];
  const data = type === "f16" || type === "bf16" ? new Uint16Array(own.buffer, own.byteOffset, rows * cols) : own;
  return { rows, cols, type, data };
}
