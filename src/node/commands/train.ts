import { join, resolve } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import type { ModelConfig } from "../../core/model/model.js";
import type { NewModelSpec } from "../../core/train/init.js";
import type { TrainKernels } from "../../core/backend/train-kernels.js";
import { type Version } from "../../core/model/model.js";
import { versionModule, versionsWith } from "../../core/model/versions.js";
import { DEFAULT_LORA_TARGETS, type LoraSpec } from "../../core/train/lora.js";
import type { TokenizerKind } from "../../core/tokenizer/types.js";
import { type CliIO, numberIn, parse, positiveInt, str, UsageError, type Values } from "../cli-util.js";
import { formatDuration } from "../progress.js";
import { exportRwkvLmRun } from "../train/rwkv-lm-run.js";
import { CHECKPOINT_FILE, type NewTrainRun, TRAIN_DEFAULTS, type TrainRunOptions } from "../train/run-options.js";
import { type TrainingEvent, TrainingRun } from "../train/run.js";
import { DEFAULT_LORA_ALPHA } from "../../core/adapters/adapter.js";
import { defaultThreads } from "../threads/spawn.js";
import type { TrainKernelKind } from "../threads/pool.js";

/*
 * rwkv train: GPT-mode training of an RWKV model on text, from scratch or from a checkpoint, with
 * resumable checkpoints, validation, exports and a loss plot. Everything a run needs is recorded in
 * its checkpoint, so `--resume` takes no other option (given ones must agree with the checkpoint).
 *
 * Files in --out DIR: checkpoint.rwkvtrain (training state), tokens-*.bin (token cache),
 * loss.svg and loss.csv (curve), model.pth and model.safetensors (the weights, at the end).
 */

const COLUMN = 39;
const head = (s: string, d: string) => s.padEnd(COLUMN - 2) + d;
const sub = (s: string, d: string) => ("      " + s).padEnd(COLUMN) + d;

export const TRAIN_USAGE = [
  head("train --data PATH --out DIR", "train an RWKV model (GPT mode) on text files or a directory"),
  sub("--version 7|4|5.2|6", "from scratch (default 7), with --layers --embd --head-size --vocab"),
  sub("--model FILE", "fine-tune a checkpoint instead (any loadable format)"),
  sub("--init-from FILE", "as --model, for RWKV-LM checkpoints (rwkv-N.pth; checked)"),
  sub("--resume", "continue DIR/checkpoint.rwkvtrain exactly (--steps may be raised)"),
  sub("--lora R [--lora-alpha A]", `with --model: train only a rank-R LoRA (alpha ${DEFAULT_LORA_ALPHA}); exports adapter.pth + adapter/`),
  sub("--lora-targets LIST", "comma-separated modules (att.receptance,att.key,...: all att/ffn Linears)"),
  sub("--state-tune", "with an RWKV-7 --model: train only the initial state (time_state); exports state.pth"),
  sub("--int8", "with --lora/--state-tune: hold the frozen base's float matrices as per-row int8"),
  sub("--ctx T --batch B --steps S", "window length, windows per step, optimizer steps (64, 12, 2000)"),
  sub("--lr X --lr-final Y --warmup N", "AdamW schedule (6e-4 -> 6e-5, 10 warmup steps)"),
  sub("--decay cosine|linear", "learning-rate decay after warmup (cosine)"),
  sub("--weight-decay W --grad-clip G", "AdamW decay on matrices (0.001); global-norm clip (1.0)"),
  sub("--beta1 --beta2 --adam-eps", "AdamW moments (0.9, 0.99, 1e-8)"),
  sub("--no-l2wrap", "plain cross entropy (L2Wrap is on, as in RWKV-LM)"),
  sub("--tokenizer-kind bytes|world|20b", "new models: bytes; else from the vocab size"),
  sub("--tokenizer PATH", "World vocab or 20B_tokenizer.json (default: beside --model)"),
  sub("--val-fraction F --val-every N", "held-out tail of the data (0.1); full eval every N (200, 0 off)"),
  sub("--save-every N", "checkpoint every N steps (100); --seed N (1)"),
  sub("--export-dtype f32|bf16", "dtype of the exported model.pth / model.safetensors (f32)"),
  sub("--max-seconds S", "stop (checkpoint, export) after S seconds of training"),
  sub("--threads N", "threads of the training kernels (default: every core)"),
  sub("--kernels wasm|reference", "WebAssembly SIMD f32 (default) or the plain TypeScript reference"),
  sub("--out DIR --export rwkv-lm", "DIR/rwkv-lm/ for RWKV-LM's GPU trainer"),
].join("\n");

const DEFAULTS = { ...TRAIN_DEFAULTS, version: "7", headSize: 64 } as const;
const VERSIONS: readonly Version[] = versionsWith("train");
/** Options a resumed run may change: they extend or bound the run, not its math so far. */
const RESUME_OVERRIDABLE = new Set(["steps", "max-seconds", "peak-gflops", "out", "resume", "threads", "kernels"]);
const MS_PER_S = 1000;
const EXPORT_FORMATS = ["rwkv-lm"] as const;
/** --export converts a finished run: only these flags apply. */
const EXPORT_ONLY_FLAGS = new Set(["export", "out", "threads", "kernels"]);
/** Plain (non-terminal) progress lines at most this often. */
const PLAIN_PROGRESS_MS = 10_000;
const TTY_REDRAW_MS = 200;
const CLEAR_LINE = "\r\x1b[2K";
/** Square product timed at start-up to estimate this machine's matmul peak (the MFU denominator). */
const PEAK_PROBE_SIZE = 256;
const PEAK_PROBE_RUNS = 3;
const PEAK_PROBE_WARMUP = 2;

const OPTIONS = {
  data: { type: "string", multiple: true }, out: { type: "string" }, resume: { type: "boolean" }, model: { type: "string" },
  version: { type: "string" }, layers: { type: "string" }, embd: { type: "string" }, "head-size": { type: "string" },
  ffn: { type: "string" }, vocab: { type: "string" }, ctx: { type: "string" }, batch: { type: "string" }, steps: { type: "string" },
  lr: { type: "string" }, "lr-final": { type: "string" }, warmup: { type: "string" }, decay: { type: "string" },
  "weight-decay": { type: "string" }, beta1: { type: "string" }, beta2: { type: "string" }, "adam-eps": { type: "string" },
  "grad-clip": { type: "string" }, "no-l2wrap": { type: "boolean" }, "tokenizer-kind": { type: "string" }, tokenizer: { type: "string" },
  seed: { type: "string" }, "val-fraction": { type: "string" }, "val-every": { type: "string" }, "save-every": { type: "string" },
  "export-dtype": { type: "string" }, "max-seconds": { type: "string" }, "peak-gflops": { type: "string" },
  threads: { type: "string" }, kernels: { type: "string" }, export: { type: "string" }, "init-from": { type: "string" },
  lora: { type: "string" }, "lora-alpha": { type: "string" }, "lora-targets": { type: "string" }, "state-tune": { type: "boolean" },
  int8: { type: "boolean" },
} as const;

function nonNegInt(values: Values, name: string, dflt: number): number {
  const v = values[name];
  if (v === undefined) return dflt;
  if (typeof v !== "string" || !/^\d+$/.test(v)) throw new UsageError(`--${name} must be a non-negative integer, got "${String(v)}"`);
  return Number(v);
}

/** The run options from flags (a fresh run); the tokenizer kind of a fine-tune is resolved from its vocabulary later. */
function runOptionsFromFlags(values: Values): NewTrainRun {
  const data = values.data as string[] | undefined;
  if (!data || data.length === 0) throw new UsageError("--data PATH is required (a text file or a directory; repeat for more)");
  if (values.model !== undefined && values["init-from"] !== undefined) throw new UsageError("give --model FILE or --init-from FILE, not both");
  const model = str(values, "model") ?? str(values, "init-from");
  const kindText = str(values, "tokenizer-kind");
  if (kindText !== undefined && !["bytes", "world", "20b"].includes(kindText)) throw new UsageError(`--tokenizer-kind must be bytes, world or 20b, got "${kindText}"`);
  const decay = str(values, "decay") ?? "cosine";
  if (decay !== "cosine" && decay !== "linear") throw new UsageError(`--decay must be cosine or linear, got "${decay}"`);
  const exportDtype = str(values, "export-dtype") ?? "f32";
  if (exportDtype !== "f32" && exportDtype !== "bf16") throw new UsageError(`--export-dtype must be f32 or bf16, got "${exportDtype}"`);
  let init: TrainRunOptions["init"];
  let tokenizerKind = kindText as TokenizerKind | undefined;
  if (model !== undefined) {
    for (const f of ["version", "layers", "embd", "head-size", "ffn", "vocab"]) {
      if (values[f] !== undefined) throw new UsageError(`--${f} describes a new model; it cannot be combined with --${values.model !== undefined ? "model" : "init-from"} (the checkpoint defines the architecture)`);
    }
    init = { model: resolve(model), ...(values["init-from"] !== undefined ? { rwkvLm: true } : {}) };
  } else {
    const version = str(values, "version") ?? DEFAULTS.version;
    if (!(VERSIONS as readonly string[]).includes(version)) throw new UsageError(`--version must be one of ${VERSIONS.join(", ")}, got "${version}"`);
    if (values.layers === undefined || values.embd === undefined) throw new UsageError("a new model needs --layers N and --embd C (or --model FILE to fine-tune)");
    tokenizerKind ??= "bytes";
    const spec: NewModelSpec = {
      version: version as Version, nLayer: positiveInt(values, "layers", 0), nEmbd: positiveInt(values, "embd", 0),
      vocabSize: values.vocab !== undefined ? positiveInt(values, "vocab", 0) : 0, // 0: the tokenizer's
      ...(versionModule(version as Version).heads ? { headSize: positiveInt(values, "head-size", DEFAULTS.headSize) } : {}),
      ...(values.ffn !== undefined ? { dimFfn: positiveInt(values, "ffn", 0) } : {}),
    };
    init = { scratch: spec };
  }
  let lora: LoraSpec | undefined;
  if (values.lora !== undefined) {
    if (model === undefined) throw new UsageError("--lora tunes an existing model: give it with --model FILE");
    const targets = str(values, "lora-targets")?.split(",").map((t) => t.trim()).filter((t) => t !== "") ?? [...DEFAULT_LORA_TARGETS];
    if (targets.length === 0) throw new UsageError("--lora-targets is empty");
    lora = { rank: positiveInt(values, "lora", 0), alpha: numberIn(values, "lora-alpha", DEFAULT_LORA_ALPHA, Number.MIN_VALUE, 1e6), targets };
  } else if (values["lora-alpha"] !== undefined || values["lora-targets"] !== undefined) {
    throw new UsageError("--lora-alpha and --lora-targets need --lora R");
  }
  const stateTune = values["state-tune"] === true;
  if (stateTune && model === undefined) throw new UsageError("--state-tune tunes an existing model: give it with --model FILE");
  if (stateTune && lora) throw new UsageError("--state-tune and --lora are separate runs: choose one");
  const int8 = values.int8 === true;
  if (int8 && !lora && !stateTune) throw new UsageError("--int8 holds a frozen base: it needs --lora R or --state-tune (a full fine-tune trains every weight in f32)");
  return {
    ...(int8 ? { baseMatrices: "int8" as const } : {}),
    ...(lora ? { lora } : {}),
    ...(stateTune ? { stateTune } : {}),
    data: data.map((d) => resolve(d)), tokenizerKind: tokenizerKind ?? null,
    tokenizerPath: str(values, "tokenizer") !== undefined ? resolve(str(values, "tokenizer")!) : null,
    init, ctx: positiveInt(values, "ctx", DEFAULTS.ctx), batch: positiveInt(values, "batch", DEFAULTS.batch),
    steps: positiveInt(values, "steps", DEFAULTS.steps), lr: numberIn(values, "lr", DEFAULTS.lr, 0, 1e9),
    lrFinal: numberIn(values, "lr-final", DEFAULTS.lrFinal, 0, 10), warmup: nonNegInt(values, "warmup", DEFAULTS.warmup),
    decay, weightDecay: numberIn(values, "weight-decay", DEFAULTS.weightDecay, 0, 10),
    beta1: numberIn(values, "beta1", DEFAULTS.beta1, 0, 0.999999), beta2: numberIn(values, "beta2", DEFAULTS.beta2, 0, 0.999999999),
    adamEps: numberIn(values, "adam-eps", DEFAULTS.adamEps, 0, 1), gradClip: numberIn(values, "grad-clip", DEFAULTS.gradClip, 0, 1e9),
    l2wrap: values["no-l2wrap"] !== true, seed: nonNegInt(values, "seed", DEFAULTS.seed),
    valFraction: numberIn(values, "val-fraction", DEFAULTS.valFraction, 0, 0.9),
    valEvery: nonNegInt(values, "val-every", DEFAULTS.valEvery), saveEvery: nonNegInt(values, "save-every", DEFAULTS.saveEvery),
    exportDtype,
  };
}

/** The flag values a run's options correspond to, for checking flags given with --resume. */
function flagValues(run: TrainRunOptions, config: ModelConfig): Record<string, string | undefined> {
  return {
    version: config.version, layers: String(config.nLayer), embd: String(config.nEmbd),
    "head-size": versionModule(config.version).heads ? String(config.headSize) : undefined, ffn: String(config.dimFfn), vocab: String(config.vocabSize),
    ctx: String(run.ctx), batch: String(run.batch), lr: String(run.lr), "lr-final": String(run.lrFinal), warmup: String(run.warmup),
    decay: run.decay, "weight-decay": String(run.weightDecay), beta1: String(run.beta1), beta2: String(run.beta2), "adam-eps": String(run.adamEps),
    "grad-clip": String(run.gradClip), "no-l2wrap": String(!run.l2wrap), "tokenizer-kind": run.tokenizerKind, seed: String(run.seed),
    "val-fraction": String(run.valFraction), "val-every": String(run.valEvery), "save-every": String(run.saveEvery), "export-dtype": run.exportDtype,
    lora: run.lora ? String(run.lora.rank) : undefined, "lora-alpha": run.lora ? String(run.lora.alpha) : undefined,
    "lora-targets": run.lora ? run.lora.targets.join(",") : undefined, "state-tune": run.stateTune ? "true" : "false",
    int8: run.baseMatrices === "int8" ? "true" : "false",
  };
}

const ARCH_FLAGS = new Set(["version", "layers", "embd", "head-size", "ffn", "vocab"]);

/** --resume: any other flag given must describe the same run as the checkpoint. */
function checkResumeFlags(values: Values, saved: TrainRunOptions, config: ModelConfig, ckptPath: string): void {
  const want = flagValues(saved, config);
  for (const k of Object.keys(values)) {
    const v = values[k];
    if (v === undefined || RESUME_OVERRIDABLE.has(k)) continue;
    const same = k === "data" ? JSON.stringify((v as string[]).map((d) => resolve(d))) === JSON.stringify(saved.data)
      : k === "model" ? "model" in saved.init && resolve(String(v)) === saved.init.model
        : k === "tokenizer" ? saved.tokenizerPath === resolve(String(v))
          : want[k] !== undefined && (String(v) === want[k] || (Number.isFinite(Number(v)) && Number(v) === Number(want[k])));
    if (same) continue;
    if (ARCH_FLAGS.has(k) || k === "model") {
      throw new RwkvInputError(ckptPath, `the checkpoint holds an RWKV-${config.version} model with ${config.nLayer} layers x ${config.nEmbd} (head ${config.headSize}, ffn ${config.dimFfn}, vocab ${config.vocabSize}); --${k} ${String(v)} asks for another architecture. Use another --out to start a new run.`);
    }
    throw new UsageError(`--${k} ${String(v)} differs from the checkpoint's run (${want[k] ?? "other"}); when resuming only --steps and --max-seconds can change`);
  }
}

/** Estimated peak GFLOP/s of the matmul kernel on this machine (for model FLOP utilisation). */
function measurePeakGflops(k: TrainKernels): number {
  const n = PEAK_PROBE_SIZE;
  const a = new Float32Array(n * n).map((_, i) => (i % 7) * 0.1), c = new Float32Array(n * n);
  let best = Infinity;
  for (let r = 0; r < PEAK_PROBE_WARMUP; r++) k.gemm(false, true, n, n, n, a, a, c, false); // let the JIT optimise it first
  for (let r = 0; r < PEAK_PROBE_RUNS; r++) {
    const t0 = performance.now();
    k.gemm(false, true, n, n, n, a, a, c, false);
    best = Math.min(best, performance.now() - t0);
  }
  return (2 * n * n * n) / (best / MS_PER_S) / 1e9;
}

export async function trainCommand(args: string[], io: CliIO): Promise<number> {
  const { values } = parse(args, OPTIONS, []);
  const outText = str(values, "out");
  if (outText === undefined) throw new UsageError("--out DIR is required (checkpoints, plots and the trained model go there)");
  const out = resolve(outText);
  if (values.export !== undefined) return await exportCommand(values, out, io);
  const kind = str(values, "kernels") ?? "wasm";
  if (kind !== "wasm" && kind !== "reference") throw new UsageError(`--kernels must be wasm or reference, got "${kind}"`);
  const compute = { kernels: kind as TrainKernelKind, threads: positiveInt(values, "threads", defaultThreads()) };

  let run: TrainingRun;
  if (values.resume === true) {
    const steps = values.steps !== undefined ? positiveInt(values, "steps", 1) : undefined;
    run = await TrainingRun.resume(out, { ...compute, steps, accept: (saved, config) => checkResumeFlags(values, saved, config, join(out, CHECKPOINT_FILE)) });
    const from = run.resumedFrom!;
    io.stderr(`resuming ${run.checkpointPath} at step ${from.step}/${run.options.steps}\n`);
    if (from.kernels !== undefined && from.kernels !== run.kernels.build) {
      io.stderr(`note: the checkpoint's steps ran on the ${from.kernels} kernels, these run on ${run.kernels.build}, which round ` +
        "differently: the run continues correctly but will not be bit-identical to an uninterrupted one\n");
    }
  } else {
    const spec = runOptionsFromFlags(values);
    if (spec.data.some((d) => resolve(d) === out)) throw new UsageError("--out must not be one of the --data paths");
    run = await TrainingRun.create(out, spec, compute);
  }
  const maxSeconds = numberIn(values, "max-seconds", 0, 0, 1e9);
  const peak = values["peak-gflops"] !== undefined ? numberIn(values, "peak-gflops", 1, 1e-3, 1e9) : measurePeakGflops(run.kernels);
  const progress = new Progress(run, peak, io);
  const done = await run.run({ maxSeconds, onEvent: (e) => progress.render(e) });
  const o = run.options, [first, second] = done.exported.files, dtype = done.exported.dtype;
  const trained = `trained ${done.step} steps (${done.tokensSeen.toLocaleString("en-US")} tokens, ${done.seconds.toFixed(1)} s): `;
  const curve = `loss curve ${join(out, "loss.svg")}`;
  if (done.exported.what === "state") io.stdout(trained + `initial state ${first} (${dtype}; load with --state-in, or as an adapter), ${curve}\n`);
  else if (done.exported.what === "lora") io.stdout(trained + `LoRA r ${o.lora!.rank} alpha ${o.lora!.alpha} ${first} (RWKV-PEFT, ${dtype}), ${second}/ (peft), ${curve}\n`);
  else io.stdout(trained + `${first}, ${second} (${dtype}), ${curve}\n`);
  return 0;
}

/** `--export rwkv-lm`: converts the run in --out; no other option applies. */
async function exportCommand(values: Values, out: string, io: CliIO): Promise<number> {
  const format = str(values, "export");
  if (!(EXPORT_FORMATS as readonly string[]).includes(format ?? "")) throw new UsageError(`--export must be ${EXPORT_FORMATS.join(" or ")}, got "${format}"`);
  for (const k of Object.keys(values)) {
    if (values[k] !== undefined && !EXPORT_ONLY_FLAGS.has(k)) throw new UsageError(`--export rwkv-lm converts the run in --out DIR; --${k} does not apply`);
  }
  const r = await exportRwkvLmRun(out);
  io.stdout(`RWKV-LM export of step ${r.step} (RWKV-${r.config.version} ${r.config.nLayer} x ${r.config.nEmbd}, ${r.trainTokens.toLocaleString("en-US")} training tokens):\n` +
    r.files.map((f) => `  ${f}\n`).join("") + `continue on GPUs with (see docs/scale-out.md):\n${r.command}`);
  return 0;
}

/** Renders a run's events on stderr: one line per validation and checkpoint, a status line redrawn (terminal) or every 10 s. */
class Progress {
  private readonly tty = process.stderr.isTTY === true;
  private lastDraw: number;
  private lastLoss = NaN;
  private lastVal: number;
  private readonly start: { seconds: number; tokens: number };
  private readonly flopsPerToken: number;

  constructor(private readonly run: TrainingRun, private readonly peak: number, private readonly io: CliIO) {
    const cfg = run.config, o = run.options, d = run.data, n = (x: number) => x.toLocaleString("en-US");
    const val = run.history.val;
    this.lastVal = val.length ? val[val.length - 1][1] : NaN;
    this.start = { seconds: run.seconds, tokens: run.tokensSeen };
    this.flopsPerToken = run.flopsPerToken;
    io.stderr(`RWKV-${cfg.version} ${cfg.nLayer} x ${cfg.nEmbd} (head ${cfg.headSize}, ffn ${cfg.dimFfn}, vocab ${cfg.vocabSize}), ${n(run.parameterCount)} parameters; ` +
      `data ${n(d.tokens)} tokens (${o.tokenizerKind}${d.cached ? ", cached" : ""}): ${n(d.train)} train, ${n(d.val)} validation; ` +
      `batch ${o.batch} x ${o.ctx}, ${o.steps} steps; kernels ${run.kernels.name}; MFU is relative to this machine's measured matmul peak, ${peak.toFixed(2)} GFLOP/s\n`);
    this.lastDraw = this.tty ? -Infinity : performance.now();
  }

  render(e: TrainingEvent): void {
    switch (e.type) {
      case "step": this.lastLoss = e.loss; this.draw(); break;
      case "validation":
        this.lastVal = e.loss;
        this.line(`step ${e.step}: validation loss ${e.loss.toFixed(4)} (${(e.loss / Math.LN2).toFixed(4)} bits/token) after ${e.seconds.toFixed(1)} s`);
        break;
      case "checkpoint": this.line(`checkpoint step ${e.step} -> ${e.path}`); break;
      case "diverged": if (this.tty) this.io.stderr(CLEAR_LINE); break;
      case "export": this.line(this.status()); break;
      case "done": break;
    }
  }

  private status(): string {
    const r = this.run, steps = r.options.steps, B = r.options.batch, T = r.options.ctx;
    const dt = r.seconds - this.start.seconds, tok = r.tokensSeen - this.start.tokens;
    const tps = dt > 0 ? tok / dt : NaN, gflops = (tps * this.flopsPerToken) / 1e9;
    const eta = tps > 0 ? ((steps - r.step) * B * T) / tps : NaN;
    const pct = ((r.step / steps) * 100).toFixed(0).padStart(3);
    return `train ${pct}% step ${r.step}/${steps} loss ${this.lastLoss.toFixed(4)}${Number.isFinite(this.lastVal) ? ` val ${this.lastVal.toFixed(4)}` : ""} | ` +
      `${Number.isFinite(tps) ? tps.toFixed(0) : "?"} tok/s ${gflops.toFixed(2)} GFLOP/s MFU ${((gflops / this.peak) * 100).toFixed(0)}% | ` +
      `${formatDuration(r.seconds)} ETA ${formatDuration(eta)}`;
  }

  private line(text: string): void {
    this.io.stderr((this.tty ? CLEAR_LINE : "") + text + "\n");
    this.lastDraw = performance.now();
  }

  private draw(): void {
    const now = performance.now();
    if (this.tty && now - this.lastDraw >= TTY_REDRAW_MS) { this.io.stderr(CLEAR_LINE + this.status().slice(0, (process.stderr.columns || 120) - 1)); this.lastDraw = now; }
    else if (!this.tty && now - this.lastDraw >= PLAIN_PROGRESS_MS) this.line(this.status());
  }
}
