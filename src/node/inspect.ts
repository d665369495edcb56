import type { Checkpoint } from "../core/formats/checkpoint.js";
import { detectVersion } from "../core/model/detect.js";
import type { ModelConfig } from "../core/model/model.js";
import { checkpointShapes } from "../core/model/shapes.js";
import { versionModule } from "../core/model/versions.js";
import { numel } from "../core/tensor.js";

export interface ModelInfo {
  readonly format: string;
  readonly config: ModelConfig;
  readonly parameters: number;
  /** Number of tensors per stored dtype. */
  readonly dtypes: Readonly<Record<string, number>>;
  readonly tensors: number;
  readonly metadata: Readonly<Record<string, string>>;
  /**
   * The recurrent state's size in floats: `fixed` for a fresh state; `perToken` what it gains per
   * token seen (0: constant memory; RWKV-7b and the RWKV-8 hybrid keep a KV cache and grow).
   */
  readonly state: { readonly fixed: number; readonly perToken: number };
}

/** Everything `rwkv info` reports, from the tensor index alone: no weight is decoded. */
export function describeCheckpoint(ckpt: Checkpoint): ModelInfo {
  const version = detectVersion(ckpt);
  const m = versionModule(version), shapes = checkpointShapes(ckpt);
  const config = m.inferConfig(shapes);
  const layer = m.architecture.initLayerState(config);
  const fixed = config.nLayer * Object.values(layer).reduce((n, a) => n + a.length, 0);
  const state = { fixed, perToken: m.architecture.stateFloatsPerToken?.(shapes, config) ?? 0 };
  let parameters = 0;
  const dtypes: Record<string, number> = {};
  for (const t of ckpt.tensors.values()) {
    parameters += numel(t.shape);
    dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
  }
  return { format: ckpt.format, config, parameters, dtypes, tensors: ckpt.tensors.size, metadata: ckpt.metadata, state };
}
