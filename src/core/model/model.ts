import type { Arena, Backend, Matrix, Tensor, TensorKernels } from "../backend/backend.js";
import { RwkvInputError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { checkpointShapes, type TensorShapes } from "./shapes.js";
import { checkUnreadTensors } from "./unknown-tensors.js";
import { versionModule } from "./versions.js";
import { State } from "./state.js";
import { decodeWeightRow } from "../backend/weight-rows.js";
import { type WeightOptions, Weights } from "./weights.js";
import { type Adapter, TIME_STATE } from "../adapters/adapter.js";
import { UnmergedAdapters } from "../adapters/unmerged.js";

/*
 * The skeleton shared by every RWKV version (SPEC §1):
 *   x = LN(emb[token]; ln0);  for each block: x += TimeMix(LN1(x)); x += ChannelMix(LN2(x));
 *   logits = head · LN(x; ln_out)
 * A version module (v4/ ... v7/, registered in versions.ts) supplies the two mixers and its state
 * layout. Every mixer works on a whole sequence: the one-token step is the T = 1 case of the same
 * code, so the recurrent and the parallel form cannot drift apart.
 *
 * Letters: T tokens, C = n_embd, V vocabulary.
 */

/** "7a", "7b", "8" and "8-hybrid": the generations after RWKV-7 (DeepEmbed, DeepEmbedAttention, RWKV-8 rc00). */
export type Version = "4" | "5.1" | "5.2" | "6" | "7" | "7a" | "7b" | "8" | "8-hybrid";

export interface ModelConfig {
  readonly version: Version;
  readonly nLayer: number;
  readonly nEmbd: number;
  readonly nHead: number;
  readonly headSize: number;
  readonly vocabSize: number;
  readonly dimFfn: number;
  /** Attention width A (= nEmbd in all released v5+ models). */
  readonly dimAtt: number;
}

export interface ForwardOptions {
  /** Return logits for all T positions, (T, V) row-major; default only the last row (V). */
  readonly allLogits?: boolean;
}

/**
 * A loaded model. The forward methods are asynchronous so that every backend can serve them (a GPU
 * reads logits back asynchronously, a worker answers with a message); the CPU backends finish the
 * work inside the call. Calls on one model run one at a time, in the order they were made (the
 * activations live in one arena per model), so concurrent callers need no lock of their own. A
 * State passed in must not be touched until its call settles; it is plain data before and after.
 */
export interface Model {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /**
   * Identifies these weights (not just this shape): a hash of the config and a strided sample of
   * the embedding and head. Saved states record it so they are never loaded into another model.
   */
  readonly fingerprint: string;
  /**
   * The starting state: zeros, or the trained `time_state` of a state-tuned checkpoint; with
   * `adapter` (one loaded by loadAdapter), that adapter's (its own time_state, if it has one),
   * marked with it (State.adapter).
   */
  initState(adapter?: string): State;
  /**
   * Makes the `blocks.i.att.time_state` tensors of `ckpt` (this model's own file or a separate
   * state-tuning file) the starting state returned by initState().
   */
  useTimeState(ckpt: Checkpoint): void;
  /** Logits (V) after `token`; advances `state`. */
  step(token: number, state: State): Promise<Float32Array>;
  /** Runs `tokens` as one sequence from `state` (advancing it): last logits (V) or all (T, V). */
  forward(tokens: readonly number[], state: State, options?: ForwardOptions): Promise<Float32Array>;
  /**
   * One token for each of several independent sequences (batched decoding): tokens[b] advances
   * states[b]. Returns logits (B, V), equal to B separate step() calls.
   */
  stepBatch(tokens: readonly number[], states: readonly State[]): Promise<Float32Array>;
  /**
   * Like forward(), but returns the final hidden state, LN(x; ln_out) — what the head multiplies
   * into logits — for the last position (C) or all (T, C); advances `state` the same way.
   * Optional so that wrappers and test doubles of Model need not provide it; RwkvModel does.
   */
  hidden?(tokens: readonly number[], state: State, options?: ForwardOptions): Promise<Float32Array>;
  /**
   * Keeps a LoRA/PiSSA adapter unmerged under `name` (hot-swap): a State whose `adapter` is `name`
   * runs with it, others with the base or their own adapter, in the same batch. Besides the factors
   * it may replace ln1/ln2/ln_out and carry a time_state (initState(name) starts from it); DiSHA
   * and other full tensors are refused with UnmergedUnsupportedError (merge those at load).
   * Optional, as hidden().
   */
  loadAdapter?(name: string, adapter: Adapter): void;
  /**
   * Why `state` (e.g. read from a file) cannot continue in this model, or null when it can: its
   * layers and arrays must be this model's, fixed-size arrays of their exact size and growing
   * ones (RWKV-7b's cache) consistent with each other.
   */
  checkState?(state: State): string | null;
}

/** One layer's part of a State. */
export type LayerState = Record<string, Float32Array>;

/** One layer's state arrays bound as backend tensors, updated in place by the kernels. */
export type LayerTensors = Record<string, Tensor>;

/**
 * What one forward gives a block besides its input: the arena its temporaries come from (rewound
 * by the model after each mixer, so return values are valid until the model has added them) and
 * the tensors the version keeps across the layers of one forward (Architecture.sequenceTensors).
 */
export interface ForwardContext {
  readonly arena: Arena;
  readonly shared: Readonly<Record<string, Tensor>>;
  /** The token id of every row (B·T), for versions that read per-token tables (DeepEmbed). */
  readonly tokens: readonly number[];
  /**
   * The states of the B sequences themselves, for the arrays of Architecture.growingState, which
   * stay in JavaScript (they change length) and which a block replaces in `layers[i]` as they grow.
   */
  readonly states: readonly State[];
  /**
   * Work a block left to finish after its kernels, e.g. values read back asynchronously into a
   * growing state array (RWKV-7b's cache rows): the forward resolves only once all of it has.
   */
  readonly pending: Array<Promise<unknown>>;
}

/**
 * One block's two mixers as fixed sequences of kernel calls. Inputs are the layer-normed
 * activations xx (B·T, C) of B = states.length independent sequences of T tokens each, rows
 * b·T … b·T+T-1 belonging to states[b]; outputs are residual deltas (B·T, C) taken from the
 * arena. B = 1 is one sequence (prefill, step); B > 1 with T = 1 decodes many sequences in one
 * matrix-matrix product per projection.
 */
export interface Block {
  /**
   * Optional (RWKV-7b, the RWKV-8 hybrid): a term computed from the block's input x itself (not
   * LN1(x)) and added to the residual together with the time mix: x += TimeMix(LN1(x)) + this.
   */
  attention?(x: Tensor, T: number, states: readonly LayerTensors[], ctx: ForwardContext): Tensor; // (B·T, C) -> (B·T, C)
  timeMix(xx: Tensor, T: number, states: readonly LayerTensors[], ctx: ForwardContext): Tensor; // (B·T, C) -> (B·T, C)
  channelMix(xx: Tensor, T: number, states: readonly LayerTensors[], ctx: ForwardContext): Tensor; // (B·T, C) -> (B·T, C)
}

/** What a version file provides. */
export interface Architecture {
  /** Display name used in messages, e.g. "RWKV-7". */
  readonly name: string;
  /** Tensors of the released layout that the model never reads (not an unknown-tensor error). */
  readonly unusedByDesign?: RegExp;
  block(w: Weights, layer: number, cfg: ModelConfig, be: Backend): Block;
  /**
   * Tensors of `cols` columns (per row of the forward) that live across the layers of one
   * forward, e.g. RWKV-7's v_first: ForwardContext.shared.
   */
  sequenceTensors?(cfg: ModelConfig): Readonly<Record<string, number>>;
  /** Zero state of one layer. */
  initLayerState(cfg: ModelConfig): Record<string, Float32Array>;
  /**
   * A state-tuned `blocks.i.att.time_state` (H, N, N) as stored in checkpoints, converted to this
   * version's `att_kv` layout. Absent for versions without state tuning.
   */
  timeStateToKv?(cfg: ModelConfig, timeState: Float32Array): Float32Array;
  /**
   * Layer state arrays that grow with every token (RWKV-7b's KV cache and token ids): never bound
   * as backend tensors; the blocks read and replace them through ForwardContext.states.
   */
  readonly growingState?: readonly string[];
  /** False when the embedding is used as is (the RWKV-8 hybrid has no blocks.0.ln0). Default true. */
  readonly embeddingNorm?: boolean;
  /** Why one layer's growing arrays are inconsistent (e.g. a truncated cache), or null. */
  checkGrowingState?(cfg: ModelConfig, layer: LayerState): string | null;
  /**
   * Floats the state gains per token (growingState versions), from the tensor shapes: what `rwkv
   * info` reports.
   */
  stateFloatsPerToken?(t: Pick<TensorShapes, "shape">, cfg: ModelConfig): number;
}

/** LayerNorm eps of every `ln*` in all versions. */
export const LAYER_NORM_EPS = 1e-5;

interface Norm { weight: Tensor; bias: Tensor } // (1, C) each

/**
 * Most tokens of one sequence run through the layers at once: a longer prompt goes in chunks with
 * the state carried (the same results: every kernel's rows are independent of T, and the scans
 * are sequential), so the arena stays near this many rows however long the prompt. 128 rather
 * than 256: the arena of a 512-token prompt on the 0.1B GGUF Q8_0 file 12 MB smaller (peak RSS of
 * `rwkv bench`, 2 threads, 371 -> 358-362 MB, against the issue's file x 1.1 + 150 = 393), prefill
 * as fast (the weights stream once per 128 rows instead of 256, a small share of a prompt's time:
 * FP32 prefill-512 at 2 threads 355-382 tok/s before, 361-389 after).
 */
const SEQUENCE_CHUNK = 128;

export class RwkvModel implements Model {
  /** (V, C) with ln0 applied, or null when the rows are normed as they are read from `embStored`. */
  private readonly emb: Float32Array | null;
  /**
   * The embedding in the file's compact type (f16, bf16, block-quantized): its rows are widened and
   * layer-normed per token, as rwkv.cpp does, instead of a (V, C) f32 table that for such files
   * would be the largest part of the memory (the same values: each row is normed alone).
   */
  private readonly embStored: { table: Matrix; weight: Tensor; bias: Tensor; row: Float32Array } | null;
  private readonly blocks: Array<{ ln1: Norm; ln2: Norm; mix: Block }>;
  private readonly lnOut: Norm;
  private readonly head: Matrix; // (V, C)
  readonly fingerprint: string;
  private initial: State;
  /**
   * The activations of every forward: allocated by the first calls, then reused. One forward at a
   * time per model: every call goes through `serial`, which runs it after the previous one settled.
   */
  private readonly arena: Arena;
  /** Settles when the last queued call has (never rejects: one failed call does not block the next). */
  private queue: Promise<unknown> = Promise.resolve();
  /** Adapters kept unmerged; the blocks' matmuls go through it (a no-op while no state uses one). */
  private readonly adapters: UnmergedAdapters;
  /** The starting state of each unmerged adapter that carries a trained time_state. */
  private readonly adapterInitial = new Map<string, State>();

  constructor(readonly config: ModelConfig, private readonly arch: Architecture, w: Weights, readonly backend: Backend) {
    const ckpt = w.ckpt;
    const { nLayer: L, nEmbd: C, vocabSize: V } = config;
    const K = backend.tensors;
    this.adapters = new UnmergedAdapters(backend, w.linears, ckpt.source);
    const vector = (name: string) => { const t = K.constant(w.vec(name, C)); this.adapters.register(name, t); return t; }; // (1, C)
    const norm = (p: string): Norm => ({ weight: vector(`${p}.weight`), bias: vector(`${p}.bias`) });
    const table = arch.embeddingNorm === false ? null : w.storedTable("emb.weight", V, C); // (V, C)
    let embSample: Float32Array; // the raw embedding's elements that fingerprint() hashes
    if (table) {
      const row = new Float32Array(C);
      let decoded = -1;
      embSample = fingerprintSample(V * C, (i) => {
        const r = Math.floor(i / C);
        if (r !== decoded) { decodeWeightRow(table, r, row); decoded = r; }
        return row[i - r * C];
      });
      this.emb = null;
      this.embStored = {
        table, weight: K.constant(w.vec("blocks.0.ln0.weight", C)), bias: K.constant(w.vec("blocks.0.ln0.bias", C)), // (1, C)
        row: new Float32Array(C), // one widened row, reused
      };
    } else {
      const emb = w.dense("emb.weight", V, C); // (V, C)
      embSample = fingerprintSample(emb.length, (i) => emb[i]); // before ln0, which works in place
      // Precompute ln0 over the whole embedding as the official inference code does (SPEC gotcha 8).
      this.emb = arch.embeddingNorm === false ? emb : lnZeroEmbedding(w, backend, config, emb); // (V, C)
      this.embStored = null;
    }
    this.arena = K.arena();
    this.blocks = [];
    for (let i = 0; i < L; i++) {
      this.blocks.push({ ln1: norm(`blocks.${i}.ln1`), ln2: norm(`blocks.${i}.ln2`), mix: arch.block(w, i, config, this.adapters.backend) });
    }
    this.lnOut = norm("ln_out");
    // The head's sample is taken before adopt(): a backend may keep the adopted matrix where the CPU cannot read it (WebGPU).
    let headSample: Float32Array | undefined;
    this.head = w.linear("head.weight", V, C, (m) => { headSample = sampledRows(m); });
    this.fingerprint = fingerprint(JSON.stringify(config), [embSample, headSample ?? sampledRows(this.head)]);
    this.initial = new State(config.version, Array.from({ length: L }, () => arch.initLayerState(config)));
    // Read through `w`, so the time_state tensors count as used by the unknown-tensor check.
    if (ckpt.tensors.has("blocks.0.att.time_state")) this.useTimeState(ckpt, w);
  }

  initState(adapter?: string): State {
    if (adapter !== undefined && !this.adapters.has(adapter)) throw new RwkvInputError("initState", `adapter "${adapter}" is not loaded in this model`);
    const s = ((adapter !== undefined ? this.adapterInitial.get(adapter) : undefined) ?? this.initial).clone();
    s.adapter = adapter;
    return s;
  }

  useTimeState(ckpt: Checkpoint, weights?: Weights): void {
    this.initial = this.withTimeState(ckpt, weights);
  }

  /** The base's starting state with the `time_state` tensors of `ckpt` in place of its att_kv. */
  private withTimeState(ckpt: Checkpoint, weights?: Weights): State {
    const { nLayer: L, nHead: H, headSize: N } = this.config;
    const convert = this.arch.timeStateToKv;
    if (!convert) throw new RwkvInputError(ckpt.source, `${this.arch.name} has no trainable initial state (time_state)`);
    const w = weights ?? new Weights(ckpt, this.arch.name);
    const initial = this.initial.clone();
    let found = 0;
    for (let i = 0; i < L; i++) {
      const name = `blocks.${i}.att.time_state`;
      if (!w.has(name)) continue;
      initial.layers[i].att_kv = convert(this.config, w.vec(name, H * N * N)); // (H, N, N)
      found++;
    }
    if (found === 0) throw new RwkvInputError(ckpt.source, "no blocks.i.att.time_state tensors: not a state-tuning file");
    return initial;
  }

  loadAdapter(name: string, adapter: Adapter): void {
    // Its trained time_state (state tuning) is its own starting state; the rest changes the weights.
    const isState = (n: string) => n.endsWith(TIME_STATE);
    const states = new Map([...adapter.tensors].filter(([n]) => isState(n)));
    const initial = states.size ? this.withTimeState({ format: "safetensors", source: adapter.source, tensors: states, metadata: {} }) : null;
    this.adapters.add(name, { ...adapter, tensors: new Map([...adapter.tensors].filter(([n]) => !isState(n))) });
    if (initial) this.adapterInitial.set(name, initial);
  }

  step(token: number, state: State): Promise<Float32Array> {
    return this.forward([token], state);
  }

  checkState(state: State): string | null {
    const fresh = this.initial;
    const stateOf = state.version; // an identity check, not version knowledge
    if (stateOf !== this.config.version) return `it is an RWKV-${stateOf} state, this model is RWKV-${this.config.version}`;
    if (state.layers.length !== fresh.layers.length) return `${state.layers.length} layers, this model has ${fresh.layers.length}`;
    const growing = new Set(this.arch.growingState ?? []);
    for (let i = 0; i < fresh.layers.length; i++) {
      const got = state.layers[i], want = fresh.layers[i];
      const names = Object.keys(want);
      if (Object.keys(got).length !== names.length) return `layer ${i} has arrays ${Object.keys(got).join(", ")}, expected ${names.join(", ")}`;
      for (const name of names) {
        if (!got[name]) return `layer ${i} lacks ${name}`;
        if (!growing.has(name) && got[name].length !== want[name].length) return `layer ${i} ${name} has ${got[name].length} values, expected ${want[name].length}`;
      }
      const problem = this.arch.checkGrowingState?.(this.config, got);
      if (problem) return `layer ${i}: ${problem}`;
    }
    return null;
  }

  forward(tokens: readonly number[], state: State, options: ForwardOptions = {}): Promise<Float32Array> {
    if (tokens.length === 0) return Promise.reject(new RwkvInputError("forward", "empty token sequence"));
    const ids = [...tokens]; // the caller may reuse its array before the call runs
    return this.serial(() => this.run(ids, ids.length, [state], options.allLogits ? "all" : "last", "logits"));
  }

  hidden(tokens: readonly number[], state: State, options: ForwardOptions = {}): Promise<Float32Array> {
    if (tokens.length === 0) return Promise.reject(new RwkvInputError("hidden", "empty token sequence"));
    const ids = [...tokens];
    return this.serial(() => this.run(ids, ids.length, [state], options.allLogits ? "all" : "last", "hidden"));
  }

  stepBatch(tokens: readonly number[], states: readonly State[]): Promise<Float32Array> {
    if (tokens.length !== states.length) return Promise.reject(new RwkvInputError("stepBatch", `${tokens.length} tokens for ${states.length} states`));
    if (tokens.length === 0) return Promise.resolve(new Float32Array(0));
    if (new Set(states).size !== states.length) return Promise.reject(new RwkvInputError("stepBatch", "the same state appears twice in one batch"));
    const ids = [...tokens], sts = [...states];
    return this.serial(() => this.run(ids, 1, sts, "all", "logits"));
  }

  /**
   * Runs `f` once every call made before it has settled, so two callers never share the arena or
   * see each other's half-updated state. The CPU backends make `f` synchronous; an asynchronous
   * backend's `f` returns a promise and the next call waits for it.
   */
  private serial<R>(f: () => R | Promise<R>): Promise<R> {
    const result = this.queue.then(f);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /**
   * B = states.length sequences of T tokens each (tokens row-major (B, T)); logits (or the normed
   * hidden state the head reads) of every row or each sequence's last.
   */
  private async run(tokens: readonly number[], T: number, states: readonly State[], which: "all" | "last", out: "logits" | "hidden"): Promise<Float32Array> {
    const { nEmbd: C, vocabSize: V, nLayer: L } = this.config;
    const B = states.length;
    for (const state of states) {
      const own = this.config.version;
      if (own !== state.version || state.layers.length !== L) {
        throw new RwkvInputError("state", `belongs to RWKV-${state.version} with ${state.layers.length} layers, not this RWKV-${this.config.version} model with ${L}`);
      }
      if (state.adapter !== undefined && !this.adapters.has(state.adapter)) {
        const known = this.adapters.names;
        throw new RwkvInputError("state", `uses adapter "${state.adapter}", which this model has not loaded (${known.length ? `loaded: ${known.join(", ")}` : "none loaded"})`);
      }
    }
    const adapterOf = states.map((st) => st.adapter);
    const be = this.backend, K = be.tensors, A = this.arena;
    const growing = new Set(this.arch.growingState ?? []);
    if (be.residentArray) {
      for (const st of states) for (const l of st.layers) for (const name in l) if (!growing.has(name)) l[name] = be.residentArray(l[name]);
    }
    for (const tok of tokens) {
      if (!Number.isInteger(tok) || tok < 0 || tok >= V) throw new RwkvInputError("forward", `token id ${tok} is outside the vocabulary 0..${V - 1}`);
    }
    A.rewind(0);
    const bound = states.map((st) => st.layers.map((l) => bindLayer(K, l, A, growing)));
    const width = out === "hidden" ? C : V;
    const chunk = B === 1 ? Math.min(T, SEQUENCE_CHUNK) : T;
    // One chunk (every step): the read is the returned array itself, the only one made per token.
    // Reads are asynchronous (a GPU's come back after the commands run) and snapshot the tensor
    // where they are made, so the arena can be reused by the next chunk before they resolve.
    let result: Float32Array | null = null; // (rows, width)
    const reads: Array<Promise<Float32Array>> = [];
    const pending: Array<Promise<unknown>> = [];
    for (let t0 = 0; t0 < T; t0 += chunk) {
      const n = Math.min(chunk, T - t0), last = t0 + n === T;
      const m = A.mark();
      this.adapters.select(adapterOf, n);
      const x = this.layers(tokens, T, t0, n, bound, states, pending); // (B·n, C)
      if (which === "all" || last) {
        const rows = which === "all" ? B * n : B;
        this.adapters.select(adapterOf, which === "all" ? n : 1);
        const y = this.project(x, rows, out, which === "all" ? 1 : n); // (rows, width)
        if (chunk === T) reads.push(K.readAsync(y, rows));
        else reads.push(K.readAsync(y, rows, (result ??= new Float32Array((which === "all" ? B * T : B) * width)), which === "all" ? t0 * width : 0));
      }
      A.rewind(m);
    }
    this.adapters.select([], 0);
    states.forEach((st, b) => st.layers.forEach((l, i) => { for (const name in l) if (!growing.has(name)) K.unbindState(l[name], bound[b][i][name]); }));
    if (K.stateDevice) for (const st of states) st.heldBy(K.stateDevice);
    const got = await Promise.all(reads);
    await Promise.all(pending);
    return result ?? got[0];
  }

  /** x (B·n, C) after every layer for tokens t0 … t0+n-1 of each sequence. */
  private layers(tokens: readonly number[], T: number, t0: number, n: number, bound: LayerTensors[][], states: readonly State[], pending: Array<Promise<unknown>>): Tensor {
    const { nEmbd: C, nLayer: L } = this.config;
    const K = this.adapters.backend.tensors, A = this.arena; // with the selected adapters' norms
    const B = bound.length, R = B * n;
    const x = A.take(R, C); // (B·n, C)
    const ids: number[] = []; // (B·n) the token of each row
    for (let b = 0; b < B; b++) for (let t = 0; t < n; t++) ids.push(tokens[b * T + t0 + t]);
    if (this.emb) {
      const emb = this.emb;
      ids.forEach((tok, row) => K.write(x, row * C, emb, tok * C, C));
    } else {
      const { table, weight, bias, row: buf } = this.embStored!;
      const Kb = this.backend.tensors, raw = A.take(R, C); // (B·n, C) the rows as stored, widened
      ids.forEach((tok, row) => { decodeWeightRow(table, tok, buf); Kb.write(raw, row * C, buf, 0, C); });
      Kb.layerNorm(x, raw, weight, bias, LAYER_NORM_EPS); // ln0
    }
    const shared: Record<string, Tensor> = {};
    for (const [name, cols] of Object.entries(this.arch.sequenceTensors?.(this.config) ?? {})) shared[name] = A.take(R, cols); // (B·n, cols)
    const ctx: ForwardContext = { arena: A, shared, tokens: ids, states, pending };
    const base = A.mark();
    for (let i = 0; i < L; i++) {
      const { ln1, ln2, mix } = this.blocks[i];
      const s = bound.map((layers) => layers[i]);
      const att = mix.attention?.(x, n, s, ctx) ?? null; // (B·n, C)
      let xx = A.take(R, C); // (B·n, C)
      K.layerNorm(xx, x, ln1.weight, ln1.bias, LAYER_NORM_EPS);
      K.add(x, mix.timeMix(xx, n, s, ctx)); // (B·n, C)
      if (att) K.add(x, att); // x + TimeMix + attention, in the official order
      A.rewind(base);
      xx = A.take(R, C); // (B·n, C)
      K.layerNorm(xx, x, ln2.weight, ln2.bias, LAYER_NORM_EPS);
      K.add(x, mix.channelMix(xx, n, s, ctx)); // (B·n, C)
      A.rewind(base);
    }
    return x;
  }

  /**
   * Logits (V) or the normed hidden state (C) of `rows` rows: every row of x, or with `seqLen` the
   * last row of each sequence of seqLen rows. An arena tensor (rows, V or C).
   */
  private project(x: Tensor, rows: number, out: "logits" | "hidden", seqLen: number): Tensor {
    const { nEmbd: C, vocabSize: V } = this.config;
    const K = this.adapters.backend.tensors, A = this.arena; // with the selected adapters' ln_out and head LoRA
    let h = x; // (rows, C)
    if (seqLen > 1) {
      h = A.take(rows, C);
      for (let b = 0; b < rows; b++) K.copyRows(h, b, x, (b + 1) * seqLen - 1, 1);
    }
    const normed = A.take(rows, C); // (rows, C)
    K.layerNorm(normed, h, this.lnOut.weight, this.lnOut.bias, LAYER_NORM_EPS);
    if (out === "hidden") return normed;
    const logits = A.take(rows, V); // (rows, V)
    K.matmul(logits, normed, this.head);
    return logits;
  }
}

/** A layer's state arrays as tensors (in place where the backend can). */
function bindLayer(K: TensorKernels, l: LayerState, arena: Arena, growing: ReadonlySet<string>): LayerTensors {
  const out: LayerTensors = {};
  for (const name in l) if (!growing.has(name)) out[name] = K.bindState(l[name], arena);
  return out;
}

/**
 * LN(emb; blocks.0.ln0) of the whole vocabulary, (V, C): computed once per Weights (DeepEmbed's
 * load-time folds read it too).
 */
export function lnZeroEmbedding(w: Weights, backend: Backend, cfg: Pick<ModelConfig, "vocabSize" | "nEmbd">, emb?: Float32Array): Float32Array {
  const { vocabSize: V, nEmbd: C } = cfg;
  let e = LN0_CACHE.get(w);
  if (!e) {
    // `emb`: the raw embedding when the caller already read it (each tensor is read once per load);
    // it is normed in place (its caller keeps only the normed one), LN0_ROWS rows at a time, so the
    // vocabulary's (V, C) table never exists twice.
    e = emb ?? w.dense("emb.weight", V, C); // (V, C)
    const weight = w.vec("blocks.0.ln0.weight", C), bias = w.vec("blocks.0.ln0.bias", C);
    for (let r = 0; r < V; r += LN0_ROWS) {
      const rows = Math.min(LN0_ROWS, V - r);
      const part = e.subarray(r * C, (r + rows) * C); // (rows, C)
      part.set(backend.layerNorm(part, rows, C, weight, bias, LAYER_NORM_EPS));
    }
    LN0_CACHE.set(w, e);
  }
  return e;
}

const LN0_CACHE = new WeakMap<Weights, Float32Array>();
/** Rows layer-normed per call at load: each row is normed alone, so any chunk gives the same bits. */
const LN0_ROWS = 512;

/** Elements hashed per tensor: enough to tell trained models apart, cheap for billions of weights. */
const FINGERPRINT_SAMPLES = 1 << 16;

/** Evenly spaced rows of a matrix as f32: the same values whatever its storage type. */
function sampledRows(m: Matrix): Float32Array {
  const n = Math.min(m.rows, FINGERPRINT_ROWS);
  const out = new Float32Array(n * m.cols);
  for (let i = 0; i < n; i++) decodeWeightRow(m, Math.floor((i * m.rows) / n), out.subarray(i * m.cols, (i + 1) * m.cols));
  return out;
}

const FINGERPRINT_ROWS = 64;

/**
 * The elements of an array of `length` that fingerprint() hashes (every step-th), gathered: hashed
 * in turn they give the same fingerprint as the whole array, without keeping the whole array.
 */
function fingerprintSample(length: number, get: (i: number) => number): Float32Array {
  const step = Math.max(1, Math.floor(length / FINGERPRINT_SAMPLES));
  const out = new Float32Array(Math.ceil(length / step));
  for (let i = 0, k = 0; i < length; i += step, k++) out[k] = get(i);
  return out;
}

/** 64-bit FNV-1a (as two 32-bit lanes) over a string and a strided sample of each array's bits. */
function fingerprint(text: string, arrays: Float32Array[]): string {
  let a = 0x811c9dc5, b = 0x01000193 ^ 0x5bd1e995;
  const mix = (x: number) => {
    a = Math.imul(a ^ x, 0x01000193) >>> 0;
    b = Math.imul(b ^ x, 0x5bd1e995) >>> 0;
  };
  for (let i = 0; i < text.length; i++) mix(text.charCodeAt(i));
  for (const arr of arrays) {
    const bits = new Uint32Array(arr.buffer, arr.byteOffset, arr.length);
    const step = Math.max(1, Math.floor(bits.length / FINGERPRINT_SAMPLES));
    for (let i = 0; i < bits.length; i += step) mix(bits[i]);
  }
  return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
}

/** Runs `f(b, row0)` for each of B sequences of T rows: a per-sequence kernel (shift, WKV scan). */
export function eachSequence(B: number, T: number, f: (b: number, row0: number) => void): void {
  for (let b = 0; b < B; b++) f(b, b * T);
}

export interface BuildOptions extends Pick<WeightOptions, "matrices"> {
  /** Told about tensors the model does not use but that are known to be harmless (training leftovers). */
  readonly onWarning?: (message: string) => void;
}

/** Refuses checkpoints with tensors no supported version uses (see checkUnreadTensors). */
export function buildModel(ckpt: Checkpoint, arch: Architecture, version: Version, backend: Backend, options: BuildOptions = {}): RwkvModel {
  const w = new Weights(ckpt, arch.name, { matrices: options.matrices, backend });
  const cfg = versionModule(version).inferConfig(checkpointShapes(ckpt));
  const model = new RwkvModel(cfg, arch, w, backend);
  const leftovers = checkUnreadTensors(ckpt, version, arch, w.unread());
  if (leftovers.length) options.onWarning?.(`${ckpt.source}: ignoring ${leftovers.length} tensor(s) left over from training: ${leftovers.slice(0, 8).join(", ")}${leftovers.length > 8 ? ", ..." : ""}`);
  return model;
}
