import type { Backend, Matrix } from "../backend/backend.js";
import { RwkvInputError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { checkUnreadTensors } from "./unknown-tensors.js";
import { State } from "./state.js";
import { decodeWeightRow } from "../backend/weight-rows.js";
import { type WeightOptions, Weights } from "./weights.js";

/*
 * The skeleton shared by every RWKV version (SPEC §1):
 *   x = LN(emb[token]; ln0);  for each block: x += TimeMix(LN1(x)); x += ChannelMix(LN2(x));
 *   logits = head · LN(x; ln_out)
 * A version file (v4.ts ... v7.ts) supplies the two mixers and its state layout. Every mixer works
 * on a whole sequence: the one-token step is the T = 1 case of the same code, so the recurrent and
 * the parallel form cannot drift apart.
 *
 * Letters: T tokens, C = n_embd, V vocabulary.
 */

export type Version = "4" | "5.1" | "5.2" | "6" | "7";

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

export interface Model {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /**
   * Identifies these weights (not just this shape): a hash of the config and a strided sample of
   * the embedding and head. Saved states record it so they are never loaded into another model.
   */
  readonly fingerprint: string;
  /** The starting state: zeros, or the trained `time_state` of a state-tuned checkpoint. */
  initState(): State;
  /**
   * Makes the `blocks.i.att.time_state` tensors of `ckpt` (this model's own file or a separate
   * state-tuning file) the starting state returned by initState().
   */
  useTimeState(ckpt: Checkpoint): void;
  /** Logits (V) after `token`; advances `state`. */
  step(token: number, state: State): Float32Array;
  /** Runs `tokens` as one sequence from `state` (advancing it): last logits (V) or all (T, V). */
  forward(tokens: readonly number[], state: State, options?: ForwardOptions): Float32Array;
  /**
   * One token for each of several independent sequences (batched decoding): tokens[b] advances
   * states[b]. Returns logits (B, V), equal to B separate step() calls.
   */
  stepBatch(tokens: readonly number[], states: readonly State[]): Float32Array;
  /**
   * Like forward(), but returns the final hidden state, LN(x; ln_out) — what the head multiplies
   * into logits — for the last position (C) or all (T, C); advances `state` the same way.
   * Optional so that wrappers and test doubles of Model need not provide it; RwkvModel does.
   */
  hidden?(tokens: readonly number[], state: State, options?: ForwardOptions): Float32Array;
}

/** Per-forward scratch shared between layers (v7 passes layer 0's v to later layers). */
export type SequenceContext = Record<string, Float32Array>;

/** One layer's part of a State. */
export type LayerState = Record<string, Float32Array>;

/**
 * One block's two mixers. Inputs are the layer-normed activations of B = states.length independent
 * sequences of T tokens each, rows b·T … b·T+T-1 belonging to states[b]; outputs are residual
 * deltas. B = 1 is one sequence (prefill, step); B > 1 with T = 1 decodes many sequences in one
 * matrix-matrix product per projection.
 */
export interface Block {
  timeMix(xx: Float32Array, T: number, states: LayerState[], ctx: SequenceContext): Float32Array; // (B·T, C) -> (B·T, C)
  channelMix(xx: Float32Array, T: number, states: LayerState[]): Float32Array; // (B·T, C) -> (B·T, C)
}

/** What a version file provides. */
export interface Architecture {
  /** Display name used in messages, e.g. "RWKV-7". */
  readonly name: string;
  /** Hyper-parameters inferred from tensor shapes. */
  inferConfig(w: Weights, version: Version): ModelConfig;
  block(w: Weights, layer: number, cfg: ModelConfig, be: Backend): Block;
  /** Zero state of one layer. */
  initLayerState(cfg: ModelConfig): Record<string, Float32Array>;
  /**
   * A state-tuned `blocks.i.att.time_state` (H, N, N) as stored in checkpoints, converted to this
   * version's `att_kv` layout. Absent for versions without state tuning.
   */
  timeStateToKv?(cfg: ModelConfig, timeState: Float32Array): Float32Array;
}

/** LayerNorm eps of every `ln*` in all versions. */
export const LAYER_NORM_EPS = 1e-5;

interface Norm { weight: Float32Array; bias: Float32Array }

export class RwkvModel implements Model {
  private readonly emb: Float32Array; // (V, C), ln0 already applied
  private readonly blocks: Array<{ ln1: Norm; ln2: Norm; mix: Block }>;
  private readonly lnOut: Norm;
  private readonly head: Matrix; // (V, C)
  readonly fingerprint: string;
  private initial: State;

  constructor(readonly config: ModelConfig, private readonly arch: Architecture, w: Weights, readonly backend: Backend) {
    const ckpt = w.ckpt;
    const { nLayer: L, nEmbd: C, vocabSize: V } = config;
    const norm = (p: string): Norm => ({ weight: w.vec(`${p}.weight`, C), bias: w.vec(`${p}.bias`, C) });
    const ln0 = norm("blocks.0.ln0");
    const emb = w.dense("emb.weight", V, C); // (V, C)
    // Precompute ln0 over the whole embedding as the official inference code does (SPEC gotcha 8).
    this.emb = backend.layerNorm(emb, V, C, ln0.weight, ln0.bias, LAYER_NORM_EPS); // (V, C)
    this.blocks = [];
    for (let i = 0; i < L; i++) {
      this.blocks.push({ ln1: norm(`blocks.${i}.ln1`), ln2: norm(`blocks.${i}.ln2`), mix: arch.block(w, i, config, backend) });
    }
    this.lnOut = norm("ln_out");
    this.head = w.linear("head.weight", V, C);
    this.fingerprint = fingerprint(JSON.stringify(config), [emb, sampledRows(this.head)]);
    this.initial = new State(config.version, Array.from({ length: L }, () => arch.initLayerState(config)));
    // Read through `w`, so the time_state tensors count as used by the unknown-tensor check.
    if (ckpt.tensors.has("blocks.0.att.time_state")) this.useTimeState(ckpt, w);
  }

  initState(): State {
    return this.initial.clone();
  }

  useTimeState(ckpt: Checkpoint, weights?: Weights): void {
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
    this.initial = initial;
  }

  step(token: number, state: State): Float32Array {
    return this.forward([token], state);
  }

  forward(tokens: readonly number[], state: State, options: ForwardOptions = {}): Float32Array {
    if (tokens.length === 0) throw new RwkvInputError("forward", "empty token sequence");
    return this.run(tokens, tokens.length, [state], options.allLogits ? "all" : "last", "logits");
  }

  hidden(tokens: readonly number[], state: State, options: ForwardOptions = {}): Float32Array {
    if (tokens.length === 0) throw new RwkvInputError("hidden", "empty token sequence");
    return this.run(tokens, tokens.length, [state], options.allLogits ? "all" : "last", "hidden");
  }

  stepBatch(tokens: readonly number[], states: readonly State[]): Float32Array {
    if (tokens.length !== states.length) throw new RwkvInputError("stepBatch", `${tokens.length} tokens for ${states.length} states`);
    if (tokens.length === 0) return new Float32Array(0);
    if (new Set(states).size !== states.length) throw new RwkvInputError("stepBatch", "the same state appears twice in one batch");
    return this.run(tokens, 1, states, "all", "logits");
  }

  /**
   * B = states.length sequences of T tokens each (tokens row-major (B, T)); logits (or the normed
   * hidden state the head reads) of every row or each sequence's last.
   */
  private run(tokens: readonly number[], T: number, states: readonly State[], which: "all" | "last", out: "logits" | "hidden"): Float32Array {
    const { nEmbd: C, vocabSize: V, nLayer: L } = this.config;
    const B = states.length;
    for (const state of states) {
      if (state.version !== this.config.version || state.layers.length !== L) {
        throw new RwkvInputError("state", `belongs to RWKV-${state.version} with ${state.layers.length} layers, not this RWKV-${this.config.version} model with ${L}`);
      }
    }
    const be = this.backend;
    if (be.residentArray) {
      for (const st of states) for (const l of st.layers) for (const name in l) l[name] = be.residentArray(l[name]);
    }
    const R = B * T;
    const x = new Float32Array(R * C); // (B·T, C)
    for (let n = 0; n < R; n++) {
      const tok = tokens[n];
      if (!Number.isInteger(tok) || tok < 0 || tok >= V) throw new RwkvInputError("forward", `token id ${tok} is outside the vocabulary 0..${V - 1}`);
      x.set(this.emb.subarray(tok * C, tok * C + C), n * C);
    }
    const ctx: SequenceContext = {};
    for (let i = 0; i < L; i++) {
      const { ln1, ln2, mix } = this.blocks[i];
      const s = states.map((st) => st.layers[i]);
      addInPlace(x, mix.timeMix(be.layerNorm(x, R, C, ln1.weight, ln1.bias, LAYER_NORM_EPS), T, s, ctx)); // (B·T, C)
      addInPlace(x, mix.channelMix(be.layerNorm(x, R, C, ln2.weight, ln2.bias, LAYER_NORM_EPS), T, s)); // (B·T, C)
    }
    let h: Float32Array; // (rows, C)
    if (which === "all") {
      h = x;
    } else {
      h = new Float32Array(B * C);
      for (let b = 0; b < B; b++) h.set(x.subarray(((b + 1) * T - 1) * C, (b + 1) * T * C), b * C);
    }
    const rows = h.length / C;
    const normed = be.layerNorm(h, rows, C, this.lnOut.weight, this.lnOut.bias, LAYER_NORM_EPS); // (rows, C)
    return out === "hidden" ? normed : be.matmul(normed, rows, this.head); // (rows, C) or (rows, V)
  }
}

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

export function addInPlace(x: Float32Array, d: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] += d[i];
}

/**
 * Token shift: the previous position's layer-normed input for each row, (B·T, C); each sequence's
 * first row takes its carried `prevs[b]` (C), which then becomes its last row. (SPEC gotcha 1.)
 */
export function tokenShift(xx: Float32Array, T: number, C: number, prevs: Float32Array[]): Float32Array {
  const sx = new Float32Array(xx.length); // (B·T, C)
  prevs.forEach((prev, b) => {
    const o = b * T * C;
    sx.set(prev, o);
    sx.set(xx.subarray(o, o + (T - 1) * C), o + C);
    prev.set(xx.subarray(o + (T - 1) * C, o + T * C));
  });
  return sx;
}

/**
 * Runs a per-sequence kernel (a WKV scan over its own state) for each of B sequences of T rows and
 * concatenates the results (B·T, W). `rows(x)` is sequence b's slice of a (B·T, W) input.
 */
export function bySequence(B: number, T: number, W: number, f: (b: number, rows: (x: Float32Array) => Float32Array) => Float32Array): Float32Array {
  if (B === 1) return f(0, (x) => x);
  const out = new Float32Array(B * T * W); // (B·T, W)
  for (let b = 0; b < B; b++) out.set(f(b, (x) => x.subarray(b * T * W, (b + 1) * T * W)), b * T * W);
  return out;
}

export interface BuildOptions extends Pick<WeightOptions, "matrices"> {
  /** Told about tensors the model does not use but that are known to be harmless (training leftovers). */
  readonly onWarning?: (message: string) => void;
}

/** Refuses checkpoints with tensors no supported version uses (see checkUnreadTensors). */
export function buildModel(ckpt: Checkpoint, arch: Architecture, version: Version, backend: Backend, options: BuildOptions = {}): RwkvModel {
  const w = new Weights(ckpt, arch.name, { matrices: options.matrices, backend });
  const cfg = arch.inferConfig(w, version);
  const model = new RwkvModel(cfg, arch, w, backend);
  const leftovers = checkUnreadTensors(ckpt, version, w.unread());
  if (leftovers.length) options.onWarning?.(`${ckpt.source}: ignoring ${leftovers.length} tensor(s) left over from training: ${leftovers.slice(0, 8).join(", ")}${leftovers.length > 8 ? ", ..." : ""}`);
  return model;
}
