import { FormatError, RwkvInputError } from "../errors.js";

/**
 * A backend that keeps state values in its own memory (a GPU, TensorKernels.stateDevice): after a
 * forward the State's arrays are stale there until sync() reads them back.
 */
export interface StateDevice {
  /** Reads the backend's values of these arrays into them (arrays it does not hold are left as they are). */
  sync(arrays: readonly Float32Array[]): Promise<void>;
  /** Gives each array of `to` a backend copy of the values of the same-index array of `from`, without a read-back. */
  copy(from: readonly Float32Array[], to: readonly Float32Array[]): void;
}

/**
 * The recurrent state: per layer, named f32 arrays in the official (pip) layout —
 * v4: att_xx, att_aa, att_bb, att_pp, ffn_xx; v5/v6/v7 (and 7a, 8): att_x_prev, att_kv, ffn_x_prev;
 * 7b adds q_prev (the token shift of its attention's q).
 * It is the whole context of the model: fixed size, whatever the number of tokens seen — except for
 * RWKV-7b and the RWKV-8 hybrid, whose layers also hold k_cache, v_cache and ctx_tokens, arrays that
 * grow by a row per token (Architecture.growingState; they stay in JavaScript, replaced as they grow).
 * Between calls it lives on the backend: a forward may move the arrays into the backend's memory
 * (Backend.residentArray, same values), where the kernels update them in place (TensorKernels
 * bindState); at the API boundary they stay plain Float32Arrays (serialize, clone, prefix cache).
 * Read them through `layers` after a call, not through references kept from before it.
 *
 * On a GPU backend the values stay in GPU buffers between calls and the arrays go stale: `await
 * state.sync()` brings them back (a no-op elsewhere), clone() copies on the GPU, and serialize()
 * refuses a stale state rather than write old numbers.
 */
export class State {
  constructor(
    /** The architecture version it belongs to (e.g. "7"). */
    readonly version: string,
    readonly layers: Array<Record<string, Float32Array>>,
    /**
     * The adapter (kept unmerged, Model.loadAdapter) every forward of this state runs with; absent:
     * the base weights. Part of the state: the same numbers mean something else under another adapter.
     */
    public adapter?: string,
  ) {}

  /** The backend holding newer values than the arrays, set by the model after a forward; null when the arrays are current. */
  private device: StateDevice | null = null;

  /** Marks the arrays as stale: `device` has their values (called by the model after a forward). */
  heldBy(device: StateDevice | null): void {
    this.device = device;
  }

  /** Whether the arrays are behind the backend's copy (call sync() before reading them). */
  get stale(): boolean {
    return this.device !== null;
  }

  /** Brings the arrays up to date with the backend's copy (a GPU's); resolves at once when they are. */
  async sync(): Promise<this> {
    const device = this.device;
    if (device) {
      await device.sync(this.arrays());
      if (this.device === device) this.device = null;
    }
    return this;
  }

  private arrays(): Float32Array[] {
    return this.layers.flatMap((l) => Object.values(l));
  }

  clone(): State {
    const c = new State(this.version, this.layers.map((l) => Object.fromEntries(Object.entries(l).map(([k, v]) => [k, v.slice()]))), this.adapter);
    if (this.device) {
      this.device.copy(this.arrays(), c.arrays());
      c.device = this.device;
    }
    return c;
  }

  /** Total number of floats. */
  get size(): number {
    let n = 0;
    for (const l of this.layers) for (const v of Object.values(l)) n += v.length;
    return n;
  }

  /**
   * Bytes: magic "RWKVSTAT", u32 JSON length, JSON {version, layers: [[name, length]...], adapter?}, then the
   * f32 data in that order. (A file format with model identity is built on this by the state files.)
   */
  serialize(): Uint8Array {
    if (this.device) throw new RwkvInputError("state", "its values are still on the GPU: await state.sync() before serializing it");
    const layout = {
      version: this.version, layers: this.layers.map((l) => Object.entries(l).map(([k, v]) => [k, v.length])),
      ...(this.adapter !== undefined ? { adapter: this.adapter } : {}),
    };
    const json = new TextEncoder().encode(JSON.stringify(layout));
    const head = 8 + 4 + json.length;
    const pad = (4 - (head % 4)) % 4;
    const out = new Uint8Array(head + pad + 4 * this.size);
    out.set(new TextEncoder().encode(STATE_MAGIC), 0);
    new DataView(out.buffer).setUint32(8, json.length, true);
    out.set(json, 12);
    const data = new Float32Array(out.buffer, head + pad);
    let o = 0;
    for (const l of this.layers) for (const v of Object.values(l)) { data.set(v, o); o += v.length; }
    return out;
  }

  static deserialize(bytes: Uint8Array, source = "state"): State {
    if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== STATE_MAGIC) {
      throw new FormatError(source, "not a serialized RWKV state (bad magic)");
    }
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const jl = dv.getUint32(8, true);
    if (12 + jl > bytes.length) throw new FormatError(source, "truncated state header");
    let layout: { version: string; layers: Array<Array<[string, number]>>; adapter?: unknown };
    try {
      layout = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + jl)));
    } catch {
      throw new FormatError(source, "state header is not valid JSON");
    }
    const head = 12 + jl;
    let o = head + ((4 - (head % 4)) % 4);
    const layers = layout.layers.map((fields) => {
      const l: Record<string, Float32Array> = {};
      for (const [name, n] of fields) {
        if (!Number.isSafeInteger(n) || n < 0 || o + 4 * n > bytes.length) throw new FormatError(source, `truncated state data (${name})`);
        l[name] = new Float32Array(bytes.slice(o, o + 4 * n).buffer);
        o += 4 * n;
      }
      return l;
    });
    if (o !== bytes.length) throw new FormatError(source, `state has ${bytes.length - o} unexpected trailing bytes`);
    if (layout.adapter !== undefined && typeof layout.adapter !== "string") throw new FormatError(source, "state header's adapter is not a string");
    return new State(String(layout.version), layers, layout.adapter);
  }
}

const STATE_MAGIC = "RWKVSTAT";
