import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { RwkvInputError } from "../../core/errors.js";
import type { NewModelSpec } from "../../core/train/init.js";
import type { LoraSpec } from "../../core/train/lora.js";
import type { TokenizerKind } from "../../core/tokenizer/types.js";
import { findTokenizerFile, loadTokenizer } from "../tokenizer.js";
import { listDataFiles, loadTokens, type Split, splitData, type TokenData } from "./data.js";
import type { ExportDType } from "./export.js";

/* What defines a training run (stored in its checkpoint), its defaults, and the data it reads. */

/** Everything that defines a run; stored in its checkpoint, so a resumed run needs nothing else. */
export interface TrainRunOptions {
  /** Text files or directories (absolute paths). */
  readonly data: string[];
  readonly tokenizerKind: TokenizerKind;
  readonly tokenizerPath: string | null;
  /** A new model's shape, or the model file fine-tuned (rwkvLm: an RWKV-LM checkpoint, checked as such). */
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
  /**
   * Adapter runs: how the frozen base's matrices are held — "compact" (absent): in the file's type
   * (f16, bf16, ggml blocks; f32 ones as f32); "int8": f32/f16/bf16 `.weight` matrices quantized per row.
   */
  readonly baseMatrices?: "compact" | "int8";
  /** Adapter runs: the frozen base's fingerprint (their checkpoints hold only the trained tensors). */
  readonly baseFingerprint?: string;
}

/** A new run as a library caller gives it: data and init, the rest defaulting to TRAIN_DEFAULTS (tokenizer kind: from the vocabulary). */
export type NewTrainRun = Pick<TrainRunOptions, "data" | "init"> &
  Partial<Omit<TrainRunOptions, "data" | "init" | "baseFingerprint" | "tokenizerKind">> & { readonly tokenizerKind?: TokenizerKind | null };

/** The defaults of `rwkv train` (RWKV-LM's for small models, nanoGPT's 90/10 split). */
export const TRAIN_DEFAULTS = {
  ctx: 64, batch: 12, steps: 2000, lr: 6e-4, lrFinal: 6e-5, warmup: 10, decay: "cosine", weightDecay: 0.001, beta1: 0.9,
  beta2: 0.99, adamEps: 1e-8, gradClip: 1.0, l2wrap: true, seed: 1, valFraction: 0.1, valEvery: 200, saveEvery: 100,
  exportDtype: "f32", tokenizerPath: null,
} as const satisfies Partial<TrainRunOptions>;

export const CHECKPOINT_FILE = "checkpoint.rwkvtrain";

/** Ranges of the numeric options, as `rwkv train` enforces them on its flags. */
const RANGES: ReadonlyArray<[keyof Omit<TrainRunOptions, "tokenizerKind">, number, number, "int" | "real"]> = [
  ["ctx", 1, 2 ** 31, "int"], ["batch", 1, 2 ** 31, "int"], ["steps", 1, 2 ** 53, "int"], ["warmup", 0, 2 ** 53, "int"],
  ["seed", 0, 2 ** 53, "int"], ["valEvery", 0, 2 ** 53, "int"], ["saveEvery", 0, 2 ** 53, "int"],
  ["lr", 0, 1e9, "real"], ["lrFinal", 0, 10, "real"], ["weightDecay", 0, 10, "real"], ["beta1", 0, 0.999999, "real"],
  ["beta2", 0, 0.999999999, "real"], ["adamEps", 0, 1, "real"], ["gradClip", 0, 1e9, "real"], ["valFraction", 0, 0.9, "real"],
];

/** Refuses options no run can use, naming the option (the CLI's flag checks say the same with flag names). */
export function checkRunOptions(o: Omit<TrainRunOptions, "tokenizerKind">): void {
  for (const [key, min, max, kind] of RANGES) {
    const v = o[key];
    if (typeof v !== "number" || !(v >= min && v <= max) || (kind === "int" && !Number.isInteger(v))) {
      throw new RwkvInputError(`training option ${key}`, `must be ${kind === "int" ? "an integer" : "a number"} in [${min}, ${max}], got ${String(v)}`);
    }
  }
  if (o.decay !== "cosine" && o.decay !== "linear") throw new RwkvInputError("training option decay", `must be cosine or linear, got ${String(o.decay)}`);
  if (o.exportDtype !== "f32" && o.exportDtype !== "bf16") throw new RwkvInputError("training option exportDtype", `must be f32 or bf16, got ${String(o.exportDtype)}`);
  if (o.data.length === 0) throw new RwkvInputError("training option data", "no data paths given");
  if ((o.lora || o.stateTune) && !("model" in o.init)) throw new RwkvInputError("training option init", "LoRA and state tuning need an existing model (init.model)");
  if (o.baseMatrices !== undefined && o.baseMatrices !== "compact" && o.baseMatrices !== "int8") throw new RwkvInputError("training option baseMatrices", `must be compact or int8, got ${String(o.baseMatrices)}`);
  if (o.baseMatrices === "int8" && !o.lora && !o.stateTune) throw new RwkvInputError("training option baseMatrices", "int8 holds a frozen base: it needs LoRA or state tuning (a full fine-tune trains every weight in f32)");
  if (o.lora && o.stateTune) throw new RwkvInputError("training options", "state tuning and LoRA are separate runs: choose one");
}

/** Names a tokenizer and its vocabulary (a hash of the vocab file): the token cache is valid only for the same one. */
export function tokenizerId(kind: TokenizerKind, file: string | null): string {
  return file === null ? kind : `${kind}:${createHash("sha256").update(readFileSync(file)).digest("hex").slice(0, 16)}`;
}

/**
 * A run's tokens (from out's cache when it still matches) and their train/validation split; with
 * `expect`, tokens whose checksum differs from the checkpoint's are refused with its `problem`.
 */
export async function loadRunData(run: TrainRunOptions, vocabSize: number, out: string, expect?: { checksum: string; problem: string }): Promise<{ data: TokenData; split: Split }> {
  const modelPath = "model" in run.init ? run.init.model : undefined;
  const tokFile = run.tokenizerKind === "bytes" ? null : findTokenizerFile(run.tokenizerKind, { path: run.tokenizerPath ?? undefined, modelPath });
  const tokenizer = loadTokenizer({ kind: run.tokenizerKind, path: tokFile ?? undefined, vocabSize });
  const files = listDataFiles(run.data).filter((f) => !f.startsWith(out + "/")); // never train on our own outputs
  const data = await loadTokens(files, tokenizer, tokenizerId(run.tokenizerKind, tokFile), out);
  if (expect && expect.checksum !== data.checksum) throw new RwkvInputError(run.data.join(", "), expect.problem);
  return { data, split: splitData(data.tokens, run.valFraction, run.ctx, run.data.join(", ")) };
}
