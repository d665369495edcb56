// The browser-safe core: models, kernels, tokenizers and format parsers working on bytes.
export type { Backend, Matrix } from "./backend/backend.js";
export { referenceBackend } from "./backend/reference.js";
export { availableBackends, registerBackend, selectBackend } from "./backend/registry.js";
export { type ByteSource, MemorySource } from "./bytes.js";
export { FormatError, RwkvInputError } from "./errors.js";
export type { Checkpoint, CheckpointFormat } from "./formats/checkpoint.js";
export { openCheckpoint } from "./formats/open.js";
export { readSafetensors, writeSafetensors } from "./formats/safetensors.js";
export { architectureFor, detectVersion } from "./model/detect.js";
export { buildModel, type ForwardOptions, type Model, type ModelConfig, type Version } from "./model/model.js";
export { State } from "./model/state.js";
export type { DType, TensorEntry } from "./tensor.js";
export * from "./tokenizer/index.js";
export { argmax, DEFAULT_CHUNK_LEN, type FinishReason, generate, type GenerateInput, type GenerateOptions, type GenerationPiece, type GenerationResult, prefill } from "./generate.js";
export { type CachedPrefix, PrefixCache } from "./prefix-cache.js";
export { logProb, type PenaltyOptions, Penalties, Rng, sampleLogits, type SamplerOptions, samplingProbs, validateSamplerOptions } from "./sampling.js";
export { checkStateBelongs, decodeStateFile, encodeStateFile, type ModelIdentity, modelIdentity, type StateFile } from "./state-file.js";
