/*
 * torch.save-compatible writer: what `torch.save(OrderedDict(state_dict), path)` produces (torch >= 1.6
 * zip format, as read by pth.ts): a zip of STORED entries
 *   <archive>/data.pkl      pickle protocol 2: OrderedDict of torch._utils._rebuild_tensor_v2(...)
 *   <archive>/byteorder     "little" (torch >= 2.1 writes it; older torch ignores it)
 *   <archive>/data/<key>    raw little-endian storage bytes, one storage per tensor
 *   <archive>/version       "3\n"
 * Every entry's data starts 64-byte aligned (torch pads the local header's extra field with an
 * "FB" record so storages can be memory-mapped), CRC-32s are real (torch's reader checks them),
 * and ZIP64 records are used when an offset or size does not fit in 32 bits.
 */

import { crc32 } from "../crc32.js";

export type PthDType = "f32" | "f16" | "bf16";

export interface PthTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: PthDType;
  /** Raw little-endian bytes, produced when the tensor is written (one tensor in memory at a time). */
  data(): Uint8Array;
}

export interface PthWriteOptions {
  /** Top-level folder of the archive; torch uses the file name without its extension. */
  readonly archiveName?: string;
  /** Write ZIP64 structures even when not needed (tests; torch does so only past 4 GiB). */
  readonly forceZip64?: boolean;
}

const STORAGE_CLASS: Record<PthDType, string> = { f32: "FloatStorage", f16: "HalfStorage", bf16: "BFloat16Storage" };
const ITEM_BYTES: Record<PthDType, number> = { f32: 4, f16: 2, bf16: 2 };
const DEFAULT_ARCHIVE = "archive";
const TORCH_SERIALIZATION_VERSION = "3\n";

// ---------------------------------------------------------------- pickle (protocol 2)

const OP = {
  PROTO: 0x80, GLOBAL: 0x63, EMPTY_TUPLE: 0x29, TUPLE1: 0x85, TUPLE2: 0x86, TUPLE3: 0x87, TUPLE: 0x74, MARK: 0x28,
  REDUCE: 0x52, BINPERSID: 0x51, SETITEMS: 0x75, NEWFALSE: 0x89, BINUNICODE: 0x58, BININT1: 0x4b, BININT2: 0x4d,
  BININT: 0x4a, LONG1: 0x8a, STOP: 0x2e,
} as const;
const PICKLE_PROTOCOL = 2;
const U8_MAX = 0xff;
const U16_MAX = 0xffff;
const I32_MAX = 0x7fffffff;
const TUPLE_OPS = [OP.EMPTY_TUPLE, OP.TUPLE1, OP.TUPLE2, OP.TUPLE3];

class PickleBuilder {
  private readonly parts: number[] = [];
  private readonly enc = new TextEncoder();
  op(...b: number[]): this { for (const x of b) this.parts.push(x); return this; }
  u32(v: number): this { return this.op(v & U8_MAX, (v >>> 8) & U8_MAX, (v >>> 16) & U8_MAX, (v >>> 24) & U8_MAX); }
  global(module: string, name: string): this { this.op(OP.GLOBAL); for (const b of this.enc.encode(`${module}\n${name}\n`)) this.op(b); return this; }
  str(s: string): this { const b = this.enc.encode(s); this.op(OP.BINUNICODE).u32(b.length); for (const x of b) this.op(x); return this; }
  /** Non-negative integer in the shortest opcode pickle protocol 2 has for it. */
  int(n: number): this {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`pickle int ${n}`);
    if (n <= U8_MAX) return this.op(OP.BININT1, n);
    if (n <= U16_MAX) return this.op(OP.BININT2, n & U8_MAX, n >>> 8);
    if (n <= I32_MAX) return this.op(OP.BININT).u32(n);
    // LONG1: little-endian two's complement; a trailing zero byte keeps the sign positive.
    const bytes: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.push(v % 256);
    if (bytes[bytes.length - 1] & 0x80) bytes.push(0);
    return this.op(OP.LONG1, bytes.length, ...bytes);
  }
  intTuple(items: readonly number[]): this {
    if (items.length < TUPLE_OPS.length) { for (const v of items) this.int(v); return this.op(TUPLE_OPS[items.length]); }
    this.op(OP.MARK);
    for (const v of items) this.int(v);
    return this.op(OP.TUPLE);
  }
  bytes(): Uint8Array { return Uint8Array.from(this.parts); }
}

/** Row-major (contiguous) strides, as torch gives a freshly saved tensor. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) { strides[i] = s; s *= shape[i]; }
  return strides;
}

/** data.pkl of an OrderedDict whose i-th tensor lives alone in storage key `${i}`. */
export function statePickle(tensors: ReadonlyArray<Pick<PthTensor, "name" | "shape" | "dtype">>): Uint8Array {
  const p = new PickleBuilder();
  p.op(OP.PROTO, PICKLE_PROTOCOL);
  p.global("collections", "OrderedDict").op(OP.EMPTY_TUPLE, OP.REDUCE, OP.MARK);
  tensors.forEach((t, i) => {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    p.str(t.name);
    p.global("torch._utils", "_rebuild_tensor_v2").op(OP.MARK);
    // persistent id ('storage', <class>, key, location, numel) -> BINPERSID
    p.op(OP.MARK).str("storage").global("torch", STORAGE_CLASS[t.dtype]).str(String(i)).str("cpu").int(numel).op(OP.TUPLE, OP.BINPERSID);
    p.int(0); // storage offset
    p.intTuple(t.shape).intTuple(contiguousStrides(t.shape));
    p.op(OP.NEWFALSE); // requires_grad
    p.global("collections", "OrderedDict").op(OP.EMPTY_TUPLE, OP.REDUCE); // backward hooks
    p.op(OP.TUPLE, OP.REDUCE);
  });
  return p.op(OP.SETITEMS, OP.STOP).bytes();
}

// ---------------------------------------------------------------- zip

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const VERSION_ZIP64 = 45;
const VERSION_DEFAULT = 20;
const LOCAL_HEADER_BYTES = 30;
const CENTRAL_HEADER_BYTES = 46;
const EOCD_BYTES = 22;
const ZIP64_EOCD_BYTES = 56;
const ZIP64_LOCATOR_BYTES = 20;
const ZIP64_EXTRA_ID = 0x0001;
const ALIGN_EXTRA_ID = 0x4246; // "FB": torch's padding record
const EXTRA_HEADER_BYTES = 4;
const DATA_ALIGNMENT = 64;
const U32_MAX = 0xffffffff;
/** DOS date/time fields: torch writes zeros. */
const DOS_ZERO = 0;


class ByteWriter {
  readonly buf: Uint8Array;
  private readonly dv: DataView;
  pos = 0;
  constructor(size: number) { this.buf = new Uint8Array(size); this.dv = new DataView(this.buf.buffer); }
  u16(v: number): this { this.dv.setUint16(this.pos, v, true); this.pos += 2; return this; }
  u32(v: number): this { this.dv.setUint32(this.pos, v >>> 0, true); this.pos += 4; return this; }
  u64(v: number): this { this.u32(v % 2 ** 32); return this.u32(Math.floor(v / 2 ** 32)); }
  bytes(b: Uint8Array): this { this.buf.set(b, this.pos); this.pos += b.length; return this; }
}

interface CentralRecord { name: Uint8Array; crc: number; size: number; offset: number; zip64: boolean }

/** The archive as chunks; tensor data is produced (and CRC'd) one tensor at a time. */
export function* pthChunks(tensors: readonly PthTensor[], options: PthWriteOptions = {}): Generator<Uint8Array> {
  const archive = options.archiveName ?? DEFAULT_ARCHIVE;
  const enc = new TextEncoder();
  const central: CentralRecord[] = [];
  let offset = 0;

  function* entry(name: string, data: Uint8Array): Generator<Uint8Array> {
    const nameBytes = enc.encode(`${archive}/${name}`);
    const zip64 = options.forceZip64 === true || data.length >= U32_MAX || offset >= U32_MAX;
    const zip64Extra = zip64 ? EXTRA_HEADER_BYTES + 16 : 0;
    const base = offset + LOCAL_HEADER_BYTES + nameBytes.length + zip64Extra + EXTRA_HEADER_BYTES;
    const pad = (DATA_ALIGNMENT - (base % DATA_ALIGNMENT)) % DATA_ALIGNMENT;
    const crc = crc32(data);
    const h = new ByteWriter(base - offset + pad);
    h.u32(SIG_LOCAL).u16(zip64 ? VERSION_ZIP64 : VERSION_DEFAULT).u16(0).u16(0).u16(DOS_ZERO).u16(DOS_ZERO).u32(crc);
    h.u32(zip64 ? U32_MAX : data.length).u32(zip64 ? U32_MAX : data.length);
    h.u16(nameBytes.length).u16(zip64Extra + EXTRA_HEADER_BYTES + pad).bytes(nameBytes);
    if (zip64) h.u16(ZIP64_EXTRA_ID).u16(16).u64(data.length).u64(data.length);
    h.u16(ALIGN_EXTRA_ID).u16(pad); // then `pad` zero bytes (already zero)
    central.push({ name: nameBytes, crc, size: data.length, offset, zip64 });
    yield h.buf;
    yield data;
    offset += h.buf.length + data.length;
  }

  yield* entry("data.pkl", statePickle(tensors));
  yield* entry("byteorder", enc.encode("little"));
  for (let i = 0; i < tensors.length; i++) {
    const t = tensors[i];
    const data = t.data();
    const want = t.shape.reduce((a, b) => a * b, 1) * ITEM_BYTES[t.dtype];
    if (data.length !== want) throw new Error(`pth writer: tensor ${t.name} has ${data.length} bytes, shape [${t.shape}] ${t.dtype} needs ${want}`);
    yield* entry(`data/${i}`, data);
  }
  yield* entry("version", enc.encode(TORCH_SERIALIZATION_VERSION));

  // Central directory: only saturated 32-bit fields get ZIP64 values, in the order size, offset.
  const cdStart = offset;
  const parts: Uint8Array[] = [];
  for (const r of central) {
    const bigSize = r.zip64;
    const bigOffset = r.zip64 || r.offset >= U32_MAX;
    const extraLen = bigSize || bigOffset ? EXTRA_HEADER_BYTES + (bigSize ? 16 : 0) + (bigOffset ? 8 : 0) : 0;
    const w = new ByteWriter(CENTRAL_HEADER_BYTES + r.name.length + extraLen);
    w.u32(SIG_CENTRAL).u16(VERSION_ZIP64).u16(bigSize || bigOffset ? VERSION_ZIP64 : VERSION_DEFAULT).u16(0).u16(0).u16(DOS_ZERO).u16(DOS_ZERO);
    w.u32(r.crc).u32(bigSize ? U32_MAX : r.size).u32(bigSize ? U32_MAX : r.size);
    w.u16(r.name.length).u16(extraLen).u16(0).u16(0).u16(0).u32(0).u32(bigOffset ? U32_MAX : r.offset).bytes(r.name);
    if (extraLen) {
      w.u16(ZIP64_EXTRA_ID).u16(extraLen - EXTRA_HEADER_BYTES);
      if (bigSize) w.u64(r.size).u64(r.size);
      if (bigOffset) w.u64(r.offset);
    }
    parts.push(w.buf);
  }
  const cdSize = parts.reduce((a, p) => a + p.length, 0);
  yield* parts;
  const count = central.length;
  const zip64End = options.forceZip64 === true || central.some((r) => r.zip64) || cdStart >= U32_MAX || cdSize >= U32_MAX || count >= U16_MAX;
  if (zip64End) {
    const recordAt = cdStart + cdSize;
    const w = new ByteWriter(ZIP64_EOCD_BYTES + ZIP64_LOCATOR_BYTES);
    w.u32(SIG_ZIP64_EOCD).u64(ZIP64_EOCD_BYTES - 12).u16(VERSION_ZIP64).u16(VERSION_ZIP64).u32(0).u32(0);
    w.u64(count).u64(count).u64(cdSize).u64(cdStart);
    w.u32(SIG_ZIP64_LOCATOR).u32(0).u64(recordAt).u32(1);
    yield w.buf;
  }
  const e = new ByteWriter(EOCD_BYTES);
  e.u32(SIG_EOCD).u16(0).u16(0);
  e.u16(zip64End ? U16_MAX : count).u16(zip64End ? U16_MAX : count);
  e.u32(zip64End ? U32_MAX : cdSize).u32(zip64End ? U32_MAX : cdStart).u16(0);
  yield e.buf;
}
