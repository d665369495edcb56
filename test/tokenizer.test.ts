import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { FormatError, RwkvInputError } from "../src/core/errors.js";
import {
  ByteTokenizer, createTokenizer, NeoxTokenizer, parsePythonLiteral, parseWorldVocab, StreamDecoder,
  tokenizerKindForVocab, WorldTokenizer,
} from "../src/core/tokenizer/index.js";
import { findTokenizerFile, loadTokenizer } from "../src/node/tokenizer.js";
import { readJson, sharedPath } from "./shared.js";

const WORLD_FILE = "rwkv_vocab_v20230424.txt";
const NEOX_FILE = "20B_tokenizer.json";
const REPLACEMENT = "\ufffd";

interface WorldGolden {
  vocab_md5: string;
  cases: { name: string; text: string; utf8_hex: string; ids: number[]; token_bytes_hex: string[] }[];
  byte_cases: { name: string; bytes_hex: string; ids: number[]; token_bytes_hex: string[]; pip_decode_result: string }[];
  decode_cases: { ids: number[]; bytes_hex: string | null; pip_decode_result: string }[];
}
interface NeoxGolden {
  cases: { name: string; text: string; ids: number[]; decode_skip_special: string; decode_keep_special: string; roundtrip_equal: boolean }[];
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
function isUtf8(b: Uint8Array): boolean {
  try {
    strictUtf8.decode(b);
    return true;
  } catch {
    return false;
  }
}
const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const fromHex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, "hex"));

// Building a tokenizer takes ~0.1 s, so each is built once for the whole file.
let world: WorldTokenizer | undefined;
let neox: NeoxTokenizer | undefined;
function worldTokenizer(t: TestContext): WorldTokenizer | null {
  const p = sharedPath(t, "tokenizers", WORLD_FILE);
  if (!p) return null;
  world ??= WorldTokenizer.fromVocabText(readFileSync(p, "utf8"), p);
  return world;
}
function neoxTokenizer(t: TestContext): NeoxTokenizer | null {
  const p = sharedPath(t, "tokenizers", NEOX_FILE);
  if (!p) return null;
  neox ??= NeoxTokenizer.fromJson(readFileSync(p, "utf8"), p);
  return neox;
}

test("world: the vocab fixture is the one the golden was made from", (t) => {
  const vocab = sharedPath(t, "tokenizers", WORLD_FILE);
  const golden = sharedPath(t, "golden", "tokenizer", "world_tokenizer_golden.json");
  if (!vocab || !golden) return;
  const md5 = createHash("md5").update(readFileSync(vocab)).digest("hex");
  assert.equal(md5, readJson<WorldGolden>(golden).vocab_md5);
  const tokens = parseWorldVocab(readFileSync(vocab, "utf8"));
  assert.equal(tokens.filter((x) => x !== undefined).length, 65529);
  assert.equal(tokens[0], undefined); // id 0 (end of text) is not in the file
  assert.deepEqual([...(tokens[1] as Uint8Array)], [0x00]);
  assert.deepEqual([...(tokens[129] as Uint8Array)], [0x80]); // b'\x80'
  assert.equal((tokens[65529] as Uint8Array).length, 128);
});

test("world: every golden text encodes to the official ids and decodes back", (t) => {
  const tok = worldTokenizer(t);
  const p = sharedPath(t, "golden", "tokenizer", "world_tokenizer_golden.json");
  if (!tok || !p) return;
  const g = readJson<WorldGolden>(p);
  assert.equal(g.cases.length, 37);
  for (const c of g.cases) {
    assert.deepEqual(tok.encode(c.text), c.ids, c.name);
    assert.deepEqual(c.ids.map((id): string => hex(tok.decodeBytes([id]))), c.token_bytes_hex, c.name);
    assert.equal(hex(tok.decodeBytes(c.ids)), c.utf8_hex, c.name);
    assert.equal(tok.decode(c.ids), c.text, c.name);
  }
});

test("world: raw-byte cases and decode edge cases match pip TRIE_TOKENIZER", (t) => {
  const tok = worldTokenizer(t);
  const p = sharedPath(t, "golden", "tokenizer", "world_tokenizer_golden.json");
  if (!tok || !p) return;
  const g = readJson<WorldGolden>(p);
  assert.equal(g.byte_cases.length, 3);
  for (const c of g.byte_cases) {
    assert.deepEqual(tok.encodeBytes(fromHex(c.bytes_hex)), c.ids, c.name);
    assert.deepEqual(c.ids.map((id): string => hex(tok.decodeBytes([id]))), c.token_bytes_hex, c.name);
    assert.equal(hex(tok.decodeBytes(c.ids)), c.bytes_hex, c.name);
    assert.equal(tok.decode(c.ids), c.pip_decode_result, c.name);
  }
  assert.equal(g.decode_cases.length, 6);
  for (const c of g.decode_cases) {
    const what = JSON.stringify(c.ids);
    assert.equal(tok.decode(c.ids), c.pip_decode_result, what);
    assert.equal(hex(tok.decodeBytes(c.ids)), c.bytes_hex ?? "", what); // id 0 has no bytes
  }
  assert.equal(tok.decode([0, 33155]), REPLACEMENT); // pip cannot look id 0 up: whole result is U+FFFD
  assert.equal(tok.decode([65535]), REPLACEMENT); // unused id below vocabSize: no bytes
  assert.throws(() => tok.decodeBytes([65536]), RangeError);
  assert.equal(tok.vocabSize, 65536);
  assert.equal(tok.decode(tok.encode("\ufeffBOM")), "\ufeffBOM"); // a leading BOM is text, not stripped
});

test("world: encodes all of tinyshakespeare fast and round-trips it", (t) => {
  const tok = worldTokenizer(t);
  const p = sharedPath(t, "data", "tinyshakespeare", "input.txt");
  if (!tok || !p) return;
  const text = readFileSync(p, "utf8");
  const t0 = performance.now();
  const ids = tok.encode(text);
  const ms = performance.now() - t0;
  t.diagnostic(`World encode of ${text.length} chars → ${ids.length} ids in ${ms.toFixed(1)} ms`);
  assert.equal(ids.length, 331658);
  const head = tok.encode("First Citizen:\n");
  assert.deepEqual(ids.slice(0, head.length), head);
  assert.equal(tok.decode(ids), text);
  // Generous bound (measured ~30 ms) so slow CI machines pass, but a per-node-object trie would not.
  assert.ok(ms < 2000, `encode took ${ms} ms`);
});

test("20b: every golden text encodes to the official ids; decode skips or keeps special tokens", (t) => {
  const tok = neoxTokenizer(t);
  const p = sharedPath(t, "golden", "tokenizer", "gpt_neox_20b_tokenizer_golden.json");
  if (!tok || !p) return;
  const g = readJson<NeoxGolden>(p);
  assert.equal(g.cases.length, 42);
  for (const c of g.cases) {
    assert.deepEqual(tok.encode(c.text), c.ids, c.name);
    assert.equal(tok.decode(c.ids), c.decode_skip_special, c.name);
    assert.equal(tok.decode(c.ids, { skipSpecialTokens: false }), c.decode_keep_special, c.name);
    // roundtrip_equal is false exactly where NFC changed the text.
    assert.equal(c.decode_keep_special === c.text, c.roundtrip_equal, c.name);
  }
  assert.equal(tok.vocabSize, 50277);
});

test("20b: added tokens, NFC, unknown ids and invalid UTF-8", (t) => {
  const tok = neoxTokenizer(t);
  if (!tok) return;
  assert.deepEqual(tok.encode("a  b"), [66, 50276, 67]); // two spaces are an added token; "b" loses its space
  assert.deepEqual(tok.encode("x<|endoftext|>"), [89, 0]);
  assert.deepEqual(tok.encode("e\u0301"), tok.encode("\u00e9")); // NFC before BPE
  assert.equal(tok.decode([12092, 50300, 1533]), "Hello world"); // ids past the vocab are dropped, as HF does
  assert.equal(tok.decode([14931]), REPLACEMENT); // first 3 bytes of a 4-byte emoji: lossy, like from_utf8_lossy
  assert.equal(hex(tok.decodeBytes([0, 1, 12092])), hex(Buffer.from("Hello")));
  assert.equal(hex(tok.decodeBytes([0], { skipSpecialTokens: false })), hex(Buffer.from("<|endoftext|>")));
  // A very long word must not take quadratic time in BPE.
  const long = "ab".repeat(50000);
  const t0 = performance.now();
  const ids = tok.encode(long);
  assert.equal(tok.decode(ids), long);
  assert.ok(performance.now() - t0 < 2000);
});

test("stream decoder: never emits part of a character; the total equals the full decode", (t) => {
  const w = worldTokenizer(t);
  const n = neoxTokenizer(t);
  if (!w || !n) return;
  const text = "Hi 😀 there 🎉👨\u200d👩 done";
  for (const tok of [w, n]) {
    const ids = tok.encode(text);
    // The fixture only tests something if an emoji really is split over tokens.
    const splitEmoji = ids.some((id) => !isUtf8(tok.decodeBytes([id])));
    assert.ok(splitEmoji, `${tok.name}: expected some token to hold part of an emoji`);
    const dec = new StreamDecoder(tok);
    let got = "";
    for (const id of ids) {
      const piece = dec.push(id);
      assert.ok(!piece.includes(REPLACEMENT), `${tok.name}: emitted a partial character for id ${id}`);
      got += piece;
      assert.ok(text.startsWith(got), `${tok.name}: "${got}" is not a prefix of the text`);
      const last = got.charCodeAt(got.length - 1);
      assert.ok(!(last >= 0xd800 && last <= 0xdbff), `${tok.name}: ended on a lone high surrogate`);
    }
    got += dec.flush();
    assert.equal(got, text);
    assert.equal(got, tok.decode(ids));
  }
  // 😀 is World [3319, 153, 129]: F0 9F 98 | 80 — nothing until the last byte arrives.
  const dec = new StreamDecoder(w);
  assert.deepEqual([3319, 153, 129].map((id) => dec.push(id)), ["", "", "😀"]);
  // An unfinished character left at the end becomes one U+FFFD on flush.
  assert.equal(dec.push(231), ""); // 0xE6, first byte of 我
  assert.equal(dec.flush(), REPLACEMENT);
  assert.equal(dec.flush(), "");
  // An invalid byte mid-stream is replaced at once and decoding continues.
  assert.deepEqual([1734, 256, 99].map((id) => dec.push(id)), ["ab", REPLACEMENT, "b"]);
});

test("bytes tokenizer: id = byte value (rwkv.cpp's test vector \"in is [34,105,110])", () => {
  const tok = new ByteTokenizer();
  assert.equal(tok.name, "bytes");
  assert.equal(tok.vocabSize, 256);
  assert.deepEqual(tok.encode("\"in"), [34, 105, 110]);
  assert.deepEqual(tok.encode("é€"), [0xc3, 0xa9, 0xe2, 0x82, 0xac]);
  assert.equal(tok.decode([0xc3, 0xa9, 0xe2, 0x82, 0xac]), "é€");
  assert.equal(tok.decode([0x61, 0xff, 0x62]), "a\ufffdb");
  assert.throws(() => tok.decodeBytes([256]), RangeError);
  const dec = new StreamDecoder(tok);
  assert.deepEqual([0xe2, 0x82, 0xac].map((id) => dec.push(id)), ["", "", "€"]);
  assert.equal(createTokenizer("bytes", null).name, "bytes");
});

test("tokenizerKindForVocab picks the tokenizer from the embedding size", () => {
  assert.equal(tokenizerKindForVocab(65536), "world");
  assert.equal(tokenizerKindForVocab(50277), "20b");
  assert.equal(tokenizerKindForVocab(50304), "20b"); // Pile models padded to a multiple of 64
  assert.equal(tokenizerKindForVocab(65535), "20b");
  assert.equal(tokenizerKindForVocab(256), "bytes");
  for (const bad of [512, 50276, 65537, 0]) {
    assert.throws(() => tokenizerKindForVocab(bad), (e: unknown) =>
      e instanceof RwkvInputError && e.message.includes(`vocab size ${bad}`) && e.message.includes("--tokenizer-kind world|20b|bytes"));
  }
});

test("python literal parser: str vs bytes escapes", () => {
  const h = (lit: string): string => hex(parsePythonLiteral(lit));
  assert.equal(h("'\\xa0'"), "c2a0"); // str: U+00A0, two UTF-8 bytes
  assert.equal(h("b'\\xa0'"), "a0"); // bytes: one byte
  assert.equal(h("'\\u2003'"), "e28083");
  assert.equal(h("'\\U0001f600'"), "f09f9880");
  assert.equal(h("\"'\""), "27");
  assert.equal(h("'\\''"), "27");
  assert.equal(h("'\\\\'"), "5c");
  assert.equal(h("'\\n\\t\\r'"), "0a090d");
  assert.equal(h("'我'"), "e68891");
  assert.equal(h("b'\\u'"), "5c75"); // \u is not an escape in bytes
  assert.equal(h("'\\q'"), "5c71"); // unknown escapes keep the backslash, as in Python
  for (const bad of ["abc", "'abc", "'a'b", "b'é'", "'\\x4'", "'\\ud800'", "'''a'''", "__import__('os')"]) {
    assert.throws(() => parsePythonLiteral(bad), Error, bad);
  }
});

test("world vocab parser: rejects a wrong declared length, naming the line", () => {
  assert.throws(() => parseWorldVocab("1 'a' 1\n2 '\\xa0' 1\n", "v.txt"),
    (e: unknown) => e instanceof FormatError && e.message.startsWith("v.txt line 2:") && e.message.includes("2 bytes"));
  assert.throws(() => WorldTokenizer.fromVocabText("1 'a' 1\n2 b'a' 1\n", "v.txt"),
    (e: unknown) => e instanceof FormatError && e.message.includes("same bytes"));
  // A tiny custom vocab: greedy longest match, not BPE.
  const tok = new WorldTokenizer(parseWorldVocab("1 'a' 1\n2 'b' 1\n3 'ab' 2\n4 'abb' 3\n5 'bba' 3\n"));
  assert.deepEqual(tok.encode("abba"), [4, 1]);
  assert.deepEqual(tok.encode("babba"), [2, 4, 1]);
  assert.throws(() => tok.encode("c"), RangeError);
});

test("loadTokenizer: kind from vocab size, file beside the model, clear error when missing", (t) => {
  const vocab = sharedPath(t, "tokenizers", WORLD_FILE);
  const json = sharedPath(t, "tokenizers", NEOX_FILE);
  if (!vocab || !json) return;
  const dir = mkdtempSync(join(tmpdir(), "rwkv-tok-"));
  try {
    const modelPath = join(dir, "model.pth");
    for (const [kind, file] of [["world", WORLD_FILE], ["20b", NEOX_FILE]] as const) {
      assert.throws(() => loadTokenizer({ kind, modelPath }), (e: unknown) =>
        e instanceof RwkvInputError && e.message.includes(file) && e.message.includes("--tokenizer PATH") &&
        e.message.includes(join(dir, file)), kind);
    }
    assert.throws(() => loadTokenizer({ vocabSize: 65536 }), (e: unknown) =>
      e instanceof RwkvInputError && e.message.includes(WORLD_FILE) && e.message.includes("--tokenizer PATH"));
    assert.throws(() => loadTokenizer({ kind: "world", path: join(dir, "nope.txt") }), (e: unknown) =>
      e instanceof RwkvInputError && e.message.includes("nope.txt") && e.message.includes(WORLD_FILE));
    assert.throws(() => loadTokenizer({ vocabSize: 512 }), RwkvInputError);
    assert.throws(() => loadTokenizer({}), RwkvInputError);

    assert.equal(loadTokenizer({ vocabSize: 256 }).name, "bytes");
    assert.equal(findTokenizerFile("bytes"), null);
    const w = loadTokenizer({ vocabSize: 65536, path: vocab });
    assert.equal(w.name, "world");
    assert.deepEqual(w.encode("Hello world"), [33155, 40213]);
    // A world tokenizer would address embedding rows a 50304-row model does not have.
    assert.throws(() => loadTokenizer({ kind: "world", vocabSize: 50304, path: vocab }), RwkvInputError);

    symlinkSync(json, join(dir, NEOX_FILE));
    assert.equal(findTokenizerFile("20b", { modelPath }), join(dir, NEOX_FILE));
    const n = loadTokenizer({ vocabSize: 50304, modelPath });
    assert.equal(n.name, "20b");
    assert.deepEqual(n.encode("Hello world"), [12092, 1533]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
