import type { Tokenizer } from "./types.js";
import { utf8DecodeLossy, utf8Encode } from "./utf8.js";

/** Vocab of byte-level models (the rwkv.cpp tiny test models): token id = byte value. */
export const BYTES_VOCAB_SIZE = 256;

export class ByteTokenizer implements Tokenizer {
  readonly name = "bytes" as const;
  readonly vocabSize = BYTES_VOCAB_SIZE;

  encode(text: string): number[] {
    return Array.from(utf8Encode(text));
  }

  decodeBytes(ids: readonly number[]): Uint8Array {
    const out = new Uint8Array(ids.length);
    ids.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= BYTES_VOCAB_SIZE) throw new RangeError(`token id ${id} is not a byte`);
      out[i] = id;
    });
    return out;
  }

  /** Invalid UTF-8 becomes U+FFFD per bad sequence (there is no official decoder to mirror). */
  decode(ids: readonly number[]): string {
    return utf8DecodeLossy(this.decodeBytes(ids));
  }
}
