import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import type { Checkpoint } from "../../core/formats/checkpoint.js";
import type { ModelConfig } from "../../core/model/model.js";
import { TrainModel } from "../../core/train/model.js";
import { learningRate } from "../../core/train/optim.js";
import { ParamStore } from "../../core/train/params.js";
import { loadCheckpoint } from "../load.js";
import { loadCheckpointFile } from "./checkpoint.js";
import { exportRwkvLm, rwkvLmProblems, stripDeepSpeed } from "./rwkv-lm.js";
import { CHECKPOINT_FILE, loadRunData, type TrainRunOptions } from "./run-options.js";

/* A run's hand-over to RWKV-LM's GPU trainer (`rwkv train --export rwkv-lm`) and back (`--init-from FILE`). */

export interface RwkvLmRunExport {
  /** The checkpoint's step: the exported weights are those saved then. */
  readonly step: number;
  readonly config: ModelConfig;
  /** Tokens of the training split written as binidx. */
  readonly trainTokens: number;
  readonly files: readonly string[];
  /** The command that continues the run in RWKV-LM. */
  readonly command: string;
}

/** Writes OUT/rwkv-lm/ from OUT's training checkpoint (weights at its last saved step, its training tokens, the command). */
export async function exportRwkvLmRun(out: string): Promise<RwkvLmRunExport> {
  const dir = resolve(out), ckptPath = join(dir, CHECKPOINT_FILE);
  if (!existsSync(ckptPath)) throw new RwkvInputError(ckptPath, "no training checkpoint here: --export rwkv-lm converts a run that `rwkv train --out DIR` saved");
  const loaded = loadCheckpointFile<TrainRunOptions>(ckptPath);
  const run = loaded.header.run;
  const config = new TrainModel(loaded.params).config;
  const problems = rwkvLmProblems(config, new Map(loaded.params.list.map((p) => [p.name, p])));
  if (problems.length) throw new RwkvInputError(ckptPath, `RWKV-LM's trainer cannot continue this model: ${problems.join("; ")}`);
  const { split } = await loadRunData(run, config.vocabSize, dir,
    { checksum: loaded.header.dataChecksum, problem: "the data changed since the checkpoint was written; the export needs the run's own training tokens" });
  const step = loaded.header.step;
  const lrNow = learningRate({ lrInit: run.lr, lrFinal: run.lrFinal, warmupSteps: run.warmup, totalSteps: run.steps, decay: run.decay }, step);
  const { files, command } = await exportRwkvLm(loaded.params, config, split.train, { ...run, lrNow }, join(dir, "rwkv-lm"));
  return { step, config, trainTokens: split.train.length, files, command };
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
