import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { RwkvInputError } from "../core/errors.js";
import { isGguf } from "../core/formats/gguf.js";
import { ggufVocab } from "../core/formats/gguf-vocab.js";
import { createTokenizer, TOKENIZER_FILES, WORLD_VOCAB_SIZE, WorldTokenizer } from "../core/tokenizer/index.js";
import { tokenizerKindForVocab } from "../core/tokenizer/choose.js";
import type { Tokenizer, TokenizerKind } from "../core/tokenizer/types.js";
import { loadCheckpoint } from "./load.js";

export type { Tokenizer, TokenizerKind } from "../core/tokenizer/types.js";

export interface LoadTokenizerOptions {
  /** Which tokenizer; default: chosen from vocabSize. */
  readonly kind?: TokenizerKind;
  /** The model's vocabulary size (embedding rows). */
  readonly vocabSize?: number;
  /** The vocab / tokenizer.json file; default: the standard file name beside modelPath. */
  readonly path?: string;
  /** The model file, whose directory is searched for the tokenizer file. */
  readonly modelPath?: string;
}

/** The tokenizer kind from options: explicit kind first, else the model's vocab size. */
export function resolveTokenizerKind(options: Pick<LoadTokenizerOptions, "kind" | "vocabSize">): TokenizerKind {
  if (options.kind !== undefined) return options.kind;
  if (options.vocabSize === undefined) {
    throw new RwkvInputError("tokenizer", "neither a tokenizer kind nor the model's vocab size is known (pass --tokenizer-kind world|20b|bytes)");
  }
  return tokenizerKindForVocab(options.vocabSize);
}

/**
 * The file a tokenizer kind is built from: `path` if given, else its standard name beside the
 * model; null for kinds that need no file. Throws RwkvInputError naming the file and the
 * `--tokenizer PATH` option when it is not there. Shared by loadTokenizer and the CLI.
 */
export function findTokenizerFile(kind: TokenizerKind, options: Pick<LoadTokenizerOptions, "path" | "modelPath"> = {}): string | null {
  const file = TOKENIZER_FILES[kind];
  if (options.path !== undefined) {
    // A tokenizer file that was asked for but is missing or unused is a mistake, never ignored.
    if (!existsSync(options.path) || !statSync(options.path).isFile()) {
      throw new RwkvInputError(options.path, `tokenizer file not found${file === null ? "" : ` (the ${kind} tokenizer needs ${file})`}`);
    }
    if (file === null) throw new RwkvInputError(options.path, `the ${kind} tokenizer uses no file (pass --tokenizer-kind world|20b to use this one)`);
    return options.path;
  }
  if (file === null) return null;
  const beside = options.modelPath === undefined ? null : join(dirname(options.modelPath), file);
  if (beside !== null && existsSync(beside)) return beside;
  const where = beside === null ? "" : ` (looked for ${beside})`;
  throw new RwkvInputError(file, `the ${kind} tokenizer needs this file${where}; pass it with --tokenizer PATH`);
}

/**
 * Loads the tokenizer for a model: a GGUF model's own World vocabulary when it carries one (and
 * nothing else was asked for); else kind from options or vocab size, file from path or beside the model.
 */
export function loadTokenizer(options: LoadTokenizerOptions = {}): Tokenizer {
  if (options.kind === undefined && options.path === undefined && options.modelPath !== undefined) {
    const embedded = embeddedWorldVocab(options.modelPath);
    if (embedded) return embedded;
  }
  const kind = resolveTokenizerKind(options);
  const file = findTokenizerFile(kind, options);
  const tokenizer = createTokenizer(kind, file === null ? null : readFileSync(file, "utf8"), file ?? undefined);
  // A tokenizer emitting ids past the embedding would index out of the model.
  if (options.vocabSize !== undefined && options.vocabSize < tokenizer.vocabSize) {
    throw new RwkvInputError(`tokenizer ${kind}`,
      `uses ids up to ${tokenizer.vocabSize - 1} but the model's vocabulary has only ${options.vocabSize} entries`);
  }
  return tokenizer;
}

/** The World tokenizer stored in a GGUF file (llama.cpp's "rwkv" tokenizer), or null. */
function embeddedWorldVocab(modelPath: string): Tokenizer | null {
  let head: Uint8Array;
  try {
    const fd = openSync(modelPath, "r");
    try {
      head = new Uint8Array(4);
      readSync(fd, head, 0, 4, 0);
    } finally {
      closeSync(fd);
    }
  } catch {
    return null; // the model loader reports unreadable files
  }
  if (!isGguf(head)) return null;
  const { checkpoint, close } = loadCheckpoint(modelPath);
  try {
    const vocab = ggufVocab(checkpoint);
    if (vocab?.model !== "rwkv" || vocab.tokens.length > WORLD_VOCAB_SIZE) return null;
    return new WorldTokenizer(vocab.tokens, `${modelPath} (embedded vocabulary)`);
  } finally {
    close();
  }
}
