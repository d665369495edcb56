import type { TensorEntry } from "../tensor.js";

export type CheckpointFormat = "pth" | "safetensors" | "rwkv.cpp" | "gguf";

/**
 * A checkpoint as a name -> tensor map in the official RWKV-LM naming and shapes (the state dict
 * `torch.save` writes), whatever the file format. Readers undo format-specific transforms (e.g.
 * rwkv.cpp's `-exp(time_decay)`) so models see raw trained parameters only.
 */
export interface Checkpoint {
  readonly format: CheckpointFormat;
  /** File path or name, used in messages. */
  readonly source: string;
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /** Free-form string metadata (safetensors `__metadata__`, rwkv.cpp header fields...). */
  readonly metadata: Readonly<Record<string, string>>;
  /** How the file's own engine computes, where that differs from the official code (set by its reader). */
  readonly numerics?: CheckpointNumerics;
}

/** Numerics a file format fixes for the model it holds (each absent field: the version's default). */
export interface CheckpointNumerics {
  /** eps of the ln_x GroupNorm. */
  readonly groupNormEps?: number;
}

/** Refuse shapes that could trigger a giant allocation before a single byte is read. */
export const MAX_TENSOR_ELEMENTS = 2 ** 32;
