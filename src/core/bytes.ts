import { FormatError } from "./errors.js";
import type { TensorEntry } from "./tensor.js";

/**
 * Random-access, read-only bytes. Parsers take this instead of one big buffer so that a
 * multi-GB checkpoint is read a tensor at a time (the Node layer implements it over a file
 * descriptor; browsers wrap an ArrayBuffer or a Blob that was read once).
 */
export interface ByteSource {
  /** Shown in every error about these bytes: usually the file path. */
  readonly name: string;
  readonly size: number;
  /** Exactly `length` bytes at `offset`; throws FormatError when that runs past the end. */
  read(offset: number, length: number): Uint8Array;
  /** Optional: `dest.length` bytes at `offset` written into `dest` (no buffer of its own). */
  readInto?(offset: number, dest: Uint8Array): void;
}

export class MemorySource implements ByteSource {
  readonly size: number;
  constructor(readonly name: string, private readonly bytes: Uint8Array) {
    this.size = bytes.length;
  }
  read(offset: number, length: number): Uint8Array {
    checkRange(this, offset, length);
    return this.bytes.subarray(offset, offset + length);
  }
  readInto(offset: number, dest: Uint8Array): void {
    dest.set(this.read(offset, dest.length));
  }
}

/** Throws the canonical "truncated" error when [offset, offset+length) is not inside the source. */
export function checkRange(src: { name: string; size: number }, offset: number, length: number, what = "data"): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new FormatError(src.name, `invalid ${what} range (offset ${offset}, length ${length})`);
  }
  if (offset + length > src.size) {
    throw new FormatError(src.name, `truncated: ${what} needs bytes ${offset}..${offset + length} but the file has ${src.size}`);
  }
}

/** Little-endian reader over one small buffer (headers, records). */
export class Reader {
  private readonly view: DataView;
  pos = 0;
  constructor(readonly name: string, readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  private need(n: number, what: string): void {
    if (this.pos + n > this.bytes.length) {
      throw new FormatError(this.name, `truncated while reading ${what}`);
    }
  }
  u8(what = "u8"): number { this.need(1, what); return this.view.getUint8(this.pos++); }
  u16(what = "u16"): number { this.need(2, what); const v = this.view.getUint16(this.pos, true); this.pos += 2; return v; }
  u32(what = "u32"): number { this.need(4, what); const v = this.view.getUint32(this.pos, true); this.pos += 4; return v; }
  i32(what = "i32"): number { this.need(4, what); const v = this.view.getInt32(this.pos, true); this.pos += 4; return v; }
  /** u64 as a JS number; refuses values beyond 2^53 rather than silently rounding. */
  u64(what = "u64"): number {
    this.need(8, what);
    const lo = this.view.getUint32(this.pos, true);
    const hi = this.view.getUint32(this.pos + 4, true);
    this.pos += 8;
    if (hi >= 0x200000) throw new FormatError(this.name, `${what} is too large (${hi} * 2^32)`);
    return hi * 0x100000000 + lo;
  }
  f64(what = "f64"): number { this.need(8, what); const v = this.view.getFloat64(this.pos, true); this.pos += 8; return v; }
  take(n: number, what = "bytes"): Uint8Array {
    this.need(n, what);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

/** raw() and, where the source can, rawInto() over one stored byte range. */
export function rawAccess(src: ByteSource, offset: number, length: number): Pick<TensorEntry, "raw" | "rawInto"> {
  const readInto = src.readInto?.bind(src);
  return {
    raw: () => src.read(offset, length),
    ...(readInto ? {
      rawInto: (dest: Uint8Array) => {
        if (dest.length !== length) throw new Error(`rawInto: destination holds ${dest.length} bytes, the tensor ${length}`);
        readInto(offset, dest);
      },
    } : {}),
  };
}
