import { FormatError } from "../errors.js";
import type { Tokenizer } from "./types.js";
import { concatBytes, utf8DecodeLossy, utf8Encode } from "./utf8.js";

/** Ids 0..50276 of the GPT-NeoX 20B tokenizer (RWKV-4 Pile / Raven models, `--vocab_size 50277`). */
export const NEOX_VOCAB_SIZE = 50277;
/** File name ChatRWKV ships the tokenizer under. */
export const NEOX_TOKENIZER_FILE = "20B_tokenizer.json";

/**
 * GPT-2 pre-tokenizer regex as HF ByteLevel uses it. HF runs it with Oniguruma, whose `\s` is the
 * Unicode White_Space property (NEL yes, U+FEFF no), unlike JS `\s`, so it is spelled out.
 */
const GPT2_SPLIT =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
const BYTE_VALUES = 256;
/** Words longer than this are not cached (HF caps its cache similarly); keeps memory bounded. */
const MAX_CACHED_WORD = 256;
const MAX_CACHE_ENTRIES = 20000;
/** Heap keys pack (rank, position): rank·2^32 + pos stays exact below 2^53. */
const POS_RANGE = 2 ** 32;
const NO_ID = -1;

/** GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to U+0100 upwards. */
function bytesToUnicode(): string[] {
  const table: string[] = new Array<string>(BYTE_VALUES);
  let extra = 0;
  for (let b = 0; b < BYTE_VALUES; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : BYTE_VALUES + extra++);
  }
  return table;
}

interface AddedToken {
  readonly id: number;
  readonly content: string;
  readonly special: boolean;
  readonly normalized: boolean;
}

export interface NeoxDecodeOptions {
  /** Drop special added tokens (`<|endoftext|>`, `<|padding|>`), as HF `decode(ids)` does by default. */
  readonly skipSpecialTokens?: boolean;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Min-heap of numbers (packed merge candidates). */
class NumberHeap {
  private readonly a: number[] = [];
  get size(): number { return this.a.length; }
  push(v: number): void {
    const a = this.a;
    let i = a.length;
    a.push(v);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p] <= v) break;
      a[i] = a[p];
      i = p;
    }
    a[i] = v;
  }
  pop(): number {
    const a = this.a;
    const top = a[0];
    const last = a.pop() as number;
    if (a.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= a.length) break;
        const c = l + 1 < a.length && a[l + 1] < a[l] ? l + 1 : l;
        if (a[c] >= last) break;
        a[i] = a[c];
        i = c;
      }
      a[i] = last;
    }
    return top;
  }
}

/**
 * Leftmost-longest matcher for added tokens (HF uses Aho-Corasick LeftmostLongest). There are
 * few added tokens, so candidates are indexed by first character and tried longest first.
 */
class AddedTokenMatcher {
  private readonly byFirst = new Map<string, AddedToken[]>();
  constructor(tokens: readonly AddedToken[]) {
    for (const t of tokens) {
      if (t.content.length === 0) continue;
      const list = this.byFirst.get(t.content[0]) ?? [];
      list.push(t);
      this.byFirst.set(t.content[0], list);
    }
    for (const list of this.byFirst.values()) list.sort((a, b) => b.content.length - a.content.length);
  }
  /** Splits text into plain pieces (strings) and matched added tokens. */
  split(text: string): (string | AddedToken)[] {
    const out: (string | AddedToken)[] = [];
    if (this.byFirst.size === 0) return [text];
    let start = 0;
    for (let i = 0; i < text.length;) {
      const list = this.byFirst.get(text[i]);
      const hit = list?.find((t) => text.startsWith(t.content, i));
      if (hit === undefined) {
        i++;
        continue;
      }
      if (i > start) out.push(text.slice(start, i));
      out.push(hit);
      i += hit.content.length;
      start = i;
    }
    if (start < text.length) out.push(text.slice(start));
    return out;
  }
}

/**
 * GPT-NeoX 20B byte-level BPE, equivalent to HF `tokenizers` on `20B_tokenizer.json`:
 * added tokens split first (special ones on the raw text, normalized ones after NFC), then the
 * GPT-2 regex, then BPE by merge rank on the byte-to-unicode form of each word.
 */
export class NeoxTokenizer implements Tokenizer {
  readonly name = "20b" as const;
  readonly vocabSize: number;
  private readonly byteToChar = bytesToUnicode();
  private readonly charToByte = new Map<string, number>();
  /** vocab id of each single byte's character. */
  private readonly byteId = new Int32Array(BYTE_VALUES);
  /** key left·idStride + right → rank·idStride + merged id. */
  private readonly merges = new Map<number, number>();
  private readonly idStride: number;
  private readonly idToToken: (string | undefined)[] = [];
  private readonly specialIds = new Set<number>();
  private readonly rawMatcher: AddedTokenMatcher;
  private readonly normalizedMatcher: AddedTokenMatcher;
  private readonly cache = new Map<string, number[]>();
  private readonly bytesCache: (Uint8Array | undefined)[] = [];

  private constructor(vocab: Map<string, number>, merges: readonly [string, string][], added: readonly AddedToken[],
    private readonly nfc: boolean, name: string) {
    this.byteToChar.forEach((c, b) => this.charToByte.set(c, b));
    let maxId = -1;
    for (const [tok, id] of vocab) {
      this.idToToken[id] = tok;
      maxId = Math.max(maxId, id);
    }
    for (const t of added) {
      this.idToToken[t.id] = t.content;
      maxId = Math.max(maxId, t.id);
      if (t.special) this.specialIds.add(t.id);
    }
    this.vocabSize = maxId + 1;
    this.idStride = this.vocabSize;
    // Bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5..0xFF) have no entry in the 20B vocab.
    for (let b = 0; b < BYTE_VALUES; b++) this.byteId[b] = vocab.get(this.byteToChar[b]) ?? NO_ID;
    for (const c of "abcdefghijklmnopqrstuvwxyz ") {
      if (this.byteId[c.charCodeAt(0)] === NO_ID) throw new FormatError(name, `the vocab has no token for "${c}" (not a byte-level BPE?)`);
    }
    merges.forEach(([l, r], rank) => {
      const left = vocab.get(l), right = vocab.get(r), merged = vocab.get(l + r);
      if (left === undefined || right === undefined || merged === undefined) {
        throw new FormatError(name, `merge ${rank} ("${l} ${r}") uses a token missing from the vocab`);
      }
      // A repeated pair keeps its last rank: HF collects the merges into a map in file order.
      this.merges.set(left * this.idStride + right, rank * this.idStride + merged);
    });
    const norm = (s: string): string => (nfc ? s.normalize("NFC") : s);
    this.rawMatcher = new AddedTokenMatcher(added.filter((t) => !t.normalized));
    this.normalizedMatcher = new AddedTokenMatcher(added.filter((t) => t.normalized).map((t) => ({ ...t, content: norm(t.content) })));
  }

  /** Builds the tokenizer from the JSON text of an HF `tokenizer.json` such as `20B_tokenizer.json`. */
  static fromJson(text: string, name = NEOX_TOKENIZER_FILE): NeoxTokenizer {
    let root: unknown;
    try {
      root = JSON.parse(text);
    } catch (e) {
      throw new FormatError(name, `not JSON: ${(e as Error).message}`);
    }
    if (!isRecord(root) || !isRecord(root.model)) throw new FormatError(name, "no \"model\" object (is this an HF tokenizer.json?)");
    const model = root.model;
    if (model.type !== "BPE") throw new FormatError(name, `model type ${String(model.type)} is not supported (only BPE)`);
    if (model.dropout !== undefined && model.dropout !== null) throw new FormatError(name, "BPE dropout is not supported");
    if (!isRecord(model.vocab)) throw new FormatError(name, "model.vocab is not an object");
    const vocab = new Map<string, number>();
    for (const [tok, id] of Object.entries(model.vocab)) {
      if (!Number.isSafeInteger(id) || (id as number) < 0) throw new FormatError(name, `vocab id of "${tok}" is not a non-negative integer`);
      vocab.set(tok, id as number);
    }
    if (!Array.isArray(model.merges)) throw new FormatError(name, "model.merges is not an array");
    const merges = model.merges.map((m: unknown, i): [string, string] => {
      // Older files write "left right"; newer ones write ["left", "right"].
      if (typeof m === "string") {
        const sp = m.indexOf(" ");
        if (sp > 0 && sp === m.lastIndexOf(" ")) return [m.slice(0, sp), m.slice(sp + 1)];
      } else if (Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && typeof m[1] === "string") {
        return [m[0], m[1]];
      }
      throw new FormatError(name, `merge ${i} is malformed`);
    });
    const added: AddedToken[] = [];
    const addedList = root.added_tokens ?? [];
    if (!Array.isArray(addedList)) throw new FormatError(name, "added_tokens is not an array");
    for (const t of addedList) {
      if (!isRecord(t) || typeof t.content !== "string" || !Number.isSafeInteger(t.id)) throw new FormatError(name, "malformed added token");
      if (t.single_word === true || t.lstrip === true || t.rstrip === true) {
        throw new FormatError(name, `added token ${String(t.id)}: single_word/lstrip/rstrip are not supported`);
      }
      added.push({ id: t.id as number, content: t.content, special: t.special === true, normalized: t.normalized === true });
    }
    const normalizer = root.normalizer;
    const nfc = isRecord(normalizer) && normalizer.type === "NFC";
    if (normalizer !== null && normalizer !== undefined && !nfc) {
      throw new FormatError(name, `normalizer ${JSON.stringify(normalizer)} is not supported (only NFC)`);
    }
    const pre = root.pre_tokenizer;
    if (!isRecord(pre) || pre.type !== "ByteLevel" || pre.add_prefix_space === true || pre.use_regex === false) {
      throw new FormatError(name, "only a ByteLevel pre-tokenizer without add_prefix_space is supported");
    }
    const dec = root.decoder;
    if (dec !== null && dec !== undefined && !(isRecord(dec) && dec.type === "ByteLevel")) {
      throw new FormatError(name, "only the ByteLevel decoder is supported");
    }
    return new NeoxTokenizer(vocab, merges, added, nfc, name);
  }

  encode(text: string): number[] {
    const out: number[] = [];
    for (const piece of this.rawMatcher.split(text)) {
      if (typeof piece !== "string") {
        out.push(piece.id);
        continue;
      }
      const normalized = this.nfc ? piece.normalize("NFC") : piece;
      for (const sub of this.normalizedMatcher.split(normalized)) {
        if (typeof sub !== "string") out.push(sub.id);
        else this.encodeText(sub, out);
      }
    }
    return out;
  }

  /** GPT-2 regex pre-tokenisation of one plain piece; any unmatched gap is kept as its own word, as HF does. */
  private encodeText(text: string, out: number[]): void {
    let pos = 0;
    for (const m of text.matchAll(GPT2_SPLIT)) {
      const at = m.index ?? pos;
      if (at > pos) this.encodeWord(text.slice(pos, at), out);
      this.encodeWord(m[0], out);
      pos = at + m[0].length;
    }
    if (pos < text.length) this.encodeWord(text.slice(pos), out);
  }

  /** BPE of one pre-token, appended to out. Cached: natural text repeats words a lot. */
  private encodeWord(word: string, out: number[]): void {
    const cached = this.cache.get(word);
    if (cached !== undefined) {
      for (const id of cached) out.push(id);
      return;
    }
    const ids = this.bpe(utf8Encode(word));
    if (word.length <= MAX_CACHED_WORD) {
      if (this.cache.size >= MAX_CACHE_ENTRIES) this.cache.clear();
      this.cache.set(word, ids);
    }
    for (const id of ids) out.push(id);
  }

  /**
   * Merges by rank with a heap, like HF's Word::merge_all: pop the lowest (rank, position); skip
   * entries made stale by an earlier merge; merge; queue the two new neighbour pairs.
   */
  private bpe(bytes: Uint8Array): number[] {
    // Bytes without a vocab entry are dropped, as HF does with no unk token (text from a JS
    // string is valid UTF-8, so this cannot happen in practice).
    const id = Int32Array.from(bytes, (b) => this.byteId[b]).filter((v) => v !== NO_ID);
    const n = id.length;
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const stride = this.idStride;
    const heap = new NumberHeap();
    // The heap holds rank·2^32 + pos; the pair it refers to is re-checked when popped.
    const queue = (pos: number): void => {
      const r = next[pos];
      if (r < 0) return;
      const m = this.merges.get(id[pos] * stride + id[r]);
      if (m !== undefined) heap.push(Math.floor(m / stride) * POS_RANGE + pos);
    };
    for (let i = 0; i + 1 < n; i++) queue(i);
    while (heap.size > 0) {
      const top = heap.pop();
      const pos = top % POS_RANGE;
      const rank = Math.floor(top / POS_RANGE);
      const r = next[pos];
      if (!alive[pos] || r < 0) continue;
      const m = this.merges.get(id[pos] * stride + id[r]);
      if (m === undefined || Math.floor(m / stride) !== rank) continue;
      id[pos] = m % stride;
      alive[r] = 0;
      next[pos] = next[r];
      if (next[r] >= 0) prev[next[r]] = pos;
      if (prev[pos] >= 0) queue(prev[pos]);
      queue(pos);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]) out.push(id[i]);
    return out;
  }

  /** The bytes of one id (ByteLevel decode of its token); null for ids HF cannot map to a token. */
  private tokenBytes(tokenId: number): Uint8Array | null {
    const cached = this.bytesCache[tokenId];
    if (cached !== undefined) return cached;
    const tok = Number.isInteger(tokenId) && tokenId >= 0 ? this.idToToken[tokenId] : undefined;
    if (tok === undefined) return null;
    // HF ByteLevel: map each char back to its byte; a token with any other char (the added
    // space-run tokens are plain spaces) is taken as its own UTF-8 bytes.
    const bytes = new Uint8Array(tok.length);
    let ok = true;
    for (let i = 0; i < tok.length && ok; i++) {
      const b = this.charToByte.get(tok[i]);
      if (b === undefined) ok = false;
      else bytes[i] = b;
    }
    const result = ok ? bytes : utf8Encode(tok);
    this.bytesCache[tokenId] = result;
    return result;
  }

  /** Concatenated bytes; special tokens are skipped and unknown ids dropped, as HF decode does. */
  decodeBytes(ids: readonly number[], options: NeoxDecodeOptions = {}): Uint8Array {
    const skip = options.skipSpecialTokens ?? true;
    const chunks: Uint8Array[] = [];
    for (const tokenId of ids) {
      if (skip && this.specialIds.has(tokenId)) continue;
      const b = this.tokenBytes(tokenId);
      if (b !== null) chunks.push(b);
    }
    return concatBytes(chunks);
  }

  /** HF `decode(ids)`: ByteLevel decode, invalid UTF-8 replaced by U+FFFD (from_utf8_lossy). */
  decode(ids: readonly number[], options: NeoxDecodeOptions = {}): string {
    return utf8DecodeLossy(this.decodeBytes(ids, options));
  }
}
