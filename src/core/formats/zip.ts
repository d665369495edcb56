import { type ByteSource, checkRange, Reader } from "../bytes.js";
import { crc32 } from "../crc32.js";
import { FormatError } from "../errors.js";

// Zip archive reader (PKWARE APPNOTE 6.3): central directory only, STORED entries only. torch.save
// writes uncompressed entries (and ZIP64 structures for big files), so reading a tensor is a plain
// range read of the archive; nothing is inflated or held in memory.

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const EOCD_BYTES = 22;
const MAX_COMMENT_BYTES = 0xffff;
const ZIP64_LOCATOR_BYTES = 20;
const ZIP64_EOCD_MIN_BYTES = 56;
const CENTRAL_HEADER_BYTES = 46;
const LOCAL_HEADER_BYTES = 30;
const ZIP64_EXTRA_ID = 0x0001;
const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;
const FLAG_ENCRYPTED = 0x1;
/** General-purpose flag bit 3: crc and sizes are zero in the local header and follow the data. */
const FLAG_DATA_DESCRIPTOR = 0x8;
const SIG_DATA_DESCRIPTOR = 0x08074b50;
/** Optional signature, crc, then two sizes of 4 bytes (or 8 in ZIP64 archives). */
const DESCRIPTOR_MAX_BYTES = 24;
/** Entries are checked in chunks this size so a large storage is never held twice for its CRC. */
const CRC_CHUNK_BYTES = 16 * 1024 * 1024;
/** A central directory this big would mean millions of entries: refuse rather than allocate. */
const MAX_CENTRAL_DIRECTORY_BYTES = 256 * 1024 * 1024;

const METHOD_NAMES: Record<number, string> = { 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd", 95: "xz" };

export interface ZipEntry {
  readonly name: string;
  /** Compression method (0 = stored). */
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localHeaderOffset: number;
  /** CRC-32 of the (uncompressed) content, from the central directory. */
  readonly crc: number;
}

export interface ZipOpenOptions {
  /** Check each entry's CRC-32 the first time its bytes are read (default true). */
  readonly verifyCrc?: boolean;
}

/** True for the local-file-header magic "PK\x03\x04" (or an empty archive's "PK\x05\x06"). */
/** Compression method 0: the only one torch.save uses and the only one this reader reads. */
export const ZIP_METHOD_STORED = 0;

export function isZip(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b &&
    ((head[2] === 3 && head[3] === 4) || (head[2] === 5 && head[3] === 6));
}

export class ZipArchive {
  readonly entries: ReadonlyMap<string, ZipEntry>;
  private readonly dataOffsets: ReadonlyMap<string, number>;
  private readonly verified = new Set<string>();

  private constructor(readonly src: ByteSource, entries: Map<string, ZipEntry>, dataOffsets: Map<string, number>, readonly verifyCrc: boolean) {
    this.entries = entries;
    this.dataOffsets = dataOffsets;
  }

  /** Reads the central directory (searching the end-of-central-directory record from the end). */
  static open(src: ByteSource, options: ZipOpenOptions = {}): ZipArchive {
    const eocdPos = findEocd(src);
    const e = new Reader(src.name, src.read(eocdPos, EOCD_BYTES));
    e.u32("EOCD signature");
    const disk = e.u16("disk number");
    const cdDisk = e.u16("central directory disk");
    e.u16("entries on this disk");
    let count = e.u16("entry count");
    let cdSize = e.u32("central directory size");
    let cdOffset = e.u32("central directory offset");
    let multiDisk = disk !== 0 || cdDisk !== 0;

    const locPos = eocdPos - ZIP64_LOCATOR_BYTES;
    if (locPos >= 0 && u32At(src, locPos) === SIG_ZIP64_LOCATOR) {
      const loc = new Reader(src.name, src.read(locPos, ZIP64_LOCATOR_BYTES));
      loc.u32();
      loc.u32("ZIP64 EOCD disk");
      const recPos = loc.u64("ZIP64 EOCD offset");
      checkRange(src, recPos, ZIP64_EOCD_MIN_BYTES, "ZIP64 end of central directory");
      const r = new Reader(src.name, src.read(recPos, ZIP64_EOCD_MIN_BYTES));
      if (r.u32() !== SIG_ZIP64_EOCD) throw new FormatError(src.name, `zip: no ZIP64 end-of-central-directory record at offset ${recPos}`);
      r.u64("ZIP64 EOCD size");
      r.u16("version made by");
      r.u16("version needed");
      multiDisk = r.u32("disk number") !== 0 || r.u32("central directory disk") !== 0;
      r.u64("entries on this disk");
      count = r.u64("ZIP64 entry count");
      cdSize = r.u64("ZIP64 central directory size");
      cdOffset = r.u64("ZIP64 central directory offset");
    } else if (count === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX) {
      throw new FormatError(src.name, "zip: ZIP64 sizes announced but no ZIP64 end-of-central-directory locator found");
    }
    if (multiDisk) throw new FormatError(src.name, "zip: multi-disk (split) archives are not supported");
    if (cdSize > MAX_CENTRAL_DIRECTORY_BYTES) throw new FormatError(src.name, `zip: central directory of ${cdSize} bytes is absurd`);
    if (count * CENTRAL_HEADER_BYTES > cdSize) {
      throw new FormatError(src.name, `zip: ${count} entries cannot fit in a central directory of ${cdSize} bytes`);
    }
    checkRange(src, cdOffset, cdSize, "zip central directory");
    const cd = new Reader(src.name, src.read(cdOffset, cdSize));
    const entries = new Map<string, ZipEntry>();
    for (let i = 0; i < count; i++) {
      const entry = readCentralHeader(src.name, cd, i);
      if (entries.has(entry.name)) throw new FormatError(src.name, `zip: duplicate entry ${entry.name}`);
      entries.set(entry.name, entry);
    }
    return new ZipArchive(src, entries, locateEntries(src, entries, cdOffset), options.verifyCrc ?? true);
  }

  /** Where an entry's bytes start and how many there are; refuses compressed entries. */
  range(entry: ZipEntry): { offset: number; length: number } {
    if (entry.method !== ZIP_METHOD_STORED) {
      const how = METHOD_NAMES[entry.method] ?? `method ${entry.method}`;
      throw new FormatError(this.src.name, `zip entry ${entry.name} is compressed (${how}); only uncompressed (stored) entries can be read, as torch.save writes them`);
    }
    if (entry.compressedSize !== entry.size) {
      throw new FormatError(this.src.name, `zip entry ${entry.name} is stored but its sizes disagree (${entry.compressedSize} vs ${entry.size})`);
    }
    const offset = this.dataOffsets.get(entry.name);
    if (offset === undefined) throw new Error(`zip entry ${entry.name} is not from this archive`);
    return { offset, length: entry.size };
  }

  /** The whole content of a (small) entry, its CRC checked. */
  read(entry: ZipEntry): Uint8Array {
    return this.readPart(entry, 0, entry.size);
  }

  /**
   * `length` bytes at `offset` inside a stored entry. The entry's CRC-32 is checked on its first
   * read: on the bytes themselves when they are the whole entry, otherwise by one pass over it.
   */
  readPart(entry: ZipEntry, offset: number, length: number): Uint8Array {
    const { offset: base } = this.range(entry);
    checkRange({ name: `${this.src.name}: zip entry ${entry.name}`, size: entry.size }, offset, length, "read");
    const bytes = this.src.read(base + offset, length);
    if (this.verifyCrc && !this.verified.has(entry.name)) {
      const crc = offset === 0 && length === entry.size ? crc32(bytes) : this.entryCrc(base, entry.size);
      if (crc !== entry.crc) {
        throw new FormatError(this.src.name, `zip entry ${entry.name}: CRC-32 mismatch (computed ${hex32(crc)}, the directory says ${hex32(entry.crc)}): the file is corrupt`);
      }
      this.verified.add(entry.name);
    }
    return bytes;
  }

  private entryCrc(base: number, size: number): number {
    let crc = 0;
    for (let p = 0; p < size; p += CRC_CHUNK_BYTES) crc = crc32(this.src.read(base + p, Math.min(CRC_CHUNK_BYTES, size - p)), crc);
    return crc;
  }
}

function hex32(v: number): string {
  return `0x${v.toString(16).padStart(8, "0")}`;
}

/**
 * Reads every local header, cross-checks it against the central directory (name, method, crc and
 * sizes, or the data descriptor that carries them) and checks that no two entries share bytes and
 * that all lie before the central directory. Returns where each entry's data starts.
 */
function locateEntries(src: ByteSource, entries: ReadonlyMap<string, ZipEntry>, cdOffset: number): Map<string, number> {
  const offsets = new Map<string, number>();
  const spans: Array<{ name: string; start: number; end: number }> = [];
  for (const entry of entries.values()) {
    const bad = (problem: string): never => { throw new FormatError(src.name, `zip entry ${entry.name}: ${problem}`); };
    checkRange(src, entry.localHeaderOffset, LOCAL_HEADER_BYTES, `local header of zip entry ${entry.name}`);
    const h = new Reader(src.name, src.read(entry.localHeaderOffset, LOCAL_HEADER_BYTES));
    if (h.u32() !== SIG_LOCAL) bad(`no local file header at offset ${entry.localHeaderOffset}`);
    h.u16(); // version needed
    const flags = h.u16();
    const method = h.u16();
    h.u16(); h.u16(); // time, date
    const crc = h.u32();
    const compressedSize = h.u32();
    const size = h.u32();
    const nameLen = h.u16();
    const extraLen = h.u16();
    const nameAt = entry.localHeaderOffset + LOCAL_HEADER_BYTES;
    checkRange(src, nameAt, nameLen + extraLen, `local header of zip entry ${entry.name}`);
    const localName = new TextDecoder().decode(src.read(nameAt, nameLen));
    if (localName !== entry.name) bad(`the local header names it ${JSON.stringify(localName)}`);
    if (method !== entry.method) bad(`compression method ${method} in the local header, ${entry.method} in the directory`);
    checkExtraRecords(src, entry, src.read(nameAt + nameLen, extraLen));
    const offset = nameAt + nameLen + extraLen;
    let end = offset + entry.compressedSize;
    if (flags & FLAG_DATA_DESCRIPTOR) {
      end += checkDescriptor(src, entry, end, cdOffset);
    } else {
      if (crc !== entry.crc) bad(`CRC-32 ${hex32(crc)} in the local header, ${hex32(entry.crc)} in the directory`);
      // Saturated 32-bit sizes defer to ZIP64 fields; any other value must agree with the directory.
      if ((compressedSize !== U32_MAX && compressedSize !== entry.compressedSize) || (size !== U32_MAX && size !== entry.size)) {
        bad(`sizes ${compressedSize}/${size} in the local header, ${entry.compressedSize}/${entry.size} in the directory`);
      }
    }
    if (end > cdOffset) bad(`its data (bytes ${offset}..${end}) runs into the central directory at ${cdOffset}`);
    offsets.set(entry.name, offset);
    spans.push({ name: entry.name, start: entry.localHeaderOffset, end });
  }
  spans.sort((a, b) => a.start - b.start);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i].start < spans[i - 1].end) {
      throw new FormatError(src.name, `zip entries ${spans[i - 1].name} and ${spans[i].name} overlap (bytes ${spans[i].start}..${spans[i - 1].end})`);
    }
  }
  return offsets;
}

/**
 * A local extra field is a sequence of (id, length, body) records that fills it exactly; a length
 * that runs short or long means the data would be read from the wrong place. A ZIP64 record's
 * sizes must agree with the directory.
 */
function checkExtraRecords(src: ByteSource, entry: ZipEntry, extra: Uint8Array): void {
  const r = new Reader(src.name, extra);
  while (r.pos < extra.length) {
    if (extra.length - r.pos < 4) throw new FormatError(src.name, `zip entry ${entry.name}: local extra field ends inside a record header (${extra.length - r.pos} stray bytes)`);
    const id = r.u16();
    const len = r.u16();
    if (len > extra.length - r.pos) throw new FormatError(src.name, `zip entry ${entry.name}: local extra field record 0x${id.toString(16)} of ${len} bytes runs past the field's ${extra.length} bytes`);
    const body = new Reader(src.name, r.take(len));
    if (id === ZIP64_EXTRA_ID && len >= 16) {
      const size = body.u64("ZIP64 size"), compressed = body.u64("ZIP64 compressed size");
      if (size !== entry.size || compressed !== entry.compressedSize) {
        throw new FormatError(src.name, `zip entry ${entry.name}: ZIP64 sizes ${compressed}/${size} in the local header, ${entry.compressedSize}/${entry.size} in the directory`);
      }
    }
  }
}

/** The data descriptor after an entry's data must repeat the directory's crc and sizes; returns its length. */
function checkDescriptor(src: ByteSource, entry: ZipEntry, at: number, limit: number): number {
  const n = Math.min(DESCRIPTOR_MAX_BYTES, limit - at);
  const bad = (): never => {
    throw new FormatError(src.name, `zip entry ${entry.name}: no data descriptor matching the directory (crc ${hex32(entry.crc)}, ${entry.size} bytes) after its data at offset ${at}`);
  };
  if (n < 12) bad();
  const raw = src.read(at, n);
  const b = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const skip = b.getUint32(0, true) === SIG_DATA_DESCRIPTOR ? 4 : 0;
  if (n < skip + 12 || b.getUint32(skip, true) !== entry.crc) bad();
  const c32 = b.getUint32(skip + 4, true), s32 = b.getUint32(skip + 8, true);
  if (c32 === entry.compressedSize && s32 === entry.size && entry.size < U32_MAX) return skip + 12;
  if (n >= skip + 20) {
    const c64 = c32 + b.getUint32(skip + 8, true) * 2 ** 32;
    const s64 = b.getUint32(skip + 12, true) + b.getUint32(skip + 16, true) * 2 ** 32;
    if (c64 === entry.compressedSize && s64 === entry.size) return skip + 20;
  }
  return bad();
}

function u32At(src: ByteSource, pos: number): number {
  const b = src.read(pos, 4);
  return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
}

/** The EOCD record sits at the end, followed only by a comment of at most 64 KiB. */
function findEocd(src: ByteSource): number {
  if (src.size < EOCD_BYTES) throw new FormatError(src.name, `truncated: ${src.size} bytes is too short for a zip archive`);
  const start = Math.max(0, src.size - EOCD_BYTES - MAX_COMMENT_BYTES);
  const tail = src.read(start, src.size - start);
  const dv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  for (let p = tail.length - EOCD_BYTES; p >= 0; p--) {
    // The comment length must reach exactly to the end of the file, or this is a stray signature.
    if (dv.getUint32(p, true) === SIG_EOCD && p + EOCD_BYTES + dv.getUint16(p + 20, true) === tail.length) return start + p;
  }
  throw new FormatError(src.name, "zip: end of central directory not found (truncated or not a zip archive)");
}

function readCentralHeader(file: string, r: Reader, index: number): ZipEntry {
  const what = `zip central directory entry ${index}`;
  if (r.u32(what) !== SIG_CENTRAL) throw new FormatError(file, `${what}: bad signature`);
  r.u16(what); // version made by
  r.u16(what); // version needed
  const flags = r.u16(what);
  const method = r.u16(what);
  r.u16(what); // time
  r.u16(what); // date
  const crc = r.u32(what);
  let compressedSize = r.u32(what);
  let size = r.u32(what);
  const nameLen = r.u16(what);
  const extraLen = r.u16(what);
  const commentLen = r.u16(what);
  const diskStart = r.u16(what);
  r.u16(what); // internal attributes
  r.u32(what); // external attributes
  let localHeaderOffset = r.u32(what);
  const name = new TextDecoder().decode(r.take(nameLen, what));
  const extra = new Reader(file, r.take(extraLen, what));
  r.take(commentLen, what);
  // ZIP64 extra field: only the fields whose 32-bit slots are saturated are present, in this order.
  while (extra.pos + 4 <= extra.bytes.length) {
    const id = extra.u16();
    const len = extra.u16();
    const body = new Reader(file, extra.take(len, `extra field of zip entry ${name}`));
    if (id !== ZIP64_EXTRA_ID) continue;
    if (size === U32_MAX) size = body.u64(`ZIP64 size of ${name}`);
    if (compressedSize === U32_MAX) compressedSize = body.u64(`ZIP64 compressed size of ${name}`);
    if (localHeaderOffset === U32_MAX) localHeaderOffset = body.u64(`ZIP64 offset of ${name}`);
  }
  if (flags & FLAG_ENCRYPTED) throw new FormatError(file, `zip entry ${name} is encrypted`);
  if (diskStart !== 0 && diskStart !== U16_MAX) throw new FormatError(file, `zip entry ${name} lives on another disk`);
  return { name, method, compressedSize, size, localHeaderOffset, crc };
}
