import { FormatError, RwkvInputError } from "../errors.js";
import type { Checkpoint } from "./checkpoint.js";
import { type GgufValue, isGgufCheckpoint, metaString } from "./gguf.js";

/*
 * The "rwkv" vocabulary of llama.cpp's RWKV GGUF files: tokenizer.ggml.tokens holds each token's
 * bytes as Python's repr of a bytes object (llama.cpp's converter), token_type marks bytes and pads.
 */

/** llama.cpp token types (llama_token_type). */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;
const BACKSLASH = 0x5c;
const SINGLE_QUOTE = 0x27;
const DOUBLE_QUOTE = 0x22;
const PRINTABLE_MIN = 0x20;
const PRINTABLE_END = 0x7f;
const ESCAPES: Readonly<Record<number, string>> = { 0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r" };
/** World vocab conventions of llama.cpp's converter: id 0 "<s>" (BOS = EOS), "\n\n" (261) as EOT. */
const WORLD_BOS_EOS = 0;
const WORLD_EOT = 261;
const WORLD_CHAT_TEMPLATE = "rwkv-world";

/**
 * A token's bytes as llama.cpp's converter stores them: Python's `repr(bytes)[2:-1]` (printable
 * ASCII as is, \t \n \r, \\, the delimiting quote escaped, everything else \xNN).
 */
export function escapeRwkvToken(bytes: Uint8Array): string {
  const quote = bytes.includes(SINGLE_QUOTE) && !bytes.includes(DOUBLE_QUOTE) ? DOUBLE_QUOTE : SINGLE_QUOTE;
  let s = "";
  for (const b of bytes) {
    if (b === BACKSLASH || b === quote) s += "\\" + String.fromCharCode(b);
    else if (ESCAPES[b]) s += ESCAPES[b];
    else if (b >= PRINTABLE_MIN && b < PRINTABLE_END) s += String.fromCharCode(b);
    else s += "\\x" + b.toString(16).padStart(2, "0");
  }
  return s;
}

/**
 * The inverse, as llama.cpp's `llama_unescape_rwkv_token` reads it (\t \n \r \xNN, \c -> c).
 * `where` names the token in errors (a function, so a 65k vocabulary builds no message it never shows).
 */
export function unescapeRwkvToken(text: string, where: string | (() => string) = "token"): Uint8Array {
  const src = UTF8.encode(text);
  const out = new Uint8Array(src.length); // unescaping only shortens
  let n = 0;
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c !== BACKSLASH) { out[n++] = c; continue; }
    const e = src[++i];
    if (e === undefined) throw badToken(where, "dangling backslash", text);
    if (e === 0x74) out[n++] = 0x09; // \t
    else if (e === 0x6e) out[n++] = 0x0a; // \n
    else if (e === 0x72) out[n++] = 0x0d; // \r
    else if (e === 0x78) { // \xNN
      const hi = hexDigit(src[i + 1]), lo = hexDigit(src[i + 2]);
      if (hi < 0 || lo < 0) throw badToken(where, "bad \\x escape", text);
      out[n++] = hi * 16 + lo;
      i += 2;
    } else out[n++] = e;
  }
  return out.slice(0, n);
}
const UTF8 = new TextEncoder();
const badToken = (where: string | (() => string), problem: string, text: string) =>
  new FormatError(typeof where === "string" ? where : where(), `${problem} in ${JSON.stringify(text)}`);
/** The value of an ASCII hex digit, -1 for anything else (undefined past the end included). */
function hexDigit(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  return l >= 0x61 && l <= 0x66 ? l - 0x61 + 10 : -1;
}

export interface GgufVocab {
  /** tokenizer.ggml.model ("rwkv" for RWKV World and byte vocabularies). */
  readonly model: string;
  /** Bytes per id; undefined for control and unused ids (e.g. World's id 0 and padding). */
  readonly tokens: ReadonlyArray<Uint8Array | undefined>;
}

/** The tokenizer stored in a GGUF checkpoint, ready for `new WorldTokenizer(vocab.tokens)`; null if none. */
export function ggufVocab(ckpt: Checkpoint): GgufVocab | null {
  if (!isGgufCheckpoint(ckpt)) return null;
  const file = ckpt.gguf;
  const model = metaString(file, "tokenizer.ggml.model");
  const list = file.metadata.get("tokenizer.ggml.tokens");
  if (model === undefined || list?.type !== "array" || list.itemType !== "string") return null;
  const typesValue = file.metadata.get("tokenizer.ggml.token_type");
  const types = typesValue?.type === "array" && typesValue.itemType !== "string" && typesValue.itemType !== "array" && typesValue.itemType !== "bool"
    ? typesValue.value.map(Number) : [];
  let id = 0;
  const where = () => `${ckpt.source}: token ${id}`;
  const tokens = new Array<Uint8Array | undefined>(list.value.length);
  for (; id < tokens.length; id++) {
    const t = types[id], text = list.value[id];
    tokens[id] = t === TOKEN_TYPE.CONTROL || t === TOKEN_TYPE.UNUSED ? undefined : model === "rwkv" ? unescapeRwkvToken(text, where) : UTF8.encode(text);
  }
  return { model, tokens };
}

/** Tokenizer metadata for a World vocabulary (bytes per id, ids 1..65529), as llama.cpp's converter writes it. */
export function worldVocabMetadata(vocab: ReadonlyArray<Uint8Array | undefined>, vocabSize: number): Map<string, GgufValue> {
  if (vocab.length > vocabSize) throw new RwkvInputError("tokenizer", `the vocabulary has ${vocab.length} ids but the model only ${vocabSize}`);
  const tokens: string[] = [], types: number[] = [];
  for (let id = 0; id < vocabSize; id++) {
    const b = vocab[id];
    if (id === WORLD_BOS_EOS) { tokens.push("<s>"); types.push(TOKEN_TYPE.CONTROL); } else if (b === undefined) { tokens.push(`[PAD${id}]`); types.push(TOKEN_TYPE.UNUSED); } else { tokens.push(escapeRwkvToken(b)); types.push(TOKEN_TYPE.NORMAL); }
  }
  const m = vocabMetadata(tokens, types);
  m.set("tokenizer.ggml.bos_token_id", { type: "u32", value: WORLD_BOS_EOS });
  m.set("tokenizer.ggml.eos_token_id", { type: "u32", value: WORLD_BOS_EOS });
  m.set("tokenizer.ggml.eot_token_id", { type: "u32", value: WORLD_EOT });
  m.set("tokenizer.chat_template", { type: "string", value: WORLD_CHAT_TEMPLATE });
  return m;
}

/**
 * Tokenizer metadata for a byte-level model: id b < 256 is the byte b (what the rwkv.cpp tiny
 * models use); ids past 256 (e.g. the random golden models' 512) become unused "[PADi]" entries
 * so the token count matches the embedding rows, as llama.cpp requires.
 */
export function byteVocabMetadata(vocabSize: number): Map<string, GgufValue> {
  const tokens: string[] = [], types: number[] = [];
  for (let id = 0; id < vocabSize; id++) {
    if (id < 256) { tokens.push(escapeRwkvToken(Uint8Array.of(id))); types.push(TOKEN_TYPE.NORMAL); } else { tokens.push(`[PAD${id}]`); types.push(TOKEN_TYPE.UNUSED); }
  }
  return vocabMetadata(tokens, types);
}

function vocabMetadata(tokens: string[], types: number[]): Map<string, GgufValue> {
  return new Map<string, GgufValue>([
    ["tokenizer.ggml.model", { type: "string", value: "rwkv" }],
    ["tokenizer.ggml.tokens", { type: "array", itemType: "string", value: tokens }],
    ["tokenizer.ggml.token_type", { type: "array", itemType: "i32", value: types }],
  ]);
}

/** The tokenizer.* metadata of a GGUF checkpoint, to carry over when re-writing it. */
export function ggufTokenizerMetadata(ckpt: Checkpoint): Map<string, GgufValue> | null {
  if (!isGgufCheckpoint(ckpt)) return null;
  const m = new Map([...ckpt.gguf.metadata].filter(([k]) => k.startsWith("tokenizer.")));
  return m.has("tokenizer.ggml.tokens") ? m : null;
}
