import { sampleBatch, type TokenArray, validationBatches } from "./batches.js";
import type { TrainModel } from "./model.js";
import { type AdamW, learningRate, type LrSchedule } from "./optim.js";
import type { TrainRng } from "./rng.js";
import { evalLossSum, trainStep } from "./trainer.js";

/*
 * The training loop without files or clocks of its own: sample a batch, step, count, validate.
 * Where a run's state is saved and how progress is shown belong to the caller (src/node/train/run.ts).
 */

const MS_PER_S = 1000;

export interface TrainHistory {
  /** [step (1-based), train loss] per step. */
  readonly train: Array<[number, number]>;
  /** [step, validation loss, seconds of training so far]. */
  readonly val: Array<[number, number, number]>;
}

/** Where a loop stands; a resumed loop starts from the saved one. */
export interface LoopProgress {
  readonly step: number;
  readonly tokensSeen: number;
  /** Seconds spent in steps (not validation), over every session of the run. */
  readonly seconds: number;
  readonly history: TrainHistory;
}

export interface LoopSettings {
  readonly batch: number;
  readonly ctx: number;
  readonly schedule: LrSchedule;
  readonly gradClip: number;
  readonly l2wrap: boolean;
}

/** One step's result; `ok` false when its loss or gradient was not finite (the weights were left as they were). */
export interface StepOutcome {
  readonly ok: boolean;
  /** The step's number (1-based): the step just taken, or the one that failed. */
  readonly step: number;
  readonly loss: number;
  readonly gradNorm: number;
  readonly lr: number;
}

export class TrainLoop {
  step: number;
  tokensSeen: number;
  seconds: number;
  readonly history: TrainHistory;

  constructor(
    readonly model: TrainModel, readonly opt: AdamW, readonly rng: TrainRng,
    readonly data: { readonly train: TokenArray; readonly val: TokenArray },
    readonly settings: LoopSettings, from: LoopProgress = { step: 0, tokensSeen: 0, seconds: 0, history: { train: [], val: [] } },
  ) {
    this.step = from.step;
    this.tokensSeen = from.tokensSeen;
    this.seconds = from.seconds;
    this.history = { train: [...from.history.train], val: [...from.history.val] };
  }

  /** One optimizer step on a batch drawn from the loop's RNG; counters move only when it succeeds. */
  advance(): StepOutcome {
    const { batch: B, ctx: T } = this.settings;
    const t0 = performance.now();
    const lr = learningRate(this.settings.schedule, this.step);
    const { inputs, targets } = sampleBatch(this.data.train, B, T, this.rng); // (B, T)
    const r = trainStep(this.model, this.opt, inputs, targets, B, T, { lr, gradClip: this.settings.gradClip, l2wrap: this.settings.l2wrap });
    if (!Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm)) return { ok: false, step: this.step + 1, loss: r.loss, gradNorm: r.gradNorm, lr };
    this.step++;
    this.tokensSeen += B * T;
    this.seconds += (performance.now() - t0) / MS_PER_S;
    this.history.train.push([this.step, r.loss]);
    return { ok: true, step: this.step, loss: r.loss, gradNorm: r.gradNorm, lr };
  }

  /** Mean next-token loss over the whole validation split at the current weights (NaN without one). */
  validationLoss(): number {
    const { val } = this.data, { batch: B, ctx: T } = this.settings;
    if (val.length < 2) return NaN;
    let sum = 0, count = 0;
    for (const vb of validationBatches(val, B, T)) {
      const r = evalLossSum(this.model, vb.inputs, vb.targets, vb.B, T);
      sum += r.sum; count += r.count;
    }
    return sum / count;
  }

  /** validationLoss, recorded in the history at this step. */
  validate(): number {
    const loss = this.validationLoss();
    this.history.val.push([this.step, loss, this.seconds]);
    return loss;
  }
}
