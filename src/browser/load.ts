import { selectBackend } from "../core/backend/registry.js";
import { prepareWebGpu, webGpuUnavailableReason } from "../core/backend/webgpu/index.js";
import { RwkvInputError } from "../core/errors.js";
import { openCheckpoint } from "../core/formats/open.js";
import { architectureFor, detectVersion } from "../core/model/detect.js";
import { buildModel, type Model } from "../core/model/model.js";
import { createTokenizer, TOKENIZER_FILES, tokenizerKindForVocab, type Tokenizer, type TokenizerKind } from "../core/tokenizer/index.js";
import { openSource, readAll, type Source, sourceName } from "./sources.js";
import { backendReady } from "./threads.js";

/*
 * The browser's loaders: the same steps as src/node/load.ts and tokenizer.ts (format from content,
 * version from tensor names, the core's model and tokenizers), with bytes coming from memory, a
 * Blob or a URL instead of a path.
 */

export interface BrowserLoadOptions {
  /** Backend name ("webgpu", "wasm", "reference"); default: the best available (WebGPU where the browser has an adapter). */
  readonly backend?: string;
  /** Kernel threads, the calling one included; more than 1 needs an isolated Worker. Default: all that can run. */
  readonly threads?: number;
  /** Keep matrices compact (default), upcast them to f32, or quantize them to per-row int8. */
  readonly matrices?: "compact" | "f32" | "int8";
  /** Names the model in messages when the source has no name of its own (bytes, a Blob). */
  readonly name?: string;
}

/** Loads an RWKV model (.pth, safetensors, rwkv.cpp .bin, GGUF) into this thread. */
export async function loadModel(source: Source, options: BrowserLoadOptions = {}): Promise<Model> {
  const name = options.name ?? sourceName(source, "model");
  if (options.backend === undefined || options.backend === "webgpu") {
    // The GPU where the browser offers one; otherwise the next backend, and the console says why.
    if (!(await prepareWebGpu()) && options.backend === undefined) console.info(`rwkv: no WebGPU (${webGpuUnavailableReason()}): running on the CPU kernels`);
  }
  const backend = selectBackend(options.backend, { threads: options.threads });
  const src = await openSource(source, name);
  const checkpoint = openCheckpoint(src);
  const version = detectVersion(checkpoint);
  const model = buildModel(checkpoint, architectureFor(version, name), version, backend, { matrices: options.matrices });
  await backendReady(backend);
  return model;
}

export interface BrowserTokenizerOptions {
  /** Which tokenizer; default: chosen from vocabSize. */
  readonly kind?: TokenizerKind;
  /** The model's vocabulary size (config.vocabSize), to choose the kind and check the ids fit. */
  readonly vocabSize?: number;
  readonly name?: string;
}

/**
 * A tokenizer from its file (rwkv_vocab_v20230424.txt for World, 20B_tokenizer.json for GPT-NeoX)
 * given as bytes, a Blob or a URL; `source` may be omitted for the byte tokenizer.
 */
export async function loadTokenizer(source: Source | null, options: BrowserTokenizerOptions = {}): Promise<Tokenizer> {
  let kind = options.kind;
  if (kind === undefined) {
    if (options.vocabSize === undefined) throw new RwkvInputError("tokenizer", "give its kind or the model's vocabSize");
    kind = tokenizerKindForVocab(options.vocabSize);
  }
  const name = options.name ?? (source === null ? `${kind} tokenizer` : sourceName(source, TOKENIZER_FILES[kind] ?? kind));
  let text: string | null = null;
  if (kind !== "bytes") {
    if (source === null) throw new RwkvInputError(name, `the ${kind} tokenizer needs the content of ${TOKENIZER_FILES[kind]}`);
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(await readAll(source, name));
    } catch (e) {
      if (e instanceof RwkvInputError) throw e;
      throw new RwkvInputError(name, "is not UTF-8 text");
    }
  }
  const tokenizer = createTokenizer(kind, text, name);
  if (options.vocabSize !== undefined && options.vocabSize < tokenizer.vocabSize) {
    throw new RwkvInputError(name, `uses ids up to ${tokenizer.vocabSize - 1} but the model's vocabulary has only ${options.vocabSize} entries`);
  }
  return tokenizer;
}
