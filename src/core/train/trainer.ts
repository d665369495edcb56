import { versionModule } from "../model/versions.js";
import { numel } from "../tensor.js";
import { Graph } from "./graph.js";
import type { TrainModel } from "./model.js";
import { IGNORE_TARGET } from "../backend/train-ops.js";
import { type AdamW, clipGradNorm, gradNorm } from "./optim.js";

/*
 * One optimisation step and the evaluation loss, independent of where batches come from.
 */

export interface StepOptions {
  readonly lr: number;
  /** Global gradient-norm limit; 0 or Infinity = no clipping. */
  readonly gradClip: number;
  /** Official L2Wrap on the logits (on in RWKV-LM training; the golden gradients are without it). */
  readonly l2wrap: boolean;
}

export interface StepResult {
  readonly loss: number;
  /** Global gradient norm before clipping. */
  readonly gradNorm: number;
}

/**
 * Forward over inputs (B·T) → loss against targets (B·T), backward, clip, AdamW. When the loss or
 * the gradient is not finite the parameters are left untouched and the result says so: the caller
 * stops with a diagnosis instead of writing poisoned weights.
 */
export function trainStep(model: TrainModel, opt: AdamW, inputs: Int32Array, targets: Int32Array, B: number, T: number, o: StepOptions): StepResult {
  model.params.zeroGrad();
  const mark = model.kernels.mark();
  let loss: number;
  try { // the step's activations and their gradients are dead once the parameter gradients are in
    const g = new Graph(model.dtype, model.kernels, true);
    loss = g.crossEntropy(model.forward(g, inputs, B, T), targets, o.l2wrap);
    if (!Number.isFinite(loss)) return { loss, gradNorm: NaN };
    g.backward();
  } finally {
    model.kernels.release(mark);
  }
  const norm = o.gradClip > 0 && Number.isFinite(o.gradClip) ? clipGradNorm(model.params.list, o.gradClip) : gradNorm(model.params.list);
  if (!Number.isFinite(norm)) return { loss, gradNorm: norm };
  opt.step(o.lr);
  return { loss, gradNorm: norm };
}

/** Sum of next-token NLL and the number of scored positions (targets ≠ IGNORE_TARGET). */
export function evalLossSum(model: TrainModel, inputs: Int32Array, targets: Int32Array, B: number, T: number): { sum: number; count: number } {
  const mark = model.kernels.mark();
  let loss: number;
  try {
    const g = new Graph(model.dtype, model.kernels, false);
    loss = g.crossEntropy(model.forward(g, inputs, B, T), targets, false);
  } finally {
    model.kernels.release(mark);
  }
  let count = 0;
  for (const t of targets) if (t !== IGNORE_TARGET) count++;
  return { sum: loss * count, count };
}

/**
 * Model FLOPs per trained token: 6 per weight of every matrix product (2 forward, 4 backward), 4
 * for a frozen weight (an adapter run's base: its own gradient is never computed; the embedding
 * is a lookup and costs none) plus the WKV recurrence (forward, backward and the
 * backward's recomputation of states ≈ 3 × the forward's multiply-adds).
 */
export function trainFlopsPerToken(model: TrainModel): number {
  const { version, nLayer: L, dimAtt: A } = model.config;
  let flops = 0;
  for (const p of model.params.list) {
    if (p.name === "emb.weight" || model.unusedParams().has(p.name)) continue;
    const dims = p.shape.filter((d) => d !== 1).length;
    const matrix = dims >= 2 && !/\.(r_k|time_decay|time_faaaa)$/.test(p.name);
    if (matrix) flops += (p.grad ? 6 : 4) * numel(p.shape);
  }
  /** Multiply-adds per channel and step of each WKV forward (the version's; e.g. v5/6: 2N; v7: 4N). */
  const wkvMacsPerChannel = versionModule(version).train!.wkvMacsPerChannel(model.config);
  const WKV_PASSES = 3;
  return flops + L * A * wkvMacsPerChannel * 2 * WKV_PASSES;
}
