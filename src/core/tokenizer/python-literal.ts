// A small, safe reader for the Python literals that repr() writes in RWKV vocab files
// (`'...'`, `"..."`, `b'...'`). Never eval: the vocab file is input, not code.

const BACKSLASH = 0x5c;
const SIMPLE_ESCAPES: Readonly<Record<string, number>> = {
  "\\": BACKSLASH, "'": 0x27, "\"": 0x22, n: 0x0a, t: 0x09, r: 0x0d, a: 0x07, b: 0x08, f: 0x0c, v: 0x0b,
};
const MAX_BYTE = 0xff;
const MAX_ASCII = 0x7f;
const MAX_CODE_POINT = 0x10ffff;
const SURROGATE_FIRST = 0xd800;
const SURROGATE_LAST = 0xdfff;
const HEX_DIGITS = { x: 2, u: 4, U: 8 } as const;
const MAX_OCTAL_DIGITS = 3;

const utf8 = new TextEncoder();

/**
 * The bytes a Python `str` (UTF-8 encoded) or `bytes` literal stands for.
 * Throws Error with a short reason on anything that is not a well-formed literal.
 */
export function parsePythonLiteral(lit: string): Uint8Array {
  let i = 0;
  let isBytes = false;
  if (lit[0] === "b" || lit[0] === "B") {
    isBytes = true;
    i = 1;
  }
  const quote = lit[i];
  if (quote !== "'" && quote !== "\"") throw new Error("not a quoted string literal");
  if (lit.startsWith(quote.repeat(3), i)) throw new Error("triple-quoted literals are not supported");
  i++;
  // str literals collect code points; bytes literals collect byte values.
  const out: number[] = [];
  for (;;) {
    if (i >= lit.length) throw new Error("unterminated literal");
    const c = lit.codePointAt(i) as number;
    const ch = String.fromCodePoint(c);
    i += ch.length;
    if (ch === quote) break;
    if (ch !== "\\") {
      if (isBytes && c > MAX_ASCII) throw new Error("non-ASCII character in a bytes literal");
      out.push(c);
      continue;
    }
    if (i >= lit.length) throw new Error("unterminated escape");
    const e = lit[i++];
    if (e in SIMPLE_ESCAPES) {
      out.push(SIMPLE_ESCAPES[e]);
    } else if (e === "x" || (!isBytes && (e === "u" || e === "U"))) {
      const n = HEX_DIGITS[e];
      const hex = lit.slice(i, i + n);
      if (hex.length !== n || !/^[0-9a-fA-F]+$/.test(hex)) throw new Error(`bad \\${e} escape`);
      const v = parseInt(hex, 16);
      if (v > MAX_CODE_POINT) throw new Error(`\\${e}${hex} is beyond U+10FFFF`);
      if (!isBytes && v >= SURROGATE_FIRST && v <= SURROGATE_LAST) throw new Error(`\\${e}${hex} is a lone surrogate`);
      out.push(v);
      i += n;
    } else if (e >= "0" && e <= "7") {
      let j = i - 1;
      while (j < lit.length && j < i - 1 + MAX_OCTAL_DIGITS && lit[j] >= "0" && lit[j] <= "7") j++;
      const v = parseInt(lit.slice(i - 1, j), 8);
      if (isBytes && v > MAX_BYTE) throw new Error("octal escape above \\377 in a bytes literal");
      out.push(v);
      i = j;
    } else if (e === "N" && !isBytes) {
      throw new Error("\\N{...} escapes are not supported");
    } else {
      // Python keeps an unknown escape as the backslash and the character.
      out.push(BACKSLASH);
      i--;
    }
  }
  if (i !== lit.length) throw new Error("text after the closing quote");
  if (isBytes) return Uint8Array.from(out);
  return utf8.encode(String.fromCodePoint(...out));
}
