import { RwkvInputError } from "../errors.js";
import { LAYER_NORM_EPS, type ModelConfig, type Version } from "../model/model.js";
import { checkpointShapes } from "../model/shapes.js";
import { detectFromNames, type VersionModule, versionsWith } from "../model/versions.js";
import type { Graph, Var } from "./graph.js";
import { type TrainDType, type TrainKernels, referenceTrainKernels } from "../backend/train-kernels.js";
import { type ParamStore, storeCheckpoint } from "./params.js";
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
}

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
  }

  private readonly trainable: ReadonlySet<string> | null;
  private readonly loraScale: number;

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
      const [rows, cols] = matrixShape(name, p.shape);
      return g.leaf(p.data, rows, cols, this.trainable && !this.trainable.has(name) ? null : p.grad);
    };
    const P: ParamVar = (name) => {
      let v = vars.get(name);
      if (!v) {
        v = leaf(name);
        const prefix = name.endsWith(".weight") ? name.slice(0, -".weight".length) : null;
        if (prefix !== null && this.params.has(prefix + ".lora_A")) {
          // W + s · B A: B (out, r) projected by A (r, in) gives the (out, in) update.
          v = g.add(v, g.scale(g.project(leaf(prefix + ".lora_B"), leaf(prefix + ".lora_A")), this.loraScale));
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
 * How the forward sees a parameter: matrices as (rows, cols) (Linear (out, in), LoRA (in, out),
 * v6's (5, Dm, C) stack as (5·Dm, C)); everything else — (1,1,C) mixes, (H,N) r_k / time_decay /
 * time_faaaa, norms — as one flat row vector (1, n) broadcast over rows.
 */
function matrixShape(name: string, shape: readonly number[]): [number, number] {
  const n = shape.reduce((a, b) => a * b, 1);
  if (name.endsWith("time_maa_w2") && shape.length === 3) return [shape[0] * shape[1], shape[2]];
  const vector = name.endsWith(".r_k") || /\.time_(decay|faaaa|first)$/.test(name);
  if (shape.length === 2 && !vector) return [shape[0], shape[1]];
  return [1, n];
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
