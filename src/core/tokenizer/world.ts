import { FormatError } from "../errors.js";
import { parsePythonLiteral } from "./python-literal.js";
import type { Tokenizer } from "./types.js";
import { concatBytes, utf8DecodeStrict, utf8Encode } from "./utf8.js";

/** Embedding rows of every World model (ids 1..65529 are in the vocab file, 0 is end-of-text). */
export const WORLD_VOCAB_SIZE = 65536;
/** File name the official code ships the World vocabulary under. */
export const WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt";
/** What pip `TRIE_TOKENIZER.decode` returns for any id list whose bytes are not valid UTF-8. */
const PIP_BAD_UTF8 = "\ufffd";
const BYTE_VALUES = 256;
const NO_TOKEN = -1;
const EMPTY = new Uint8Array(0);
const BOM = 0xfeff;

/**
 * Parses the text of `rwkv_vocab_v20230424.txt`: lines `<id> <python literal> <byte length>`.
 * Returns bytes per id (index = id; undefined where the file has no entry).
 */
export function parseWorldVocab(text: string, name = WORLD_VOCAB_FILE): Uint8Array[] {
  const tokens: Uint8Array[] = [];
  const lines = text.split("\n");
  for (let n = 0; n < lines.length; n++) {
    let line = lines[n];
    if (n === 0 && line.charCodeAt(0) === BOM) line = line.slice(1);
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line.trim() === "") continue;
    const where = `${name} line ${n + 1}`;
    const first = line.indexOf(" ");
    const last = line.lastIndexOf(" ");
    if (first <= 0 || last <= first) throw new FormatError(where, "expected `<id> <literal> <length>`");
    const idText = line.slice(0, first);
    const lenText = line.slice(last + 1);
    if (!/^\d+$/.test(idText) || !/^\d+$/.test(lenText)) throw new FormatError(where, "id and length must be integers");
    const id = Number(idText);
    if (!Number.isSafeInteger(id)) throw new FormatError(where, `absurd id ${idText}`);
    let bytes: Uint8Array;
    try {
      bytes = parsePythonLiteral(line.slice(first + 1, last));
    } catch (e) {
      throw new FormatError(where, `bad literal: ${(e as Error).message}`);
    }
    if (bytes.length !== Number(lenText)) {
      throw new FormatError(where, `literal is ${bytes.length} bytes but the line declares ${lenText}`);
    }
    if (bytes.length === 0) throw new FormatError(where, "empty token");
    if (tokens[id] !== undefined) throw new FormatError(where, `duplicate id ${id}`);
    tokens[id] = bytes;
  }
  if (tokens.length === 0) throw new FormatError(name, "no tokens (is this a World vocab file?)");
  return tokens;
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/**
 * Byte trie in flat typed arrays (a vocab of 65k tokens has ~10^5..10^6 nodes; objects per node
 * would cost far more memory and time). Node 0 is the root. The children of node n are the
 * edges childStart[n] .. childStart[n+1]-1, sorted by byte, so a lookup is a binary search;
 * the root's 256 children are also in a direct table because every walk starts there.
 */
class ByteTrie {
  private readonly rootChild = new Int32Array(BYTE_VALUES).fill(NO_TOKEN);
  private readonly childStart: Int32Array;
  private readonly edgeByte: Uint8Array;
  private readonly edgeNode: Int32Array;
  private readonly tokenOf: Int32Array;

  constructor(tokens: readonly (Uint8Array | undefined)[], name: string) {
    const ids: number[] = [];
    let totalBytes = 0;
    tokens.forEach((t, id) => {
      if (t !== undefined) {
        ids.push(id);
        totalBytes += t.length;
      }
    });
    // Inserting in sorted order means each new path branches off the previous one to the right,
    // so nodes come out in preorder with every node's children in ascending byte order.
    ids.sort((a, b) => compareBytes(tokens[a] as Uint8Array, tokens[b] as Uint8Array));
    const maxNodes = totalBytes + 1;
    const parent = new Int32Array(maxNodes);
    const byteOf = new Uint8Array(maxNodes);
    const tokenOf = new Int32Array(maxNodes).fill(NO_TOKEN);
    const path = [0]; // path[d] = node at depth d for the previously inserted token
    let prev: Uint8Array = EMPTY;
    let nodes = 1;
    for (const id of ids) {
      const t = tokens[id] as Uint8Array;
      let common = 0;
      while (common < t.length && common < prev.length && t[common] === prev[common]) common++;
      if (common === t.length && common === prev.length) {
        throw new FormatError(name, `ids ${tokenOf[path[common]]} and ${id} have the same bytes`);
      }
      path.length = common + 1;
      for (let d = common; d < t.length; d++) {
        parent[nodes] = path[d];
        byteOf[nodes] = t[d];
        path.push(nodes++);
      }
      tokenOf[path[t.length]] = id;
      prev = t;
    }
    // Compressed child lists: count per parent, prefix sums, then fill in creation order.
    const childStart = new Int32Array(nodes + 1);
    for (let n = 1; n < nodes; n++) childStart[parent[n] + 1]++;
    for (let n = 0; n < nodes; n++) childStart[n + 1] += childStart[n];
    const fill = childStart.slice(0, nodes);
    const edgeByte = new Uint8Array(nodes - 1);
    const edgeNode = new Int32Array(nodes - 1);
    for (let n = 1; n < nodes; n++) {
      const e = fill[parent[n]]++;
      edgeByte[e] = byteOf[n];
      edgeNode[e] = n;
      if (parent[n] === 0) this.rootChild[byteOf[n]] = n;
    }
    this.childStart = childStart;
    this.edgeByte = edgeByte;
    this.edgeNode = edgeNode;
    this.tokenOf = tokenOf.slice(0, nodes);
  }

  /** Greedy longest-prefix tokenisation, as pip TRIE_TOKENIZER.encodeBytes. */
  encode(src: Uint8Array): number[] {
    const { rootChild, childStart, edgeByte, edgeNode, tokenOf } = this;
    const out: number[] = [];
    const n = src.length;
    let i = 0;
    while (i < n) {
      let node = rootChild[src[i]];
      let bestId = node === NO_TOKEN ? NO_TOKEN : tokenOf[node];
      let bestEnd = i + 1;
      for (let j = i + 1; node !== NO_TOKEN && j < n; j++) {
        const b = src[j];
        let lo = childStart[node];
        let hi = childStart[node + 1] - 1;
        node = NO_TOKEN;
        while (lo <= hi) {
          const mid = (lo + hi) >>> 1;
          const m = edgeByte[mid];
          if (m < b) lo = mid + 1;
          else if (m > b) hi = mid - 1;
          else {
            node = edgeNode[mid];
            break;
          }
        }
        if (node !== NO_TOKEN && tokenOf[node] !== NO_TOKEN) {
          bestId = tokenOf[node];
          bestEnd = j + 1;
        }
      }
      if (bestId === NO_TOKEN) {
        // Only possible with a custom vocab that lacks some single byte.
        throw new RangeError(`byte 0x${src[i].toString(16).padStart(2, "0")} at offset ${i} has no token`);
      }
      out.push(bestId);
      i = bestEnd;
    }
    return out;
  }
}

/**
 * RWKV World tokenizer (all World / G-series v5..v7 models): greedy longest byte match over the
 * vocab; no normalisation and no special-token parsing.
 */
export class WorldTokenizer implements Tokenizer {
  readonly name = "world" as const;
  readonly vocabSize: number;
  private readonly trie: ByteTrie;
  /** Every id's bytes, one after another: id's at bytes[starts[id] .. starts[id + 1]) (65k Uint8Arrays kept 14 MiB of heap; this, 2). */
  private readonly bytes: Uint8Array;
  private readonly starts: Int32Array;

  constructor(tokens: readonly (Uint8Array | undefined)[], name = WORLD_VOCAB_FILE) {
    this.trie = new ByteTrie(tokens, name);
    this.vocabSize = Math.max(WORLD_VOCAB_SIZE, tokens.length);
    let total = 0;
    for (const t of tokens) total += t?.length ?? 0;
    this.bytes = new Uint8Array(total);
    this.starts = new Int32Array(tokens.length + 1);
    for (let id = 0, p = 0; id < tokens.length; id++) {
      const t = tokens[id];
      if (t !== undefined) { this.bytes.set(t, p); p += t.length; }
      this.starts[id + 1] = p;
    }
  }

  /** Builds the tokenizer from the text of `rwkv_vocab_v20230424.txt`; `name` labels errors. */
  static fromVocabText(text: string, name = WORLD_VOCAB_FILE): WorldTokenizer {
    return new WorldTokenizer(parseWorldVocab(text, name), name);
  }

  encode(text: string): number[] {
    return this.trie.encode(utf8Encode(text));
  }

  encodeBytes(bytes: Uint8Array): number[] {
    return this.trie.encode(bytes);
  }

  /** The bytes of one id; empty for id 0 (end of text) and unused ids below vocabSize. */
  tokenBytes(id: number): Uint8Array {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} is outside 0..${this.vocabSize - 1}`);
    }
    return id + 1 < this.starts.length ? this.bytes.subarray(this.starts[id], this.starts[id + 1]) : EMPTY;
  }

  decodeBytes(ids: readonly number[]): Uint8Array {
    return concatBytes(ids.map((id) => this.tokenBytes(id)));
  }

  /**
   * As pip TRIE_TOKENIZER.decode: the whole result is the single string "\ufffd" when the bytes
   * are not valid UTF-8 or an id has no bytes (id 0 included, which pip cannot look up).
   */
  decode(ids: readonly number[]): string {
    for (const id of ids) if (this.tokenBytes(id).length === 0) return PIP_BAD_UTF8;
    return utf8DecodeStrict(this.decodeBytes(ids)) ?? PIP_BAD_UTF8;
  }
}
