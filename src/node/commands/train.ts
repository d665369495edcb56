import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { join, resolve } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import type { ModelConfig } from "../../core/model/model.js";
import { initModel, type NewModelSpec, validateSpec } from "../../core/train/init.js";
import type { TrainKernels } from "../../core/train/kernels.js";
import { TrainModel, type TrainVersion } from "../../core/train/model.js";
import { addLoraParams, DEFAULT_LORA_TARGETS, type LoraSpec, loraParamNames } from "../../core/train/lora.js";
import { AdamW, type LrSchedule, learningRate } from "../../core/train/optim.js";
import { ParamStore } from "../../core/train/params.js";
import { TrainRng } from "../../core/train/rng.js";
import { evalLossSum, trainFlopsPerToken, trainStep } from "../../core/train/trainer.js";
import { tokenizerKindForVocab } from "../../core/tokenizer/choose.js";
import type { TokenizerKind } from "../../core/tokenizer/types.js";
import { writeFileAtomic } from "../atomic-write.js";
import { type CliIO, numberIn, parse, positiveInt, str, UsageError, type Values } from "../cli-util.js";
import { loadCheckpoint } from "../load.js";
import { formatDuration } from "../progress.js";
import { findTokenizerFile, loadTokenizer } from "../tokenizer.js";
import { type CheckpointHeader, loadCheckpointFile, saveCheckpoint, type TrainHistory } from "../train/checkpoint.js";
import { listDataFiles, loadTokens, sampleBatch, splitData, validationBatches } from "../train/data.js";
import { type ExportDType, exportPth, exportSafetensors } from "../train/export.js";
import { lossCurveSvg } from "../train/plot.js";
import { exportRunCommand, paramsFromRwkvLm } from "../train/rwkv-lm-cli.js";
import { exportLora, exportTimeState } from "../train/adapter-export.js";
import { restoreTuned, storeFingerprint, trainedSubset } from "../train/tuning-checkpoint.js";
import { addTimeStateParams, timeStateNames } from "../../core/train/state-tune.js";
import { DEFAULT_LORA_ALPHA } from "../../core/adapters/adapter.js";
import { defaultTrainThreads, type TrainKernelKind, trainKernels } from "../threads/train-pool.js";

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

/** Everything that defines a run; stored in its checkpoint. */
export interface RunOptions {
  readonly data: string[];
  readonly tokenizerKind: TokenizerKind;
  readonly tokenizerPath: string | null;
  /** A new model's shape, or the model file fine-tuned. */
  readonly init: { readonly scratch: NewModelSpec } | { readonly model: string; readonly rwkvLm?: boolean };
  readonly ctx: number;
  readonly batch: number;
  readonly steps: number;
  readonly lr: number;
  readonly lrFinal: number;
  readonly warmup: number;
  readonly decay: "cosine" | "linear";
  readonly weightDecay: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly adamEps: number;
  readonly gradClip: number;
  readonly l2wrap: boolean;
  readonly seed: number;
  readonly valFraction: number;
  readonly valEvery: number;
  readonly saveEvery: number;
  readonly exportDtype: ExportDType;
  /** LoRA tuning of a frozen --model (absent: every weight trains). */
  readonly lora?: LoraSpec;
  /** State tuning of a frozen --model: only blocks.i.att.time_state trains. */
  readonly stateTune?: boolean;
  /** Adapter runs: the frozen base's fingerprint (their checkpoints hold only the trained tensors). */
  readonly baseFingerprint?: string;
}

export const CHECKPOINT_FILE = "checkpoint.rwkvtrain";
const DEFAULTS = {
  version: "7", headSize: 64, ctx: 64, batch: 12, steps: 2000, lr: 6e-4, lrFinal: 6e-5, warmup: 10,
  weightDecay: 0.001, beta1: 0.9, beta2: 0.99, adamEps: 1e-8, gradClip: 1.0, seed: 1, valFraction: 0.1,
  valEvery: 200, saveEvery: 100,
} as const;
const VERSIONS: readonly TrainVersion[] = ["4", "5.2", "6", "7"];
/** Options a resumed run may change: they extend or bound the run, not its math so far. */
const RESUME_OVERRIDABLE = new Set(["steps", "max-seconds", "peak-gflops", "out", "resume", "threads", "kernels"]);
const MS_PER_S = 1000;
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
} as const;

function nonNegInt(values: Values, name: string, dflt: number): number {
  const v = values[name];
  if (v === undefined) return dflt;
  if (typeof v !== "string" || !/^\d+$/.test(v)) throw new UsageError(`--${name} must be a non-negative integer, got "${String(v)}"`);
  return Number(v);
}

/** The run options from flags (a fresh run); the tokenizer kind of a fine-tune is resolved from its vocabulary later. */
function runOptionsFromFlags(values: Values): Omit<RunOptions, "tokenizerKind"> & { tokenizerKind: TokenizerKind | null } {
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
  let init: RunOptions["init"];
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
      version: version as TrainVersion, nLayer: positiveInt(values, "layers", 0), nEmbd: positiveInt(values, "embd", 0),
      vocabSize: values.vocab !== undefined ? positiveInt(values, "vocab", 0) : 0, // 0: the tokenizer's
      ...(version !== "4" ? { headSize: positiveInt(values, "head-size", DEFAULTS.headSize) } : {}),
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
  return {
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
function flagValues(run: RunOptions, config: ModelConfig): Record<string, string | undefined> {
  return {
    version: config.version, layers: String(config.nLayer), embd: String(config.nEmbd),
    "head-size": config.version === "4" ? undefined : String(config.headSize), ffn: String(config.dimFfn), vocab: String(config.vocabSize),
    ctx: String(run.ctx), batch: String(run.batch), lr: String(run.lr), "lr-final": String(run.lrFinal), warmup: String(run.warmup),
    decay: run.decay, "weight-decay": String(run.weightDecay), beta1: String(run.beta1), beta2: String(run.beta2), "adam-eps": String(run.adamEps),
    "grad-clip": String(run.gradClip), "no-l2wrap": String(!run.l2wrap), "tokenizer-kind": run.tokenizerKind, seed: String(run.seed),
    "val-fraction": String(run.valFraction), "val-every": String(run.valEvery), "save-every": String(run.saveEvery), "export-dtype": run.exportDtype,
    lora: run.lora ? String(run.lora.rank) : undefined, "lora-alpha": run.lora ? String(run.lora.alpha) : undefined,
    "lora-targets": run.lora ? run.lora.targets.join(",") : undefined, "state-tune": run.stateTune ? "true" : "false",
  };
}

const ARCH_FLAGS = new Set(["version", "layers", "embd", "head-size", "ffn", "vocab"]);

/** --resume: any other flag given must describe the same run as the checkpoint. */
function checkResumeFlags(values: Values, saved: RunOptions, config: ModelConfig, ckptPath: string): void {
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

interface Session {
  readonly run: RunOptions;
  readonly out: string;
  readonly model: TrainModel;
  readonly opt: AdamW;
  readonly rng: TrainRng;
  step: number;
  tokensSeen: number;
  seconds: number;
  readonly history: TrainHistory;
  dataChecksum: string;
}

function tokenizerId(kind: TokenizerKind, file: string | null): string {
  return file === null ? kind : `${kind}:${createHash("sha256").update(readFileSync(file)).digest("hex").slice(0, 16)}`;
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

function csv(h: TrainHistory): string {
  const val = new Map(h.val.map(([s, l, sec]) => [s, [l, sec]]));
  const rows = ["step,train_loss,val_loss,train_seconds"];
  for (const [s, l] of h.train) {
    const v = val.get(s);
    rows.push(`${s},${l},${v ? v[0] : ""},${v ? v[1].toFixed(3) : ""}`);
  }
  return rows.join("\n") + "\n";
}

export async function trainCommand(args: string[], io: CliIO): Promise<number> {
  const { values } = parse(args, OPTIONS, []);
  const outText = str(values, "out");
  if (outText === undefined) throw new UsageError("--out DIR is required (checkpoints, plots and the trained model go there)");
  const out = resolve(outText);
  if (values.export !== undefined) return await exportRunCommand(values, out, CHECKPOINT_FILE, tokenizerId, io);
  const ckptPath = join(out, CHECKPOINT_FILE);
  const kind = str(values, "kernels") ?? "wasm";
  if (kind !== "wasm" && kind !== "reference") throw new UsageError(`--kernels must be wasm or reference, got "${kind}"`);
  // How a run computes is not part of the run: a resumed run may use other threads or kernels.
  const kernels = trainKernels(kind as TrainKernelKind, positiveInt(values, "threads", defaultTrainThreads()));

  let session: Session;
  if (values.resume === true) {
    const loaded = loadCheckpointFile<RunOptions>(ckptPath);
    const h = loaded.header;
    const params = h.run.baseFingerprint !== undefined && "model" in h.run.init
      ? restoreTuned(loaded.params, h.run.init.model, h.run.baseFingerprint, (base) => addTuning(h.run, base, null))
      : loaded.params;
    const model = new TrainModel(params, { kernels, ...tuning(h.run, params) });
    checkResumeFlags(values, h.run, model.config, ckptPath);
    const run: RunOptions = { ...h.run, steps: values.steps !== undefined ? positiveInt(values, "steps", h.run.steps) : h.run.steps };
    const opt = new AdamW(params, model.config.version, { beta1: run.beta1, beta2: run.beta2, eps: run.adamEps, weightDecay: run.weightDecay }, model.frozenParams(), loaded.optimizer, model.kernels);
    session = {
      run, out, model, opt, rng: TrainRng.fromState(h.rng), step: h.step, tokensSeen: h.tokensSeen, seconds: h.seconds,
      history: { train: [...h.history.train], val: [...h.history.val] }, dataChecksum: h.dataChecksum,
    };
    // A SIGKILL during a save can leave the writer's temporary file behind: it is garbage.
    for (const f of readdirSync(out)) if (f.startsWith(`.${CHECKPOINT_FILE}.`) && f.endsWith(".tmp")) unlinkSync(join(out, f));
    io.stderr(`resuming ${ckptPath} at step ${h.step}/${run.steps}\n`);
    if (h.kernels !== undefined && h.kernels !== kernels.build) {
      io.stderr(`note: the checkpoint's steps ran on the ${h.kernels} kernels, these run on ${kernels.build}, which round ` +
        "differently: the run continues correctly but will not be bit-identical to an uninterrupted one\n");
    }
  } else {
    let run = runOptionsFromFlags(values);
    if (run.data.some((d) => resolve(d) === out)) throw new UsageError("--out must not be one of the --data paths");
    if (existsSync(ckptPath)) throw new RwkvInputError(ckptPath, "a training checkpoint already exists here: use --resume to continue it, or another --out");
    if (existsSync(out) && !statSync(out).isDirectory()) throw new RwkvInputError(out, "--out is not a directory");
    mkdirSync(out, { recursive: true });
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
      try { params = ParamStore.fromCheckpoint(checkpoint, "f32"); } finally { close(); }
      if (run.lora || run.stateTune) {
        run = { ...run, baseFingerprint: storeFingerprint(params) };
        addTuning(run, params, rng);
      }
    }
    const model = new TrainModel(params, { kernels, ...tuning(run, params) });
    const full: RunOptions = { ...run, tokenizerKind: run.tokenizerKind ?? tokenizerKindForVocab(model.config.vocabSize) };
    const opt = new AdamW(params, model.config.version, { beta1: full.beta1, beta2: full.beta2, eps: full.adamEps, weightDecay: full.weightDecay }, model.frozenParams(), undefined, model.kernels);
    session = { run: full, out, model, opt, rng, step: 0, tokensSeen: 0, seconds: 0, history: { train: [], val: [] }, dataChecksum: "" };
  }
  return await runTraining(session, values, io);
}

/** Adds an adapter run's trainable tensors to the base (LoRA A from `rng`; on resume their values are overwritten). */
function addTuning(run: Pick<RunOptions, "lora" | "stateTune" | "init">, params: ParamStore, rng: TrainRng | null): void {
  if (run.lora) addLoraParams(params, run.lora, rng ?? new TrainRng(0));
  if (run.stateTune) addTimeStateParams(params, "model" in run.init ? run.init.model : "model");
}

/** What a LoRA run trains and how its adapters scale (nothing for a full fine-tune). */
function tuning(run: Pick<RunOptions, "lora" | "stateTune">, params: ParamStore): { trainable?: ReadonlySet<string>; loraScale?: number } {
  if (run.stateTune) return { trainable: new Set(timeStateNames(params)) };
  if (!run.lora) return {};
  return { trainable: new Set(loraParamNames(params)), loraScale: run.lora.alpha / run.lora.rank };
}

async function runTraining(s: Session, values: Values, io: CliIO): Promise<number> {
  const { run, model, opt, out } = s;
  const ckptPath = join(out, CHECKPOINT_FILE);
  const cfg = model.config;
  const modelPath = "model" in run.init ? run.init.model : undefined;
  const tokFile = run.tokenizerKind === "bytes" ? null : findTokenizerFile(run.tokenizerKind, { path: run.tokenizerPath ?? undefined, modelPath });
  const tokenizer = loadTokenizer({ kind: run.tokenizerKind, path: tokFile ?? undefined, vocabSize: cfg.vocabSize });
  const files = listDataFiles(run.data).filter((f) => !f.startsWith(out + "/")); // never train on our own outputs
  const data = await loadTokens(files, tokenizer, tokenizerId(run.tokenizerKind, tokFile), out);
  if (s.dataChecksum && s.dataChecksum !== data.checksum) {
    throw new RwkvInputError(run.data.join(", "), "the data changed since the checkpoint was written (its tokens differ); resume needs the same data");
  }
  s.dataChecksum = data.checksum;
  const { train, val } = splitData(data.tokens, run.valFraction, run.ctx, run.data.join(", "));
  const B = run.batch, T = run.ctx;
  const maxSeconds = numberIn(values, "max-seconds", 0, 0, 1e9);
  const peak = values["peak-gflops"] !== undefined ? numberIn(values, "peak-gflops", 1, 1e-3, 1e9) : measurePeakGflops(model.kernels);
  const flopsPerToken = trainFlopsPerToken(model);
  const sched: LrSchedule = { lrInit: run.lr, lrFinal: run.lrFinal, warmupSteps: run.warmup, totalSteps: run.steps, decay: run.decay };
  const tty = process.stderr.isTTY === true;
  io.stderr(`RWKV-${cfg.version} ${cfg.nLayer} x ${cfg.nEmbd} (head ${cfg.headSize}, ffn ${cfg.dimFfn}, vocab ${cfg.vocabSize}), ${model.params.count().toLocaleString("en-US")} parameters; ` +
    `data ${data.tokens.length.toLocaleString("en-US")} tokens (${run.tokenizerKind}${data.cached ? ", cached" : ""}): ${train.length.toLocaleString("en-US")} train, ${val.length.toLocaleString("en-US")} validation; ` +
    `batch ${B} x ${T}, ${run.steps} steps; kernels ${model.kernels.name}; MFU is relative to this machine's measured matmul peak, ${peak.toFixed(2)} GFLOP/s\n`);

  const validate = (): number => {
    if (val.length < 2) return NaN;
    let sum = 0, count = 0;
    for (const vb of validationBatches(val, B, T)) {
      const r = evalLossSum(model, vb.inputs, vb.targets, vb.B, T);
      sum += r.sum; count += r.count;
    }
    return sum / count;
  };
  const save = async () => {
    const header: Omit<CheckpointHeader<RunOptions>, "formatVersion" | "params" | "optimizerStep"> = {
      config: cfg, run, step: s.step, tokensSeen: s.tokensSeen, seconds: s.seconds, rng: s.rng.state(), dataChecksum: s.dataChecksum, history: s.history,
      kernels: model.kernels.build,
    };
    const trainable = tuning(run, model.params).trainable;
    await saveCheckpoint(ckptPath, header, trainable ? trainedSubset(model.params, trainable) : model.params, opt.state);
    const title = `RWKV-${cfg.version} ${cfg.nLayer}x${cfg.nEmbd}, batch ${B}x${T}: step ${s.step}`;
    await writeFileAtomic(join(out, "loss.svg"), [new TextEncoder().encode(lossCurveSvg(s.history, title))]);
    await writeFileAtomic(join(out, "loss.csv"), [new TextEncoder().encode(csv(s.history))]);
  };

  let lastDraw = -Infinity, lastLoss = NaN, lastVal = s.history.val.length ? s.history.val[s.history.val.length - 1][1] : NaN;
  const sessionStart = { seconds: s.seconds, tokens: s.tokensSeen };
  const status = (): string => {
    const dt = s.seconds - sessionStart.seconds, tok = s.tokensSeen - sessionStart.tokens;
    const tps = dt > 0 ? tok / dt : NaN, gflops = (tps * flopsPerToken) / 1e9;
    const eta = tps > 0 ? ((run.steps - s.step) * B * T) / tps : NaN;
    const pct = ((s.step / run.steps) * 100).toFixed(0).padStart(3);
    return `train ${pct}% step ${s.step}/${run.steps} loss ${lastLoss.toFixed(4)}${Number.isFinite(lastVal) ? ` val ${lastVal.toFixed(4)}` : ""} | ` +
      `${Number.isFinite(tps) ? tps.toFixed(0) : "?"} tok/s ${gflops.toFixed(2)} GFLOP/s MFU ${((gflops / peak) * 100).toFixed(0)}% | ` +
      `${formatDuration(s.seconds)} ETA ${formatDuration(eta)}`;
  };
  const line = (text: string) => { io.stderr((tty ? CLEAR_LINE : "") + text + "\n"); lastDraw = performance.now(); };
  const draw = () => {
    const now = performance.now();
    if (tty && now - lastDraw >= TTY_REDRAW_MS) { io.stderr(CLEAR_LINE + status().slice(0, (process.stderr.columns || 120) - 1)); lastDraw = now; }
    else if (!tty && now - lastDraw >= PLAIN_PROGRESS_MS) line(status());
  };
  lastDraw = tty ? -Infinity : performance.now();

  let stoppedByTime = false;
  while (s.step < run.steps) {
    const t0 = performance.now();
    const lr = learningRate(sched, s.step);
    const { inputs, targets } = sampleBatch(train, B, T, s.rng);
    const r = trainStep(model, opt, inputs, targets, B, T, { lr, gradClip: run.gradClip, l2wrap: run.l2wrap });
    if (!Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm)) {
      if (tty) io.stderr(CLEAR_LINE);
      const lastGood = existsSync(ckptPath) ? `the last good checkpoint (${ckptPath}) is intact` : "no checkpoint had been written yet";
      throw new RwkvInputError("training", `diverged at step ${s.step + 1}: loss ${r.loss}, gradient norm ${r.gradNorm} at learning rate ${lr.toPrecision(3)}; ` +
        `nothing was saved from this step and ${lastGood}. Lower --lr (or --grad-clip) and start again or --resume.`);
    }
    s.step++;
    s.tokensSeen += B * T;
    s.seconds += (performance.now() - t0) / MS_PER_S;
    lastLoss = r.loss;
    s.history.train.push([s.step, r.loss]);
    stoppedByTime = maxSeconds > 0 && s.seconds >= maxSeconds;
    const last = s.step === run.steps || stoppedByTime;
    if (run.valEvery > 0 && (s.step % run.valEvery === 0 || last)) {
      lastVal = validate();
      s.history.val.push([s.step, lastVal, s.seconds]);
      line(`step ${s.step}: validation loss ${lastVal.toFixed(4)} (${(lastVal / Math.LN2).toFixed(4)} bits/token) after ${s.seconds.toFixed(1)} s`);
    }
    if ((run.saveEvery > 0 && s.step % run.saveEvery === 0) || last) {
      await save();
      line(`checkpoint step ${s.step} -> ${ckptPath}`);
    }
    draw();
    if (stoppedByTime) break;
  }
  line(status());
  const dtype = run.exportDtype;
  if (run.stateTune) {
    const file = await exportTimeState(model.params, out, dtype);
    io.stdout(`trained ${s.step} steps (${s.tokensSeen.toLocaleString("en-US")} tokens, ${s.seconds.toFixed(1)} s): initial state ${file} ` +
      `(${dtype}; load with --state-in, or as an adapter), loss curve ${join(out, "loss.svg")}\n`);
    return 0;
  }
  if (run.lora) {
    const files = await exportLora(model.params, loraParamNames(model.params), out, run.lora, dtype);
    io.stdout(`trained ${s.step} steps (${s.tokensSeen.toLocaleString("en-US")} tokens, ${s.seconds.toFixed(1)} s): LoRA r ${run.lora.rank} alpha ${run.lora.alpha} ` +
      `${files.pth} (RWKV-PEFT, ${dtype}), ${files.dir}/ (peft), loss curve ${join(out, "loss.svg")}\n`);
    return 0;
  }
  await exportPth(model.params, join(out, "model.pth"), dtype);
  await exportSafetensors(model.params, join(out, "model.safetensors"), dtype, { step: String(s.step), tokens: String(s.tokensSeen) });
  io.stdout(`trained ${s.step} steps (${s.tokensSeen.toLocaleString("en-US")} tokens, ${s.seconds.toFixed(1)} s): ` +
    `${join(out, "model.pth")}, ${join(out, "model.safetensors")} (${dtype}), loss curve ${join(out, "loss.svg")}\n`);
  return 0;
}
