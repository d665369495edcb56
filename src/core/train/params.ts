import { RwkvInputError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { numel, type TensorEntry } from "../tensor.js";
import { alloc, type Buf, type TrainDType } from "../backend/buffers.js";

/**
 * The trainable tensors of a model in the official RWKV-LM names, shapes and state-dict order
 * (what `torch.save(model.state_dict())` writes), each with its gradient buffer.
 */
export interface Param {
  readonly name: string;
  /** PyTorch shape, e.g. (1,1,C) for mix vectors, (H,N) for r_k, (out,in) for Linear weights. */
  readonly shape: readonly number[];
  readonly data: Buf;
  readonly grad: Buf;
}

export class ParamStore {
  readonly list: Param[] = [];
  private readonly byName = new Map<string, Param>();

  constructor(readonly dtype: TrainDType) {}

  add(name: string, shape: readonly number[], values?: ArrayLike<number>): Param {
    if (this.byName.has(name)) throw new Error(`parameter ${name} added twice`);
    const n = numel(shape);
    const data = alloc(this.dtype, n);
    if (values) {
      if (values.length !== n) throw new Error(`parameter ${name}: ${values.length} values for shape [${shape}]`);
      data.set(values);
    }
    const p: Param = { name, shape: [...shape], data, grad: alloc(this.dtype, n) };
    this.list.push(p);
    this.byName.set(name, p);
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
    for (const p of this.list) p.grad.fill(0);
  }

  /**
   * Moves every tensor (values and gradient) into storage from `allocate`, e.g. a WebAssembly
   * memory the kernels read in place. Param objects obtained before are stale afterwards.
   */
  relocate(allocate: (n: number) => Buf): void {
    for (let i = 0; i < this.list.length; i++) {
      const p = this.list[i];
      const data = allocate(p.data.length), grad = allocate(p.grad.length);
      data.set(p.data);
      grad.set(p.grad);
      const moved: Param = { name: p.name, shape: p.shape, data, grad };
      this.list[i] = moved;
      this.byName.set(p.name, moved);
    }
  }

  /** Total number of scalars. */
  count(): number {
    return this.list.reduce((s, p) => s + p.data.length, 0);
  }

  /** All tensors of a checkpoint, upcast/decoded to this store's type, in the file's order. */
  static fromCheckpoint(ckpt: Checkpoint, dtype: TrainDType): ParamStore {
    const store = new ParamStore(dtype);
    for (const t of ckpt.tensors.values()) store.add(t.name, t.shape, t.toFloat32());
    return store;
  }

  /** A copy with the same values (and zero gradients), e.g. in another storage type. */
  clone(dtype: TrainDType = this.dtype): ParamStore {
    const store = new ParamStore(dtype);
    for (const p of this.list) store.add(p.name, p.shape, p.data);
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
    tensors.set(p.name, { name: p.name, dtype: "f32", shape: p.shape, toFloat32: () => Float32Array.from(p.data) });
  }
  return { format: "safetensors", source, tensors, metadata: {} };
}
