import { type ByteSource, checkRange, Reader } from "../bytes.js";
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
  private readonly dataOffsets = new Map<string, number>();

  private constructor(readonly src: ByteSource, entries: Map<string, ZipEntry>) {
    this.entries = entries;
  }

  /** Reads the central directory (searching the end-of-central-directory record from the end). */
  static open(src: ByteSource): ZipArchive {
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
    return new ZipArchive(src, entries);
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
    let offset = this.dataOffsets.get(entry.name);
    if (offset === undefined) {
      checkRange(this.src, entry.localHeaderOffset, LOCAL_HEADER_BYTES, `local header of zip entry ${entry.name}`);
      const h = new Reader(this.src.name, this.src.read(entry.localHeaderOffset, LOCAL_HEADER_BYTES));
      if (h.u32() !== SIG_LOCAL) {
        throw new FormatError(this.src.name, `zip entry ${entry.name}: no local file header at offset ${entry.localHeaderOffset}`);
      }
      h.pos = 26; // file name length, extra field length
      const nameLen = h.u16();
      const extraLen = h.u16();
      offset = entry.localHeaderOffset + LOCAL_HEADER_BYTES + nameLen + extraLen;
      this.dataOffsets.set(entry.name, offset);
    }
    checkRange(this.src, offset, entry.size, `zip entry ${entry.name}`);
    return { offset, length: entry.size };
  }

  /** The whole content of a (small) entry. */
  read(entry: ZipEntry): Uint8Array {
    const { offset, length } = this.range(entry);
    return this.src.read(offset, length);
  }
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
  r.u32(what); // crc32
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
  return { name, method, compressedSize, size, localHeaderOffset };
}
