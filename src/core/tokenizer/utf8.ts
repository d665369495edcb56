// UTF-8 helpers shared by the tokenizers. TextEncoder/TextDecoder exist in browsers and Node.

const encoder = new TextEncoder();
// ignoreBOM keeps a leading U+FEFF in the text, as Python's bytes.decode and Rust's from_utf8 do.
const lossy = new TextDecoder("utf-8", { ignoreBOM: true });
const strict = new TextDecoder("utf-8", { ignoreBOM: true, fatal: true });

export function utf8Encode(text: string): Uint8Array {
  return encoder.encode(text);
}

/** Invalid sequences become U+FFFD (WHATWG maximal-subpart rule, the same as Rust's from_utf8_lossy). */
export function utf8DecodeLossy(bytes: Uint8Array): string {
  return lossy.decode(bytes);
}

/** The text, or null when the bytes are not valid UTF-8. */
export function utf8DecodeStrict(bytes: Uint8Array): string | null {
  try {
    return strict.decode(bytes);
  } catch {
    return null;
  }
}

/** Concatenates byte chunks into one array. */
export function concatBytes(chunks: readonly Uint8Array[], total?: number): Uint8Array {
  let n = total ?? 0;
  if (total === undefined) for (const c of chunks) n += c.length;
  const out = new Uint8Array(n);
  let pos = 0;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}
