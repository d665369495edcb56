import { RwkvInputError } from "../errors.js";
import { BYTES_VOCAB_SIZE } from "./bytes.js";
import { NEOX_VOCAB_SIZE } from "./neox.js";
import type { TokenizerKind } from "./types.js";
import { WORLD_VOCAB_SIZE } from "./world.js";

/**
 * The tokenizer a model was trained with, from its embedding size. Pile models are often padded
 * (50277 → 50304 and so on), so any size from 50277 up to below World's 65536 counts as 20B.
 */
export function tokenizerKindForVocab(vocabSize: number): TokenizerKind {
  if (vocabSize === WORLD_VOCAB_SIZE) return "world";
  if (vocabSize >= NEOX_VOCAB_SIZE && vocabSize < WORLD_VOCAB_SIZE) return "20b";
  if (vocabSize === BYTES_VOCAB_SIZE) return "bytes";
  throw new RwkvInputError(`vocab size ${vocabSize}`,
    `no known tokenizer has this size (World ${WORLD_VOCAB_SIZE}, GPT-NeoX 20B ${NEOX_VOCAB_SIZE}..${WORLD_VOCAB_SIZE - 1}, ` +
    `bytes ${BYTES_VOCAB_SIZE}); pass the tokenizer kind explicitly (--tokenizer-kind world|20b|bytes)`);
}
