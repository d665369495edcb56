import { existsSync } from "node:fs";
import { join } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import type { Checkpoint } from "../../core/formats/checkpoint.js";
import { TrainModel } from "../../core/train/model.js";
import { learningRate } from "../../core/train/optim.js";
import { ParamStore } from "../../core/train/params.js";
import { type CliIO, str, UsageError, type Values } from "../cli-util.js";
import { loadCheckpoint } from "../load.js";
import { findTokenizerFile, loadTokenizer } from "../tokenizer.js";
import { loadCheckpointFile } from "./checkpoint.js";
import { listDataFiles, loadTokens, splitData } from "./data.js";
import { exportRwkvLm, rwkvLmProblems, stripDeepSpeed } from "./rwkv-lm.js";
import type { TokenizerKind } from "../../core/tokenizer/types.js";

/* `rwkv train --out DIR --export rwkv-lm` and `--init-from FILE` (kept here so train.ts only calls in). */

/** What this needs of train.ts's RunOptions (stored in the run's checkpoint). */
interface SavedRun {
  readonly data: string[];
  readonly tokenizerKind: TokenizerKind;
  readonly tokenizerPath: string | null;
  readonly init: { readonly model: string } | object;
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
  readonly valFraction: number;
}

const EXPORT_FORMATS = ["rwkv-lm"] as const;
const EXPORT_ONLY_FLAGS = new Set(["export", "out", "threads", "kernels"]);

/** Writes DIR/rwkv-lm/ from DIR's training checkpoint (weights at its last saved step, its training tokens, the command). */
export async function exportRunCommand(values: Values, out: string, checkpointFile: string, tokenizerId: (kind: TokenizerKind, file: string | null) => string, io: CliIO): Promise<number> {
  const format = str(values, "export");
  if (!(EXPORT_FORMATS as readonly string[]).includes(format ?? "")) throw new UsageError(`--export must be ${EXPORT_FORMATS.join(" or ")}, got "${format}"`);
  for (const k of Object.keys(values)) {
    if (values[k] !== undefined && !EXPORT_ONLY_FLAGS.has(k)) throw new UsageError(`--export rwkv-lm converts the run in --out DIR; --${k} does not apply`);
  }
  const ckptPath = join(out, checkpointFile);
  if (!existsSync(ckptPath)) throw new RwkvInputError(ckptPath, "no training checkpoint here: --export rwkv-lm converts a run that `rwkv train --out DIR` saved");
  const loaded = loadCheckpointFile<SavedRun>(ckptPath);
  const run = loaded.header.run;
  const config = new TrainModel(loaded.params).config;
  const problems = rwkvLmProblems(config, new Map(loaded.params.list.map((p) => [p.name, p])));
  if (problems.length) throw new RwkvInputError(ckptPath, `RWKV-LM's trainer cannot continue this model: ${problems.join("; ")}`);
  const modelPath = "model" in run.init ? String(run.init.model) : undefined;
  const tokFile = run.tokenizerKind === "bytes" ? null : findTokenizerFile(run.tokenizerKind, { path: run.tokenizerPath ?? undefined, modelPath });
  const tokenizer = loadTokenizer({ kind: run.tokenizerKind, path: tokFile ?? undefined, vocabSize: config.vocabSize });
  const files = listDataFiles(run.data).filter((f) => !f.startsWith(out + "/"));
  const data = await loadTokens(files, tokenizer, tokenizerId(run.tokenizerKind, tokFile), out);
  if (data.checksum !== loaded.header.dataChecksum) throw new RwkvInputError(run.data.join(", "), "the data changed since the checkpoint was written; the export needs the run's own training tokens");
  const { train } = splitData(data.tokens, run.valFraction, run.ctx, run.data.join(", "));
  const step = loaded.header.step;
  const lrNow = learningRate({ lrInit: run.lr, lrFinal: run.lrFinal, warmupSteps: run.warmup, totalSteps: run.steps, decay: run.decay }, step);
  const dir = join(out, "rwkv-lm");
  const { files: written, command } = await exportRwkvLm(loaded.params, config, train, { ...run, lrNow }, dir);
  io.stdout(`RWKV-LM export of step ${step} (RWKV-${config.version} ${config.nLayer} x ${config.nEmbd}, ${train.length.toLocaleString("en-US")} training tokens):\n` +
    written.map((f) => `  ${f}\n`).join("") + `continue on GPUs with (see docs/scale-out.md):\n${command}`);
  return 0;
}

/** `--init-from FILE`: the weights of an RWKV-LM checkpoint, refused unless RWKV-LM's trainer could have written them. */
export function paramsFromRwkvLm(path: string): ParamStore {
  const { checkpoint, close } = loadCheckpoint(path);
  let params: ParamStore;
  try { params = ParamStore.fromCheckpoint(stripDeepSpeed(checkpoint as Checkpoint), "f32"); } finally { close(); }
  let config;
  try { config = new TrainModel(params).config; } catch (e) {
    throw new RwkvInputError(path, `not an RWKV-LM checkpoint this trainer can continue: ${(e as Error).message}`);
  }
  const problems = rwkvLmProblems(config, new Map(params.list.map((p) => [p.name, p])));
  if (problems.length) throw new RwkvInputError(path, `not an RWKV-LM checkpoint this trainer can continue: ${problems.join("; ")}`);
  return params;
}
