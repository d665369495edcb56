/** The tokenizers this package implements, named as on the CLI (`--tokenizer-kind`). */
export type TokenizerKind = "world" | "20b" | "bytes";

/** Text ⇄ token ids. Implementations are pure and synchronous so they run in browsers too. */
export interface Tokenizer {
  readonly name: TokenizerKind;
  /** Number of ids the model side must accept (the embedding rows the tokenizer can address). */
  readonly vocabSize: number;
  encode(text: string): number[];
  /** Text as the official tokenizer's decode returns it (see each implementation for invalid UTF-8). */
  decode(ids: readonly number[]): string;
  /** The raw bytes of the tokens, concatenated (ids without bytes contribute nothing). */
  decodeBytes(ids: readonly number[]): Uint8Array;
}
