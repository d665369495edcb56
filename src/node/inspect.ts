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
}

/** Everything `rwkv info` reports, from the tensor index alone: no weight is decoded. */
export function describeCheckpoint(ckpt: Checkpoint): ModelInfo {
  const version = detectVersion(ckpt);
  const config = versionModule(version).inferConfig(checkpointShapes(ckpt));
  let parameters = 0;
  const dtypes: Record<string, number> = {};
  for (const t of ckpt.tensors.values()) {
    parameters += numel(t.shape);
    dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
  }
  return { format: ckpt.format, config, parameters, dtypes, tensors: ckpt.tensors.size, metadata: ckpt.metadata };
}
