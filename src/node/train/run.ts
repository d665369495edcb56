import { existsSync, mkdirSync, readdirSync, statSync, unlinkSync } from "node:fs";
import { join, resolve } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import type { ModelConfig } from "../../core/model/model.js";
import { tokenizerKindForVocab } from "../../core/tokenizer/choose.js";
import { initModel, type NewModelSpec, validateSpec } from "../../core/train/init.js";
import type { TrainKernels } from "../../core/backend/train-kernels.js";
import { type LoopSettings, type TrainHistory, TrainLoop } from "../../core/train/loop.js";
import { addLoraParams, loraParamNames } from "../../core/train/lora.js";
import { TrainModel } from "../../core/train/model.js";
import { AdamW } from "../../core/train/optim.js";
import { type FrozenMatrices, ParamStore } from "../../core/train/params.js";
import { TrainRng } from "../../core/train/rng.js";
import { addTimeStateParams, timeStateNames } from "../../core/train/state-tune.js";
import { trainFlopsPerToken } from "../../core/train/trainer.js";
import { writeFileAtomic } from "../atomic-write.js";
import { loadCheckpoint } from "../load.js";
import { defaultThreads } from "../threads/spawn.js";
import { type TrainKernelKind, trainKernels } from "../threads/pool.js";
import { loadTokenizer } from "../tokenizer.js";
import { exportLora, exportTimeState } from "./adapter-export.js";
import { type CheckpointHeader, loadCheckpointFile, saveCheckpoint } from "./checkpoint.js";
import type { TokenData } from "./data.js";
import { type ExportDType, exportPth, exportSafetensors } from "./export.js";
import { lossCurveSvg } from "./plot.js";
import { paramsFromRwkvLm } from "./rwkv-lm-run.js";
import { CHECKPOINT_FILE, checkRunOptions, loadRunData, type NewTrainRun, TRAIN_DEFAULTS, type TrainRunOptions } from "./run-options.js";
import { restoreTuned, storeFingerprint, trainedSubset } from "./tuning-checkpoint.js";

/*
 * A training run in a directory: the loop of core/train/loop.ts plus what needs files — resumable
 * checkpoints (atomic writes), the loss curve (loss.svg, loss.csv), the token cache and the exports
 * (model.pth + model.safetensors; adapter.pth + adapter/ for LoRA; state.pth for state tuning).
 * Progress is reported as typed events; `rwkv train` only renders them.
 */

/** How the run computes: not part of the run, so a resumed run may use other threads or kernels. */
export interface TrainCompute {
  /** "wasm" (WebAssembly SIMD, the default) or "reference" (plain TypeScript). */
  readonly kernels?: TrainKernelKind;
  /** Threads of the wasm kernels (default: every core). */
  readonly threads?: number;
}

export interface ResumeOptions extends TrainCompute {
  /** Raise (or lower) the run's step count; nothing else of a run can change. */
  readonly steps?: number;
  /** Called with the saved run before any data is read: throw to refuse it (the CLI checks its flags here). */
  readonly accept?: (saved: TrainRunOptions, config: ModelConfig) => void;
}

export interface ExportEvent {
  readonly type: "export";
  /** model: model.pth and model.safetensors; lora: adapter.pth and the peft directory adapter/; state: state.pth. */
  readonly what: "model" | "lora" | "state";
  readonly files: readonly string[];
  readonly dtype: ExportDType;
}

export interface DoneEvent {
  readonly type: "done";
  readonly step: number;
  readonly tokensSeen: number;
  readonly seconds: number;
  /** steps: the run's last step; time: maxSeconds reached; stopped: stop() was called. */
  readonly reason: "steps" | "time" | "stopped";
  readonly exported: ExportEvent;
}

export type TrainingEvent =
  | { readonly type: "step"; readonly step: number; readonly steps: number; readonly loss: number; readonly gradNorm: number; readonly lr: number; readonly tokensSeen: number; readonly seconds: number }
  | { readonly type: "validation"; readonly step: number; readonly loss: number; readonly seconds: number }
  | { readonly type: "checkpoint"; readonly step: number; readonly path: string }
  | { readonly type: "diverged"; readonly step: number; readonly loss: number; readonly gradNorm: number; readonly lr: number; readonly checkpoint: string | null }
  | ExportEvent
  | DoneEvent;

/** A step whose loss or gradient was not finite: nothing of it was saved; the last checkpoint (if any) is intact. */
export class TrainingDivergedError extends RwkvInputError {
  constructor(readonly event: Extract<TrainingEvent, { type: "diverged" }>) {
    const lastGood = event.checkpoint !== null ? `the last good checkpoint (${event.checkpoint}) is intact` : "no checkpoint had been written yet";
    super("training", `diverged at step ${event.step}: loss ${event.loss}, gradient norm ${event.gradNorm} at learning rate ${event.lr.toPrecision(3)}; ` +
      `nothing was saved from this step and ${lastGood}. Lower --lr (or --grad-clip) and start again or --resume.`);
    this.name = "TrainingDivergedError";
  }
}

export interface RunControl {
  /** Stop (validate, checkpoint, export) once this many seconds of steps have run in this session's total; 0: no limit. */
  readonly maxSeconds?: number;
  readonly onEvent?: (event: TrainingEvent) => void;
}

const yieldToEventLoop = () => new Promise<void>((res) => setImmediate(res));

export class TrainingRun {
  private stopRequested = false;

  private constructor(
    /** The run's directory (absolute). */
    readonly out: string,
    /** The run as stored in its checkpoint (a resumed run's with its new step count). */
    readonly options: TrainRunOptions,
    private readonly loop: TrainLoop,
    private readonly tokens: TokenData,
    /** Where a resumed run started: its step and the kernels' build that computed the steps before. */
    readonly resumedFrom: { readonly step: number; readonly kernels: string | undefined } | null,
  ) {}

  /** A new run in `out` (created; refused if it already holds a run): model initialised or loaded, data tokenized (or read from the cache). */
  static async create(out: string, spec: NewTrainRun, compute: TrainCompute = {}): Promise<TrainingRun> {
    const dir = resolve(out), ckptPath = join(dir, CHECKPOINT_FILE);
    const given = Object.fromEntries(Object.entries(spec).filter(([, v]) => v !== undefined)) as NewTrainRun;
    const init = "model" in given.init ? { ...given.init, model: resolve(given.init.model) } : given.init;
    let run: Omit<TrainRunOptions, "tokenizerKind"> & { tokenizerKind: TrainRunOptions["tokenizerKind"] | null } = {
      ...TRAIN_DEFAULTS, ...given, init, data: given.data.map((d) => resolve(d)),
      tokenizerKind: given.tokenizerKind ?? ("scratch" in init ? "bytes" : null),
      tokenizerPath: given.tokenizerPath != null ? resolve(given.tokenizerPath) : null,
    };
    checkRunOptions(run);
    if (run.data.includes(dir)) throw new RwkvInputError(dir, "the run's directory is one of its data paths");
    if (existsSync(ckptPath)) throw new RwkvInputError(ckptPath, "a training checkpoint already exists here: use --resume to continue it, or another --out");
    if (existsSync(dir) && !statSync(dir).isDirectory()) throw new RwkvInputError(dir, "--out is not a directory");
    const kernels = computeKernels(compute);
    mkdirSync(dir, { recursive: true });
    const rng = new TrainRng(run.seed);
    let params: ParamStore;
    if ("scratch" in run.init) {
      const kind = run.tokenizerKind ?? "bytes";
      const tok = loadTokenizer({ kind, path: run.tokenizerPath ?? undefined });
      // The spec is stored with its vocabulary resolved, so a resumed run rebuilds the same model.
      const spec: NewModelSpec = { ...run.init.scratch, vocabSize: run.init.scratch.vocabSize || tok.vocabSize };
      if (spec.vocabSize < tok.vocabSize) throw new RwkvInputError(`--vocab ${spec.vocabSize}`, `the ${kind} tokenizer emits ids up to ${tok.vocabSize - 1}`);
      validateSpec(spec);
      params = initModel({ ...spec, lrInit: run.lr }, rng, "f32");
      run = { ...run, init: { scratch: spec } };
    } else if (run.init.rwkvLm) {
      params = paramsFromRwkvLm(run.init.model);
    } else {
      const { checkpoint, close } = loadCheckpoint(run.init.model);
      // An adapter run's base is frozen: no gradients, its matrices in their stored compact type (QLoRA).
      const frozen = run.lora || run.stateTune ? frozenMatrices(run) : undefined;
      try { params = ParamStore.fromCheckpoint(checkpoint, "f32", frozen); } finally { close(); }
      if (run.lora || run.stateTune) {
        run = { ...run, baseFingerprint: storeFingerprint(params) };
        addTuning(run, params, rng);
      }
    }
    const model = new TrainModel(params, { kernels, ...tuning(run, params) });
    const full: TrainRunOptions = { ...run, tokenizerKind: run.tokenizerKind ?? tokenizerKindForVocab(model.config.vocabSize) };
    const opt = new AdamW(params, model.config.version, adamW(full), model.frozenParams(), undefined, model.kernels);
    const { data, split } = await loadRunData(full, model.config.vocabSize, dir);
    return new TrainingRun(dir, full, new TrainLoop(model, opt, rng, split, loopSettings(full)), data, null);
  }

  /** The run saved in `out`, continued exactly where its last checkpoint left it. */
  static async resume(out: string, o: ResumeOptions = {}): Promise<TrainingRun> {
    const dir = resolve(out), ckptPath = join(dir, CHECKPOINT_FILE);
    const kernels = computeKernels(o);
    const loaded = loadCheckpointFile<TrainRunOptions>(ckptPath);
    const h = loaded.header;
    const params = h.run.baseFingerprint !== undefined && "model" in h.run.init
      ? restoreTuned(loaded.params, h.run.init.model, h.run.baseFingerprint, frozenMatrices(h.run), (base) => addTuning(h.run, base, null))
      : loaded.params;
    const model = new TrainModel(params, { kernels, ...tuning(h.run, params) });
    o.accept?.(h.run, model.config);
    const run: TrainRunOptions = { ...h.run, steps: o.steps ?? h.run.steps };
    checkRunOptions(run);
    const opt = new AdamW(params, model.config.version, adamW(run), model.frozenParams(), loaded.optimizer, model.kernels);
    // A SIGKILL during a save can leave the writer's temporary file behind: it is garbage.
    for (const f of readdirSync(dir)) if (f.startsWith(`.${CHECKPOINT_FILE}.`) && f.endsWith(".tmp")) unlinkSync(join(dir, f));
    const expect = h.dataChecksum ? { checksum: h.dataChecksum, problem: "the data changed since the checkpoint was written (its tokens differ); resume needs the same data" } : undefined;
    const { data, split } = await loadRunData(run, model.config.vocabSize, dir, expect);
    const loop = new TrainLoop(model, opt, TrainRng.fromState(h.rng), split, loopSettings(run), h);
    return new TrainingRun(dir, run, loop, data, { step: h.step, kernels: h.kernels });
  }

  get checkpointPath(): string { return join(this.out, CHECKPOINT_FILE); }
  get config(): ModelConfig { return this.loop.model.config; }
  get kernels(): TrainKernels { return this.loop.model.kernels; }
  get parameterCount(): number { return this.loop.model.params.count(); }
  /** Model FLOPs per trained token (for throughput and utilisation figures). */
  get flopsPerToken(): number { return trainFlopsPerToken(this.loop.model); }
  /** Token counts of the data: all of it, the training and validation splits; cached: read from the token cache. */
  get data(): { readonly tokens: number; readonly train: number; readonly val: number; readonly cached: boolean } {
    const { train, val } = this.loop.data;
    return { tokens: this.tokens.tokens.length, train: train.length, val: val.length, cached: this.tokens.cached };
  }
  get step(): number { return this.loop.step; }
  get tokensSeen(): number { return this.loop.tokensSeen; }
  get seconds(): number { return this.loop.seconds; }
  get history(): TrainHistory { return this.loop.history; }

  /** Mean validation loss at the current weights (NaN without a validation split); recorded nowhere. */
  validationLoss(): number {
    return this.loop.validationLoss();
  }

  /** Ends run() after the step in progress (the next one if none is), which then validates, checkpoints and exports as a run's last step does. */
  stop(): void {
    this.stopRequested = true;
  }

  /** Trains to the run's last step (or maxSeconds, or stop()), then exports; a diverging step rejects with TrainingDivergedError. */
  async run(o: RunControl = {}): Promise<DoneEvent> {
    const emit = o.onEvent ?? (() => {});
    const { options: run, loop } = this;
    const maxSeconds = o.maxSeconds ?? 0;
    const byTime = () => maxSeconds > 0 && loop.seconds >= maxSeconds;
    // Asked again at each point: a listener may call stop() on any event of the step.
    const ending = () => loop.step === run.steps || byTime() || this.stopRequested;
    while (loop.step < run.steps) {
      const r = loop.advance();
      if (!r.ok) {
        const event = { type: "diverged", step: r.step, loss: r.loss, gradNorm: r.gradNorm, lr: r.lr, checkpoint: existsSync(this.checkpointPath) ? this.checkpointPath : null } as const;
        emit(event);
        throw new TrainingDivergedError(event);
      }
      emit({ type: "step", step: r.step, steps: run.steps, loss: r.loss, gradNorm: r.gradNorm, lr: r.lr, tokensSeen: loop.tokensSeen, seconds: loop.seconds });
      if (run.valEvery > 0 && (loop.step % run.valEvery === 0 || ending())) {
        const loss = loop.validate();
        emit({ type: "validation", step: loop.step, loss, seconds: loop.seconds });
      }
      if ((run.saveEvery > 0 && loop.step % run.saveEvery === 0) || ending()) {
        await this.save();
        emit({ type: "checkpoint", step: loop.step, path: this.checkpointPath });
      }
      if (ending()) break;
      await yieldToEventLoop(); // lets a caller's stop() (a signal, a timer) in between steps
    }
    const reason: DoneEvent["reason"] = byTime() ? "time" : this.stopRequested && loop.step < run.steps ? "stopped" : "steps";
    const exported = await this.export();
    emit(exported);
    const done: DoneEvent = { type: "done", step: loop.step, tokensSeen: loop.tokensSeen, seconds: loop.seconds, reason, exported };
    emit(done);
    return done;
  }

  private async save(): Promise<void> {
    const { options: run, loop, out } = this, cfg = this.config;
    const header: Omit<CheckpointHeader<TrainRunOptions>, "formatVersion" | "params" | "optimizerStep"> = {
      config: cfg, run, step: loop.step, tokensSeen: loop.tokensSeen, seconds: loop.seconds, rng: loop.rng.state(),
      dataChecksum: this.tokens.checksum, history: loop.history, kernels: this.kernels.build,
    };
    const params = loop.model.params, trainable = tuning(run, params).trainable;
    await saveCheckpoint(this.checkpointPath, header, trainable ? trainedSubset(params, trainable) : params, loop.opt.state);
    const title = `RWKV-${cfg.version} ${cfg.nLayer}x${cfg.nEmbd}, batch ${run.batch}x${run.ctx}: step ${loop.step}`;
    await writeFileAtomic(join(out, "loss.svg"), [new TextEncoder().encode(lossCurveSvg(loop.history, title))]);
    await writeFileAtomic(join(out, "loss.csv"), [new TextEncoder().encode(csv(loop.history))]);
  }

  private async export(): Promise<ExportEvent> {
    const { options: run, out } = this, params = this.loop.model.params, dtype = run.exportDtype;
    if (run.stateTune) return { type: "export", what: "state", files: [await exportTimeState(params, out, dtype)], dtype };
    if (run.lora) {
      const files = await exportLora(params, loraParamNames(params), out, run.lora, dtype);
      return { type: "export", what: "lora", files: [files.pth, files.dir], dtype };
    }
    const pth = join(out, "model.pth"), st = join(out, "model.safetensors");
    await exportPth(params, pth, dtype);
    await exportSafetensors(params, st, dtype, { step: String(this.loop.step), tokens: String(this.loop.tokensSeen) });
    return { type: "export", what: "model", files: [pth, st], dtype };
  }
}

function computeKernels(c: TrainCompute): TrainKernels {
  return trainKernels(c.kernels ?? "wasm", c.threads ?? defaultThreads());
}

/** How an adapter run keeps its frozen base's matrices. */
function frozenMatrices(run: Pick<TrainRunOptions, "baseMatrices">): FrozenMatrices {
  return run.baseMatrices ?? "compact";
}

function adamW(run: TrainRunOptions) {
  return { beta1: run.beta1, beta2: run.beta2, eps: run.adamEps, weightDecay: run.weightDecay };
}

function loopSettings(run: TrainRunOptions): LoopSettings {
  return {
    batch: run.batch, ctx: run.ctx, gradClip: run.gradClip, l2wrap: run.l2wrap,
    schedule: { lrInit: run.lr, lrFinal: run.lrFinal, warmupSteps: run.warmup, totalSteps: run.steps, decay: run.decay },
  };
}

/** Adds an adapter run's trainable tensors to the base (LoRA A from `rng`; on resume their values are overwritten). */
function addTuning(run: Pick<TrainRunOptions, "lora" | "stateTune" | "init">, params: ParamStore, rng: TrainRng | null): void {
  if (run.lora) addLoraParams(params, run.lora, rng ?? new TrainRng(0));
  if (run.stateTune) addTimeStateParams(params, "model" in run.init ? run.init.model : "model");
}

/** What a LoRA run trains and how its adapters scale (nothing for a full fine-tune). */
function tuning(run: Pick<TrainRunOptions, "lora" | "stateTune">, params: ParamStore): { trainable?: ReadonlySet<string>; loraScale?: number } {
  if (run.stateTune) return { trainable: new Set(timeStateNames(params)) };
  if (!run.lora) return {};
  return { trainable: new Set(loraParamNames(params)), loraScale: run.lora.alpha / run.lora.rank };
}

function csv(h: TrainHistory): string {
  const val = new Map(h.val.map(([s, l, sec]) => [s, [l, sec]]));
  const rows = ["step,train_loss,val_loss,train_seconds"];
  for (const [s, l] of h.train) {
    const v = val.get(s);
    rows.push(`${s},${l},${v ? v[0] : ""},${v ? v[1].toFixed(3) : ""}`);
  }
  return rows.join("\n") + "\n";
}
