import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import type { Tokenizer } from "../../core/tokenizer/types.js";
import { writeFileAtomic } from "../atomic-write.js";

/*
 * Training data: text files (or every file under a directory, in sorted path order) tokenized once
 * and cached as a binary token file beside the run's checkpoints; a held-out validation split (the
 * last fraction of the token stream, as nanoGPT's 90/10); random (B, T) windows for training and
 * consecutive windows over the whole validation split for evaluation.
 *
 * Token cache file: "RWKVTOK1", u32 header length, JSON header {tokenizer, vocabSize, key, count,
 * bytesPerToken}, then the tokens as little-endian u16 (vocab ≤ 65536) or u32.
 */

const CACHE_MAGIC = "RWKVTOK1";
const MAGIC_BYTES = 8;
const U32_BYTES = 4;
const U16_TOKENS_MAX_VOCAB = 65536;
/** Between documents of World/20B data: id 0, their end-of-text token (RWKV-LM's binidx separator). */
const DOC_SEPARATOR = 0;

export interface TokenData {
  readonly tokens: Uint16Array | Uint32Array;
  /** Hash of the token stream: a resumed run checks it is training on the same data. */
  readonly checksum: string;
  readonly cacheFile: string;
  /** Whether the tokens came from the cache (no tokenization this time). */
  readonly cached: boolean;
}

/** Every regular file named (or under a named directory, recursively, hidden entries skipped), sorted. */
export function listDataFiles(paths: readonly string[]): string[] {
  const out: string[] = [];
  const walk = (p: string, top: boolean) => {
    let st;
    try { st = statSync(p); } catch { throw new RwkvInputError(p, "no such file or directory"); }
    if (st.isDirectory()) {
      for (const name of readdirSync(p).sort()) if (!name.startsWith(".")) walk(join(p, name), false);
    } else if (st.isFile()) {
      out.push(resolve(p));
    } else if (top) {
      throw new RwkvInputError(p, "not a regular file or directory");
    }
  };
  for (const p of paths) walk(p, true);
  if (out.length === 0) throw new RwkvInputError(paths.join(", "), "no data files found");
  return out;
}

function checksumOf(tokens: Uint16Array | Uint32Array): string {
  return createHash("sha256").update(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength)).digest("hex").slice(0, 32);
}

/**
 * The tokens of `files`, from `cacheDir`'s token file when one was made from the same files (path,
 * size, mtime) with the same tokenizer; otherwise tokenized now and cached atomically.
 * `tokenizerId` names the tokenizer and its vocabulary (e.g. a hash of the vocab file).
 */
export async function loadTokens(files: readonly string[], tokenizer: Tokenizer, tokenizerId: string, cacheDir: string): Promise<TokenData> {
  const key = createHash("sha256").update(JSON.stringify({
    tokenizer: tokenizerId,
    files: files.map((f) => { const s = statSync(f); return [f, s.size, s.mtimeMs]; }),
  })).digest("hex").slice(0, 16);
  const cacheFile = join(cacheDir, `tokens-${key}.bin`);
  if (existsSync(cacheFile)) {
    const tokens = readTokenCache(cacheFile, key);
    if (tokens) return { tokens, checksum: checksumOf(tokens), cacheFile, cached: true };
  }
  const parts: number[][] = [];
  for (const f of files) {
    const bytes = readFileSync(f);
    if (bytes.length === 0) continue;
    if (tokenizer.name === "bytes") {
      parts.push(Array.from(bytes));
      continue;
    }
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      throw new RwkvInputError(f, "not valid UTF-8 text (use --tokenizer-kind bytes for binary data)");
    }
    parts.push(tokenizer.encode(text));
  }
  const separators = tokenizer.name === "bytes" ? 0 : Math.max(0, parts.length - 1);
  const count = parts.reduce((n, p) => n + p.length, 0) + separators;
  const tokens = tokenizer.vocabSize <= U16_TOKENS_MAX_VOCAB ? new Uint16Array(count) : new Uint32Array(count);
  let o = 0;
  parts.forEach((p, i) => {
    if (i > 0 && separators > 0) tokens[o++] = DOC_SEPARATOR;
    tokens.set(p, o);
    o += p.length;
  });
  await writeTokenCache(cacheFile, key, tokenizer, tokens);
  return { tokens, checksum: checksumOf(tokens), cacheFile, cached: false };
}

async function writeTokenCache(path: string, key: string, tokenizer: Tokenizer, tokens: Uint16Array | Uint32Array): Promise<void> {
  const header = new TextEncoder().encode(JSON.stringify({
    tokenizer: tokenizer.name, vocabSize: tokenizer.vocabSize, key, count: tokens.length, bytesPerToken: tokens.BYTES_PER_ELEMENT,
  }));
  const head = new Uint8Array(MAGIC_BYTES + U32_BYTES + header.length);
  head.set(new TextEncoder().encode(CACHE_MAGIC));
  new DataView(head.buffer).setUint32(MAGIC_BYTES, header.length, true);
  head.set(header, MAGIC_BYTES + U32_BYTES);
  await writeFileAtomic(path, [head, new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength)]);
}

/** The cached tokens, or null when the file is not a complete cache for `key` (it is then rebuilt). */
function readTokenCache(path: string, key: string): Uint16Array | Uint32Array | null {
  const bytes = readFileSync(path);
  if (bytes.length < MAGIC_BYTES + U32_BYTES || bytes.subarray(0, MAGIC_BYTES).toString("latin1") !== CACHE_MAGIC) return null;
  const n = bytes.readUInt32LE(MAGIC_BYTES);
  let header: { key?: unknown; count?: unknown; bytesPerToken?: unknown };
  try { header = JSON.parse(bytes.subarray(MAGIC_BYTES + U32_BYTES, MAGIC_BYTES + U32_BYTES + n).toString("utf8")) as typeof header; } catch { return null; }
  const start = MAGIC_BYTES + U32_BYTES + n, count = Number(header.count), width = Number(header.bytesPerToken);
  if (header.key !== key || !(width === 2 || width === 4) || bytes.length !== start + count * width) return null;
  const copy = bytes.buffer.slice(bytes.byteOffset + start, bytes.byteOffset + start + count * width);
  return width === 2 ? new Uint16Array(copy) : new Uint32Array(copy);
}

export interface Split {
  readonly train: Uint16Array | Uint32Array;
  readonly val: Uint16Array | Uint32Array;
}

/** Windows need T + 1 tokens (T inputs, T next-token targets). */
export function splitData(tokens: Uint16Array | Uint32Array, valFraction: number, T: number, source: string): Split {
  const nVal = Math.floor(tokens.length * valFraction);
  const train = tokens.subarray(0, tokens.length - nVal), val = tokens.subarray(tokens.length - nVal);
  if (tokens.length === 0) throw new RwkvInputError(source, "the dataset is empty (no tokens)");
  if (train.length < T + 1) {
    throw new RwkvInputError(source, `the dataset is too small: ${tokens.length} tokens leave ${train.length} for training, but one training window of --ctx ${T} needs ${T + 1}`);
  }
  if (valFraction > 0 && val.length < 2) {
    throw new RwkvInputError(source, `the validation split (${(valFraction * 100).toFixed(1)}% of ${tokens.length} tokens) has ${val.length} token(s); it needs at least 2 (use more data or a larger --val-fraction, or --val-fraction 0)`);
  }
  return { train, val };
}
