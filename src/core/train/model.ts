import { RwkvInputError } from "../errors.js";
import { detectVersion } from "../model/detect.js";
import { LAYER_NORM_EPS, type ModelConfig, type Version } from "../model/model.js";
import { type Graph, Var } from "./graph.js";
import { type TrainDType, type TrainKernels, referenceTrainKernels } from "./kernels.js";
import { type ParamStore, storeCheckpoint } from "./params.js";

/*
 * The training forward in GPT mode (SPEC §7): B sequences of T tokens as (B·T, C) rows, every
 * sequence from a zero state, the same math as the inference engine (src/core/model/v4.ts … v7.ts)
 * written with the ops of graph.ts so that each has its backward.
 *
 *   x = LN(emb[tokens]; ln0)
 *   per block: x += TimeMix(LN(x; ln1));  x += ChannelMix(LN(x; ln2))
 *   logits = LN(x; ln_out) · headᵀ
 *
 * Letters: B batch, T steps, R = B·T rows, C = n_embd, A = dim_att, F = dim_ffn, H heads,
 * N head size, V vocabulary, D* LoRA widths.
 */

/** GroupNorm (ln_x) eps of v5.2/v6/v7: 1e-5 · head_size_divisor² (8²) in the training code. */
const GROUP_NORM_EPS = 64e-5;

export type TrainVersion = "4" | "5.2" | "6" | "7";
const TRAIN_VERSIONS: readonly Version[] = ["4", "5.2", "6", "7"];

/** A batch shape and what the blocks share within one forward (v7's first-layer value). */
interface Ctx {
  readonly B: number;
  readonly T: number;
  vFirst: Var | null;
  /** Whether the store has a parameter (e.g. a trained time_state). */
  readonly has: (name: string) => boolean;
}

type ParamVar = (name: string) => Var;

interface TrainBlocks {
  timeMix(g: Graph, P: ParamVar, i: number, xx: Var, cfg: ModelConfig, ctx: Ctx): Var;
  channelMix(g: Graph, P: ParamVar, i: number, xx: Var, cfg: ModelConfig, ctx: Ctx): Var;
}

// ---------------------------------------------------------------- v4 (SPEC §3)

const v4Blocks: TrainBlocks = {
  timeMix(g, P, i, xx, _cfg, { B, T }) {
    const a = `blocks.${i}.att.`;
    const sx = g.tokenShift(xx, B, T); // (R, C)
    const k = g.linear(g.mix(xx, sx, P(a + "time_mix_k")), P(a + "key.weight")); // (R, A)
    const v = g.linear(g.mix(xx, sx, P(a + "time_mix_v")), P(a + "value.weight")); // (R, A)
    const r = g.act("sigmoid", g.linear(g.mix(xx, sx, P(a + "time_mix_r")), P(a + "receptance.weight"))); // (R, A)
    const wkv = g.wkv4(B, T, P(a + "time_decay"), P(a + "time_first"), k, v); // (R, A)
    return g.linear(g.mul(r, wkv), P(a + "output.weight")); // (R, C)
  },
  channelMix: channelMixV4,
};

/** v4/v5 channel mix: σ(W_r mix_r) ⊙ W_v relu²(W_k mix_k). */
function channelMixV4(g: Graph, P: ParamVar, i: number, xx: Var, _cfg: ModelConfig, { B, T }: Ctx): Var {
  const f = `blocks.${i}.ffn.`;
  const sx = g.tokenShift(xx, B, T); // (R, C)
  const k = g.act("relu2", g.linear(g.mix(xx, sx, P(f + "time_mix_k")), P(f + "key.weight"))); // (R, F)
  const kv = g.linear(k, P(f + "value.weight")); // (R, C)
  const r = g.act("sigmoid", g.linear(g.mix(xx, sx, P(f + "time_mix_r")), P(f + "receptance.weight"))); // (R, C)
  return g.mul(r, kv); // (R, C)
}

// ---------------------------------------------------------------- v5.2 (SPEC §4)

const v5Blocks: TrainBlocks = {
  timeMix(g, P, i, xx, cfg, { B, T }) {
    const a = `blocks.${i}.att.`, { nHead: H, headSize: N } = cfg;
    const sx = g.tokenShift(xx, B, T); // (R, C)
    const r = g.linear(g.mix(xx, sx, P(a + "time_mix_r")), P(a + "receptance.weight")); // (R, A)
    const k = g.linear(g.mix(xx, sx, P(a + "time_mix_k")), P(a + "key.weight")); // (R, A)
    const v = g.linear(g.mix(xx, sx, P(a + "time_mix_v")), P(a + "value.weight")); // (R, A)
    const gate = g.act("silu", g.linear(g.mix(xx, sx, P(a + "time_mix_g")), P(a + "gate.weight"))); // (R, A)
    const y = g.wkv5(B, T, H, N, r, k, v, P(a + "time_decay"), P(a + "time_faaaa")); // (R, A)
    const yn = g.groupNorm(y, H, N, P(a + "ln_x.weight"), P(a + "ln_x.bias"), GROUP_NORM_EPS); // (R, A)
    return g.linear(g.mul(yn, gate), P(a + "output.weight")); // (R, C)
  },
  channelMix: channelMixV4,
};

// ---------------------------------------------------------------- v6 (SPEC §5)

/** time_maa_w1's five LoRA blocks, in its column order. */
const V6_MIX_BLOCKS = ["w", "k", "v", "r", "g"] as const;

const v6Blocks: TrainBlocks = {
  timeMix(g, P, i, xx, cfg, { B, T }) {
    const a = `blocks.${i}.att.`, { nHead: H, headSize: N } = cfg;
    const sx = g.tokenShift(xx, B, T); // (R, C)
    const d = g.sub(sx, xx); // (R, C)
    const w1 = P(a + "time_maa_w1"); // (C, 5·Dm)
    const Dm = w1.cols / V6_MIX_BLOCKS.length;
    const m = g.act("tanh", g.project(g.lerp(xx, sx, P(a + "time_maa_x")), w1)); // (R, 5·Dm)
    const w2 = P(a + "time_maa_w2"); // (5, Dm, C) as (5·Dm, C)
    const [xw, xk, xv, xr, xg] = V6_MIX_BLOCKS.map((name, f) => {
      const mf = g.project(g.sliceCols(m, f * Dm, Dm), rowBlock(w2, f * Dm, Dm)); // (R, C)
      return g.lerpDyn(xx, d, P(a + "time_maa_" + name), mf); // (R, C)
    });
    const r = g.linear(xr, P(a + "receptance.weight")); // (R, A)
    const k = g.linear(xk, P(a + "key.weight")); // (R, A)
    const v = g.linear(xv, P(a + "value.weight")); // (R, A)
    const gate = g.act("silu", g.linear(xg, P(a + "gate.weight"))); // (R, A)
    const ww = g.project(g.act("tanh", g.project(xw, P(a + "time_decay_w1"))), P(a + "time_decay_w2")); // (R, A)
    const wraw = g.add(ww, P(a + "time_decay")); // (R, A)
    const y = g.wkv5(B, T, H, N, r, k, v, wraw, P(a + "time_faaaa")); // (R, A)
    const yn = g.groupNorm(y, H, N, P(a + "ln_x.weight"), P(a + "ln_x.bias"), GROUP_NORM_EPS); // (R, A)
    return g.linear(g.mul(yn, gate), P(a + "output.weight")); // (R, C)
  },
  channelMix(g, P, i, xx, _cfg, { B, T }) {
    const f = `blocks.${i}.ffn.`;
    const sx = g.tokenShift(xx, B, T); // (R, C)
    const k = g.act("relu2", g.linear(g.lerp(xx, sx, P(f + "time_maa_k")), P(f + "key.weight"))); // (R, F)
    const kv = g.linear(k, P(f + "value.weight")); // (R, C)
    const r = g.act("sigmoid", g.linear(g.lerp(xx, sx, P(f + "time_maa_r")), P(f + "receptance.weight"))); // (R, C)
    return g.mul(r, kv); // (R, C)
  },
};

/** Rows [r0, r0+n) of a parameter Var as a Var sharing its storage and gradient. */
function rowBlock(p: Var, r0: number, n: number): Var {
  const C = p.cols;
  const grad = p.requiresGrad ? p.g()!.subarray(r0 * C, (r0 + n) * C) : null;
  return new Var(p.data.subarray(r0 * C, (r0 + n) * C), n, C, p.requiresGrad, grad);
}

// ---------------------------------------------------------------- v7 (SPEC §6)

const v7Blocks: TrainBlocks = {
  timeMix(g, P, i, xx, cfg, ctx) {
    const a = `blocks.${i}.att.`, { nHead: H, headSize: N } = cfg, { B, T } = ctx;
    const sx = g.tokenShift(xx, B, T); // (R, C)
    const [xr, xw, xk, xv, xa, xg] = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"].map((m) => g.lerp(xx, sx, P(a + m))); // (R, C) each
    const r = g.linear(xr, P(a + "receptance.weight")); // (R, C)
    const wl = g.project(g.act("tanh", g.project(xw, P(a + "w1"))), P(a + "w2")); // (R, C)
    const wraw = g.act("v7decay", g.add(wl, P(a + "w0"))); // (R, C) soft-clamped log-log decay
    const k = g.linear(xk, P(a + "key.weight")); // (R, C)
    let v = g.linear(xv, P(a + "value.weight")); // (R, C)
    if (i === 0) {
      ctx.vFirst = v;
    } else {
      const gate = g.act("sigmoid", g.add(g.project(g.project(xv, P(a + "v1")), P(a + "v2")), P(a + "v0"))); // (R, C)
      v = g.residualMix(v, ctx.vFirst!, gate); // (R, C)
    }
    const iclr = g.act("sigmoid", g.add(g.project(g.project(xa, P(a + "a1")), P(a + "a2")), P(a + "a0"))); // (R, C)
    const gate = g.project(g.act("sigmoid", g.project(xg, P(a + "g1"))), P(a + "g2")); // (R, C)
    const kk = g.l2Normalize(g.mul(k, P(a + "k_k")), N); // (R, C)
    const k2 = g.keyUpdate(k, iclr, P(a + "k_a")); // (R, C)
    const s0 = ctx.has(a + "time_state") ? P(a + "time_state") : undefined; // (H, N, N) state tuning
    const y = g.wkv7(B, T, H, N, r, wraw, k2, v, g.scale(kk, -1), g.mul(kk, iclr), s0); // (R, C)
    const yn = g.groupNorm(y, H, N, P(a + "ln_x.weight"), P(a + "ln_x.bias"), GROUP_NORM_EPS); // (R, C)
    const out = g.add(yn, g.bonus(r, k2, v, P(a + "r_k"), H, N)); // (R, C)
    return g.linear(g.mul(out, gate), P(a + "output.weight")); // (R, C)
  },
  channelMix(g, P, i, xx, _cfg, { B, T }) {
    const f = `blocks.${i}.ffn.`;
    const sx = g.tokenShift(xx, B, T); // (R, C)
    const k = g.act("relu2", g.linear(g.lerp(xx, sx, P(f + "x_k")), P(f + "key.weight"))); // (R, F)
    return g.linear(k, P(f + "value.weight")); // (R, C)
  },
};

const BLOCKS: Record<TrainVersion, TrainBlocks> = { "4": v4Blocks, "5.2": v5Blocks, "6": v6Blocks, "7": v7Blocks };

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
  readonly config: ModelConfig & { version: TrainVersion };
  readonly kernels: TrainKernels;

  /** With kernels that keep tensors in their own memory (wasm), the store's tensors move there. */
  constructor(readonly params: ParamStore, options: TrainModelOptions = {}) {
    this.config = inferTrainConfig(params);
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
    if (this.config.version !== "7") return new Set();
    return new Set(["v0", "v1", "v2"].map((n) => `blocks.0.att.${n}`).filter((n) => this.params.has(n)));
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
    const blocks = BLOCKS[this.config.version];
    const ctx: Ctx = { B, T, vFirst: null, has: (n) => this.params.has(n) };
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

/** Hyper-parameters from tensor names and shapes (as the inference loader infers them). */
export function inferTrainConfig(params: ParamStore): ModelConfig & { version: TrainVersion } {
  const ckpt = storeCheckpoint(params, "model");
  const version = detectVersion(ckpt);
  if (!(TRAIN_VERSIONS as readonly string[]).includes(version)) {
    throw new RwkvInputError("model", `training supports RWKV-4, 5.2, 6 and 7; this is RWKV-${version}`);
  }
  const shape = (n: string) => params.get(n).shape;
  const [V, C] = shape("emb.weight");
  let L = 0;
  for (const p of params.list) {
    const m = /^blocks\.(\d+)\./.exec(p.name);
    if (m) L = Math.max(L, Number(m[1]) + 1);
  }
  const F = shape("blocks.0.ffn.key.weight")[0];
  const A = version === "7" ? C : shape("blocks.0.att.key.weight")[0];
  let H: number;
  switch (version) {
    case "4": H = 1; break;
    case "5.2": H = shape("blocks.0.att.time_decay")[0]; break;
    case "6": H = shape("blocks.0.att.time_faaaa")[0]; break;
    default: H = shape("blocks.0.att.r_k")[0]; break;
  }
  if (!(H > 0) || A % H !== 0) throw new RwkvInputError("model", `${H} heads do not divide dim_att ${A}`);
  return { version: version as TrainVersion, nLayer: L, nEmbd: C, vocabSize: V, dimAtt: A, dimFfn: F, nHead: H, headSize: A / H };
}
