import type { TokenizerKind } from "../../core/tokenizer/types.js";

/**
 * Models `rwkv pull NAME` knows by name: the official RWKV-7 "G1" releases on Hugging Face
 * (https://huggingface.co/BlinkDL/rwkv7-g1). Sizes and SHA-256 digests are those Hugging Face lists
 * for the files (as RWKV-Runner's manifest.json records them); a download is refused unless both match.
 */
export interface CatalogEntry {
  readonly name: string;
  /** File name in the model's folder (the released name, so the date and context length stay visible). */
  readonly file: string;
  readonly url: string;
  readonly bytes: number;
  readonly sha256: string;
  readonly tokenizer: TokenizerKind;
  /** Pulled into the same folder: the tokenizer file the model needs, where it does not carry one. */
  readonly sideFiles: readonly SideFile[];
  readonly description: string;
}

/** A file pulled beside a model so that its tokenizer is found there (tokenizer.ts looks beside the model). */
export interface SideFile {
  readonly file: string;
  readonly url: string;
  readonly bytes: number;
  readonly sha256: string;
}

/**
 * The World vocabulary (ChatRWKV's tokenizer/rwkv_vocab_v20230424.txt, Apache-2.0): every World model
 * needs it and the .pth files do not carry it.
 */
export const WORLD_VOCAB: SideFile = {
  file: "rwkv_vocab_v20230424.txt",
  url: "https://raw.githubusercontent.com/BlinkDL/ChatRWKV/main/tokenizer/rwkv_vocab_v20230424.txt",
  bytes: 1093733,
  sha256: "e6dee3d4e31b4d5c40ac99508ac6c701ceef4bed681bf2167ce9a908552bca89",
};

const HF_G1 = "https://huggingface.co/BlinkDL/rwkv7-g1/resolve/main/";

function g1(size: string, date: string, bytes: number, sha256: string, params: string): CatalogEntry {
  const file = `rwkv7-g1-${size}-${date}-ctx4096.pth`;
  return {
    name: `rwkv7-g1-${size}`, file, url: HF_G1 + file, bytes, sha256, tokenizer: "world", sideFiles: [WORLD_VOCAB],
    description: `RWKV-7 G1 ${params} parameters, World vocabulary, bf16 .pth`,
  };
}

export const CATALOG: Readonly<Record<string, CatalogEntry>> = Object.fromEntries([
  g1("0.1b", "20250307", 382231495, "854230983f1015407c44274a7a27196ed72007618995b7a7efba3c4a15f69a45", "0.19 B"),
  g1("0.4b", "20250324", 901779157, "797e6393a980e7f6518d0f4e74dab4f4a01aff4e85d3bb2fe3d3efd23cf5d93a", "0.45 B"),
  g1("1.5b", "20250429", 3055445649, "3a5ad5596ee90fd2eb98dfb946b7b6be30576dc973ac664a44e8e87a8c53f958", "1.5 B"),
  g1("2.9b", "20250519", 5896274653, "163b76a041c4f69c115732404ac810f0feee354e4a01554f24c70ae5d2bfdbd6", "2.9 B"),
].map((e) => [e.name, e]));
