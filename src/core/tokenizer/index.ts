// Tokenizers: World (greedy byte trie), GPT-NeoX 20B (byte-level BPE) and raw bytes.
import { RwkvInputError } from "../errors.js";
import { ByteTokenizer } from "./bytes.js";
import { NEOX_TOKENIZER_FILE, NeoxTokenizer } from "./neox.js";
import type { Tokenizer, TokenizerKind } from "./types.js";
import { WORLD_VOCAB_FILE, WorldTokenizer } from "./world.js";

export { BYTES_VOCAB_SIZE, ByteTokenizer } from "./bytes.js";
export { tokenizerKindForVocab } from "./choose.js";
export { NEOX_TOKENIZER_FILE, NEOX_VOCAB_SIZE, NeoxTokenizer, type NeoxDecodeOptions } from "./neox.js";
export { parsePythonLiteral } from "./python-literal.js";
export { StreamDecoder } from "./stream.js";
export type { Tokenizer, TokenizerKind } from "./types.js";
export { parseWorldVocab, WORLD_VOCAB_FILE, WORLD_VOCAB_SIZE, WorldTokenizer } from "./world.js";

/** The file each kind is built from (null: needs none). */
export const TOKENIZER_FILES: Readonly<Record<TokenizerKind, string | null>> = {
  world: WORLD_VOCAB_FILE,
  "20b": NEOX_TOKENIZER_FILE,
  bytes: null,
};

/**
 * Builds a tokenizer from the text of its file (browsers fetch it; Node reads it).
 * `name` labels errors, usually the path.
 */
export function createTokenizer(kind: TokenizerKind, content: string | null, name?: string): Tokenizer {
  if (kind === "bytes") return new ByteTokenizer();
  if (content === null) throw new RwkvInputError(name ?? `${kind} tokenizer`, `the content of ${TOKENIZER_FILES[kind]} is required`);
  return kind === "world" ? WorldTokenizer.fromVocabText(content, name) : NeoxTokenizer.fromJson(content, name);
}
