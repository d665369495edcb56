import type { Buf } from "../backend/buffers.js";
import { referenceTrainKernels, type TrainKernels } from "../backend/train-kernels.js";
import type { Version } from "../model/model.js";
import { versionModule } from "../model/versions.js";
import type { ParamGroup } from "./version.js";
import type { Param, ParamStore } from "./params.js";

/*
 * AdamW as RWKV-LM runs it (DeepSpeed FusedAdam, adam_w_mode, bias_correction), with its parameter
 * groups, learning-rate schedule and global-norm gradient clipping (Lightning gradient_clip_val).
 */

export type { ParamGroup } from "./version.js";

/**
 * A parameter's group: the version's own rule (its module's TrainSupport.paramGroup, e.g. v7's
 * att.w0 2×, v4-v6's time_* groups), else ≥2-D ".weight" decayed and the rest 1×.
 */
export function paramGroup(name: string, shape: readonly number[], version: Version): ParamGroup {
  const own = versionModule(version).train?.paramGroup(name);
  if (own) return own;
  const squeezedDims = shape.filter((d) => d !== 1).length;
  return { lrScale: 1, decay: squeezedDims >= 2 && name.includes(".weight") };
}

export interface AdamWOptions {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
}

/** RWKV-LM v7 demo settings (demo-training-run.sh), except eps: 1e-18 underflows nothing in f32 but 1e-8 is the safe CPU choice. */
export const DEFAULT_ADAMW: AdamWOptions = { beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.001 };

export interface OptimizerState {
  /** Steps taken (the bias-correction exponent of the next step is step + 1). */
  step: number;
  /** First and second moments per parameter name. */
  readonly m: Map<string, Buf>;
  readonly v: Map<string, Buf>;
}

export class AdamW {
  readonly state: OptimizerState;
  private readonly groups: Map<string, ParamGroup>;

  /**
   * `frozen`: parameters never updated (no gradient in the official trainer, e.g. v7 layer-0 v0/v1/v2).
   * `kernels`: the model's; the moments live in their storage (a given state is copied there) and
   * their update runs there when they can.
   */
  constructor(readonly params: ParamStore, readonly version: Version, readonly options: AdamWOptions = DEFAULT_ADAMW,
    readonly frozen: ReadonlySet<string> = new Set(), state?: OptimizerState, private readonly kernels: TrainKernels = referenceTrainKernels) {
    this.groups = new Map(params.list.map((p) => [p.name, paramGroup(p.name, p.shape, version)]));
    // A tensor without a gradient (a frozen base's) never moves: no moments either.
    const moment = (p: Param, from?: Buf): Buf => {
      const b = kernels.alloc(params.dtype, p.grad ? p.data.length : 0);
      if (from) b.set(from);
      return b;
    };
    this.state = {
      step: state?.step ?? 0,
      m: new Map(params.list.map((p) => [p.name, moment(p, state?.m.get(p.name))])),
      v: new Map(params.list.map((p) => [p.name, moment(p, state?.v.get(p.name))])),
    };
  }

  /** Bytes of the first and second moments held. */
  momentBytes(): number {
    let n = 0;
    for (const b of [...this.state.m.values(), ...this.state.v.values()]) n += b.byteLength;
    return n;
  }

  group(name: string): ParamGroup {
    return this.groups.get(name)!;
  }

  /**
   * One update with learning rate `lr` (times each group's scale): FusedAdam's
   *   m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²
   *   p -= lr·scale · ( (m/(1-β1^t)) / (sqrt(v/(1-β2^t)) + eps) + wd·p )   (wd only in the decay group)
   */
  step(lr: number): void {
    const { beta1, beta2, eps, weightDecay } = this.options;
    const t = ++this.state.step;
    const bc1 = 1 - beta1 ** t, bc2 = 1 - beta2 ** t;
    for (const p of this.params.list) {
      if (this.frozen.has(p.name) || !p.grad) continue;
      const { lrScale, decay } = this.groups.get(p.name)!;
      const m = this.state.m.get(p.name)!, v = this.state.v.get(p.name)!;
      const rate = lr * lrScale, wd = decay ? weightDecay : 0;
      const data = p.data, grad = p.grad;
      if (this.kernels.adamwUpdate?.(data, grad, m, v, rate, wd, beta1, beta2, eps, bc1, bc2)) continue;
      for (let i = 0; i < data.length; i++) {
        const g = grad[i];
        const mi = beta1 * m[i] + (1 - beta1) * g;
        const vi = beta2 * v[i] + (1 - beta2) * g * g;
        m[i] = mi; v[i] = vi;
        data[i] -= rate * ((mi / bc1) / (Math.sqrt(vi / bc2) + eps) + wd * data[i]);
      }
    }
  }
}

/** torch.nn.utils.clip_grad_norm_'s guard against dividing by a zero norm. */
const CLIP_EPS = 1e-6;

/** The L2 norm of all gradients together (frozen ones are zero anyway). */
export function gradNorm(params: readonly Param[]): number {
  let s = 0;
  for (const { grad } of params) if (grad) for (let i = 0; i < grad.length; i++) s += grad[i] * grad[i];
  return Math.sqrt(s);
}

/** Scales all gradients by maxNorm/(norm + 1e-6) when the global norm exceeds maxNorm; returns the norm before clipping. */
export function clipGradNorm(params: readonly Param[], maxNorm: number): number {
  const norm = gradNorm(params);
  const coef = maxNorm / (norm + CLIP_EPS);
  if (coef < 1) for (const { grad } of params) if (grad) for (let i = 0; i < grad.length; i++) grad[i] *= coef;
  return norm;
}

export interface LrSchedule {
  readonly lrInit: number;
  readonly lrFinal: number;
  readonly warmupSteps: number;
  readonly totalSteps: number;
  readonly decay: "cosine" | "linear";
}

/** Warmup factor's floor: RWKV-LM v7 starts at 1% of the rate. */
const WARMUP_START = 0.01;

/**
 * The learning rate of (0-based) step `step`: cosine (train_temp, lr_mult = (1+f)/2 + (1-f)/2·cos(π·p))
 * or linear from lr_init to lr_final over the steps after warmup, times (0.01 + 0.99·step/warmup)
 * during warmup.
 */
export function learningRate(s: LrSchedule, step: number): number {
  const span = Math.max(1, s.totalSteps - s.warmupSteps);
  const progress = Math.min(1, Math.max(0, (step - s.warmupSteps) / span));
  let lr: number;
  if (s.decay === "linear") {
    lr = s.lrInit + (s.lrFinal - s.lrInit) * progress;
  } else {
    const f = s.lrInit > 0 ? s.lrFinal / s.lrInit : 0;
    lr = s.lrInit * ((0.5 + f / 2) + (0.5 - f / 2) * Math.cos(Math.PI * progress));
  }
  if (step < s.warmupSteps) lr *= WARMUP_START + (1 - WARMUP_START) * (step / s.warmupSteps);
  return lr;
}
