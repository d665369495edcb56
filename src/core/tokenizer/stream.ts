import type { Tokenizer } from "./types.js";

/**
 * Turns generated ids into text as they arrive without ever emitting half a UTF-8 character:
 * incomplete trailing bytes wait for the next token. Invalid bytes become U+FFFD.
 */
export class StreamDecoder {
  // stream: true makes TextDecoder hold an incomplete trailing sequence between calls.
  private readonly decoder = new TextDecoder("utf-8", { ignoreBOM: true });

  constructor(private readonly tokenizer: Pick<Tokenizer, "decodeBytes">) {}

  /** Text completed by this token (often "", e.g. the first byte of a multi-token emoji). */
  push(id: number): string {
    return this.decoder.decode(this.tokenizer.decodeBytes([id]), { stream: true });
  }

  /** Whatever is still held (an unfinished character becomes U+FFFD); the decoder can be reused after. */
  flush(): string {
    return this.decoder.decode();
  }
}
