import { RwkvInputError } from "../errors.js";
import { LAYER_NORM_EPS, type ModelConfig, type Version } from "../model/model.js";
import { checkpointShapes } from "../model/shapes.js";
import { detectFromNames, type VersionModule, versionsWith } from "../model/versions.js";
import type { Matrix } from "../backend/backend.js";
import { type Buf, type TrainDType, type TrainKernels, referenceTrainKernels } from "../backend/train-kernels.js";
import { decodeWeightRow } from "../backend/weight-rows.js";
import { f16ToF32 } from "../tensor.js";
import { CompactVar, type Graph, LoraVar, type MatrixDecoder, type Var } from "./graph.js";
import { matrixShape, type ParamStore, storeCheckpoint } from "./params.js";
import type { ParamVar, TrainCtx, TrainSupport } from "./version.js";

/*
 * The training forward in GPT mode (SPEC §7): B sequences of T tokens as (B·T, C) rows, every
 * sequence from a zero state. Each version's blocks (src/core/model/vN/train.ts) are the math of its
 * inference block written with the ops of graph.ts so that each has its backward.
 *
 *   x = LN(emb[tokens]; ln0)
 *   per block: x += TimeMix(LN(x; ln1));  x += ChannelMix(LN(x; ln2))
 *   logits = LN(x; ln_out) · headᵀ
 *
 * Letters: B batch, T steps, R = B·T rows, C = n_embd, A = dim_att, F = dim_ffn, H heads,
 * N head size, V vocabulary, D* LoRA widths.
 */

/** Versions whose module can train (kept for callers that name the type). */
export type TrainVersion = Version;

// ---------------------------------------------------------------- the model

export interface TrainModelOptions {
  readonly kernels?: TrainKernels;
  /**
   * Parameter-efficient tuning: only these parameters get gradients and updates; the rest is the
   * frozen base. A weight with `<prefix>.lora_A/B` in the store is used as W + loraScale · B A.
   */
  readonly trainable?: ReadonlySet<string>;
  readonly loraScale?: number;
  /** Elements of the decode scratch of compact frozen matrices at most (default DECODE_LIMIT): larger ones are decoded in chunks of rows. */
  readonly decodeLimit?: number;
}

/**
 * 2^24 elements (64 MiB of f32): every Linear weight of the released models up to 1.5B decodes
 * whole; a larger one (a 65536-token head) goes by chunks of rows, so the scratch never holds it.
 */
export const DECODE_LIMIT = 1 << 24;

export class TrainModel {
  readonly config: ModelConfig;
  readonly kernels: TrainKernels;
  private readonly module: VersionModule;
  private readonly train: TrainSupport;

  /** With kernels that keep tensors in their own memory (wasm), the store's tensors move there. */
  constructor(readonly params: ParamStore, options: TrainModelOptions = {}) {
    this.module = trainableModule(params);
    this.train = this.module.train!;
    this.config = this.module.inferConfig(checkpointShapes(storeCheckpoint(params, "model")));
    this.kernels = options.kernels ?? referenceTrainKernels;
    this.trainable = options.trainable ?? null;
    this.loraScale = options.loraScale ?? 1;
    this.kernels.placeParams?.(params);
    let largest = 0, widest = 0;
    for (const p of params.list) {
      if (!p.compact) continue;
      largest = Math.max(largest, p.compact.rows * p.compact.cols);
      widest = Math.max(widest, p.compact.cols);
    }
    const limit = Math.max(widest, options.decodeLimit ?? DECODE_LIMIT); // at least one row
    this.decoder = largest > 0 ? new ScratchDecoder(this.kernels.alloc(params.dtype, Math.min(largest, limit))) : null;
  }

  private readonly trainable: ReadonlySet<string> | null;
  private readonly loraScale: number;
  /** Decodes the compact frozen matrices (QLoRA), one at a time, into one scratch the size of the largest. */
  private readonly decoder: ScratchDecoder | null;

  /** Bytes of the decode scratch (0 without compact matrices). */
  get scratchBytes(): number {
    return this.decoder?.scratch.byteLength ?? 0;
  }

  /** Parameters the optimizer must leave alone: unused ones and, when tuning adapters, the base. */
  frozenParams(): ReadonlySet<string> {
    const frozen = new Set(this.unusedParams());
    if (this.trainable) for (const p of this.params.list) if (!this.trainable.has(p.name)) frozen.add(p.name);
    return frozen;
  }

  get dtype(): TrainDType {
    return this.params.dtype;
  }

  /**
   * Parameters the forward never reads: v7 layer 0's v0/v1/v2 (its v is v_first). The official
   * trainer leaves them without gradient, so the optimizer must not touch them (no decay either).
   */
  unusedParams(): ReadonlySet<string> {
    const unused = this.module.architecture.unusedByDesign;
    return new Set(unused ? this.params.list.map((p) => p.name).filter((n) => unused.test(n)) : []);
  }

  /** The logits (B·T, V) of tokens (B·T, row-major (B, T)); with `g.recording` every op is taped. */
  forward(g: Graph, tokens: Int32Array, B: number, T: number): Var {
    const { nLayer: L, vocabSize: V } = this.config;
    if (tokens.length !== B * T) throw new RwkvInputError("train", `${tokens.length} tokens for a batch of ${B} x ${T}`);
    for (const t of tokens) if (t < 0 || t >= V) throw new RwkvInputError("train", `token id ${t} is outside the vocabulary 0..${V - 1}`);
    const vars = new Map<string, Var>();
    const leaf = (name: string): Var => {
      const p = this.params.get(name);
      if (p.compact) return new CompactVar(p.compact, this.decoder!);
      const [rows, cols] = matrixShape(name, p.shape);
      return g.leaf(p.data, rows, cols, this.trainable && !this.trainable.has(name) ? null : p.grad);
    };
    const P: ParamVar = (name) => {
      let v = vars.get(name);
      if (!v) {
        v = leaf(name);
        const prefix = name.endsWith(".weight") ? name.slice(0, -".weight".length) : null;
        if (prefix !== null && this.params.has(prefix + ".lora_A")) {
          // W + s · B A, applied by linear() as x Wᵀ + s · (x Aᵀ) Bᵀ.
          v = new LoraVar(v, leaf(prefix + ".lora_A"), leaf(prefix + ".lora_B"), this.loraScale);
        }
        vars.set(name, v);
      }
      return v;
    };
    const blocks = this.train.blocks;
    const ctx: TrainCtx = { B, T, vFirst: null, has: (n) => this.params.has(n) };
    let x = g.layerNorm(g.embedding(P("emb.weight"), tokens), P("blocks.0.ln0.weight"), P("blocks.0.ln0.bias"), LAYER_NORM_EPS); // (R, C)
    for (let i = 0; i < L; i++) {
      const b = `blocks.${i}.`;
      x = g.add(x, blocks.timeMix(g, P, i, g.layerNorm(x, P(b + "ln1.weight"), P(b + "ln1.bias"), LAYER_NORM_EPS), this.config, ctx)); // (R, C)
      x = g.add(x, blocks.channelMix(g, P, i, g.layerNorm(x, P(b + "ln2.weight"), P(b + "ln2.bias"), LAYER_NORM_EPS), this.config, ctx)); // (R, C)
    }
    return g.linear(g.layerNorm(x, P("ln_out.weight"), P("ln_out.bias"), LAYER_NORM_EPS), P("head.weight")); // (R, V)
  }
}

/**
 * Decodes compact matrices into one reused scratch (at most `limit` elements; larger matrices go
 * by chunks of rows); the chunk decoded last is kept (a forward's last product is its backward's first).
 */
class ScratchDecoder implements MatrixDecoder {
  private last: { m: Matrix; r0: number; n: number } | null = null;

  constructor(readonly scratch: Buf) {}

  chunkRows(m: Matrix): number {
    return Math.max(1, Math.min(m.rows, Math.floor(this.scratch.length / m.cols)));
  }

  decode(m: Matrix, r0 = 0, n = m.rows): Buf {
    const I = m.cols;
    if (n * I > this.scratch.length) throw new Error(`a ${m.rows}x${I} compact matrix does not fit the ${this.scratch.length}-element decode scratch`);
    const out = this.scratch.subarray(0, n * I);
    const l = this.last;
    if (l && l.m === m && l.r0 === r0 && l.n === n) return out;
    if (out instanceof Float32Array && (m.type === "f16" || m.type === "bf16")) {
      // The common QLoRA bases, decoded a word at a time (decodeWeightRow's values exactly): f16 by table, bf16 by shift.
      const bits = (m.data as Uint16Array).subarray(r0 * I, (r0 + n) * I);
      if (m.type === "f16") {
        const table = f16Table();
        for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
      } else {
        const words = new Uint32Array(out.buffer, out.byteOffset, bits.length);
        for (let i = 0; i < bits.length; i++) words[i] = bits[i] << 16;
      }
    } else if (out instanceof Float32Array && m.type === "q8_0") {
      // ggml's Q8_0 (ggml-quants.ts): blocks of an f16 scale d and 32 int8 q, w = q·d.
      const table = f16Table(), bytes = m.data as Uint8Array, rowBytes = (I / Q8_BLOCK) * Q8_BLOCK_BYTES;
      for (let b = r0 * rowBytes, end = (r0 + n) * rowBytes, o = 0; b < end; b += Q8_BLOCK_BYTES, o += Q8_BLOCK) {
        const d = table[bytes[b] | (bytes[b + 1] << 8)];
        for (let j = 0; j < Q8_BLOCK; j++) out[o + j] = ((bytes[b + 2 + j] << 24) >> 24) * d;
      }
    } else if (out instanceof Float32Array) {
      for (let r = 0; r < n; r++) decodeWeightRow(m, r0 + r, out.subarray(r * I, (r + 1) * I));
    } else {
      const row = new Float32Array(I);
      for (let r = 0; r < n; r++) out.set(decodeWeightRow(m, r0 + r, row), r * I);
    }
    this.last = { m, r0, n };
    return out;
  }
}

/** ggml's Q8_0 block: 32 weights, an f16 scale then 32 int8. */
const Q8_BLOCK = 32, Q8_BLOCK_BYTES = 2 + Q8_BLOCK;

let f16Values: Float32Array | null = null;

/** Every f16 bit pattern's value (256 KiB, made on first use). */
function f16Table(): Float32Array {
  if (!f16Values) {
    f16Values = new Float32Array(1 << 16);
    for (let h = 0; h < f16Values.length; h++) f16Values[h] = f16ToF32(h);
  }
  return f16Values;
}

/** The version module of a store's model, which must be one that trains. */
function trainableModule(params: ParamStore): VersionModule {
  const m = detectFromNames((n) => params.has(n), "model");
  if (!m.train) throw new RwkvInputError("model", `training supports ${versionsWith("train").map((v) => `RWKV-${v}`).join(", ")}; this is ${m.name}`);
  return m;
}

/** Hyper-parameters from tensor names and shapes (as the inference loader infers them). */
export function inferTrainConfig(params: ParamStore): ModelConfig {
  return trainableModule(params).inferConfig(checkpointShapes(storeCheckpoint(params, "model")));
}
