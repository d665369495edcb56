// Public API for Node.js. The browser-safe subset is "rwkv-ts/core".
export * from "../core/index.js";
export { FileSource } from "./file-source.js";
export { describeCheckpoint, type ModelInfo } from "./inspect.js";
export { loadCheckpoint, loadModel, type LoadOptions } from "./load.js";
export * from "./tokenizer.js";
export { type AdapterSpec, loadAdapterUnmerged, openAdapter } from "./adapters.js";
export { loadStartState, saveStateFile, type LoadedStart } from "./state-io.js";
export { prepareNodeWebGpu } from "./webgpu.js";
export { modelHomeFromEnv, type ModelHome, resolveModelArg } from "./pull/home.js";
export { pullModel, type PullOptions, type PullResult } from "./pull/pull.js";
export { CATALOG, type CatalogEntry } from "./pull/catalog.js";
export {
  type DoneEvent, type ExportEvent, type ResumeOptions, type RunControl, type TrainCompute, TrainingDivergedError, type TrainingEvent, TrainingRun,
} from "./train/run.js";
export { CHECKPOINT_FILE, type NewTrainRun, TRAIN_DEFAULTS, type TrainRunOptions } from "./train/run-options.js";
export { exportRwkvLmRun, type RwkvLmRunExport } from "./train/rwkv-lm-run.js";
export type { TrainHistory } from "../core/train/loop.js";
export type { NewModelSpec } from "../core/train/init.js";
export type { LoraSpec } from "../core/train/lora.js";
