import { type ByteSource, checkRange } from "../bytes.js";
import { FormatError } from "../errors.js";
import { decodeFloats, type DType, numel } from "../tensor.js";
import { type Checkpoint, MAX_TENSOR_ELEMENTS } from "./checkpoint.js";
import { type GgmlType, ggmlToFloat32, QK } from "./ggml-quants.js";
import { type QuantDType, quantize, type QuantizeOptions, toBf16Bytes, toF16Bytes, toF32Bytes } from "./quantize.js";

/*
 * GGUF v3 (ggml/docs/gguf.md), little-endian:
 *   "GGUF" u32 version=3, u64 tensor_count, u64 kv_count,
 *   kv_count x { string key, u32 value_type, value }            (string = u64 length + UTF-8 bytes)
 *   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
 *   padding to `general.alignment` (default 32), then the data section; each tensor's offset is
 *   relative to it and aligned; llama.cpp packs tensors in order, each padded to the alignment.
 *
 * This file is the container only: RWKV's names and layouts are gguf-rwkv.ts (with each version's
 * table in its module), the "rwkv" vocabulary gguf-vocab.ts.
 * Tensor data types: F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml's type ids).
 */

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
const GGML_MAX_DIMS = 4;

// ---------------------------------------------------------------- values

export type GgufNumberType = "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64";
export type GgufBigType = "u64" | "i64";
export type GgufValueType = GgufNumberType | GgufBigType | "bool" | "string" | "array";

export type GgufArray =
  | { readonly type: "array"; readonly itemType: GgufNumberType; readonly value: readonly number[] }
  | { readonly type: "array"; readonly itemType: GgufBigType; readonly value: readonly bigint[] }
  | { readonly type: "array"; readonly itemType: "bool"; readonly value: readonly boolean[] }
  | { readonly type: "array"; readonly itemType: "string"; readonly value: readonly string[] }
  | { readonly type: "array"; readonly itemType: "array"; readonly value: readonly GgufArray[] };

export type GgufValue =
  | { readonly type: GgufNumberType; readonly value: number }
  | { readonly type: GgufBigType; readonly value: bigint }
  | { readonly type: "bool"; readonly value: boolean }
  | { readonly type: "string"; readonly value: string }
  | GgufArray;

/** GGUF value type ids (gguf.md `gguf_metadata_value_type`). */
const VALUE_TYPES: readonly GgufValueType[] = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"];
const VALUE_TYPE_ID = new Map(VALUE_TYPES.map((t, i) => [t, i]));
const FIXED_SIZE: Readonly<Record<Exclude<GgufValueType, "string" | "array">, number>> = {
  u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, bool: 1, u64: 8, i64: 8, f64: 8,
};
/** Smallest encoding of one value of a type: a bound for array lengths before allocating. */
const MIN_STRING_BYTES = 8;
const MIN_ARRAY_BYTES = 12;
const MAX_ARRAY_DEPTH = 4;
const MIN_KV_BYTES = 8 + 4 + 1;
const MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8;
const MAX_KEY_BYTES = 65535;
const HEADER_BYTES = 4 + 4 + 8 + 8;
/** Buffered window for parsing the header section (metadata can be megabytes: 65k tokens). */
const READ_WINDOW = 1 << 20;

// ---------------------------------------------------------------- tensor types

export interface GgufTensorType extends GgmlType {
  /** The project's dtype name; "bf16" and "f64" are decoded here, block types by ggml-quants.ts. */
  readonly dtype: DType;
}

const TENSOR_TYPES: readonly GgufTensorType[] = [
  { id: 0, name: "F32", dtype: "f32", blockElements: 1, blockBytes: 4 },
  { id: 1, name: "F16", dtype: "f16", blockElements: 1, blockBytes: 2 },
  { id: 2, name: "Q4_0", dtype: "q4_0", blockElements: QK, blockBytes: 2 + QK / 2 },
  { id: 3, name: "Q4_1", dtype: "q4_1", blockElements: QK, blockBytes: 4 + QK / 2 },
  { id: 6, name: "Q5_0", dtype: "q5_0", blockElements: QK, blockBytes: 6 + QK / 2 },
  { id: 7, name: "Q5_1", dtype: "q5_1", blockElements: QK, blockBytes: 8 + QK / 2 },
  { id: 8, name: "Q8_0", dtype: "q8_0", blockElements: QK, blockBytes: 2 + QK },
  { id: 28, name: "F64", dtype: "f64", blockElements: 1, blockBytes: 8 },
  { id: 30, name: "BF16", dtype: "bf16", blockElements: 1, blockBytes: 2 },
];
const TYPE_BY_ID = new Map(TENSOR_TYPES.map((t) => [t.id, t]));
const TYPE_BY_DTYPE = new Map(TENSOR_TYPES.map((t) => [t.dtype, t]));
/** ggml types this reader knows by name only, for a precise error. */
const UNSUPPORTED_TYPE_NAMES: Readonly<Record<number, string>> = {
  4: "Q4_2 (removed)", 5: "Q4_3 (removed)", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
  16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
  24: "I8", 25: "I16", 26: "I32", 27: "I64", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
};

// ---------------------------------------------------------------- parsed file

export interface GgufTensorInfo {
  readonly name: string;
  /** ggml order: ne[0] is contiguous. */
  readonly ne: readonly number[];
  readonly type: GgufTensorType;
  /** Absolute file offset of the data. */
  readonly dataOffset: number;
  readonly byteLength: number;
}

export interface GgufFile {
  readonly version: number;
  readonly metadata: ReadonlyMap<string, GgufValue>;
  readonly tensors: readonly GgufTensorInfo[];
  readonly alignment: number;
  readonly dataStart: number;
}

export function isGguf(head: Uint8Array): boolean {
  return head.length >= 4 && new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true) === GGUF_MAGIC;
}

/** What a read is of, for error messages; a function when building the text would cost every item of an array. */
type Where = string | (() => string);
const say = (w: Where): string => typeof w === "string" ? w : w();
const UTF8 = new TextDecoder();

/** Sequential little-endian reads over a ByteSource through a window, with bounds checked first. */
class Cursor {
  private buf: Uint8Array = new Uint8Array(0);
  private dv = new DataView(this.buf.buffer);
  private start = 0;
  pos = 0;
  constructor(private readonly src: ByteSource) {}

  // Note: callers must call need() before touching this.dv (it may swap the window).
  get remaining(): number { return this.src.size - this.pos; }

  private check(n: number, what: Where): void {
    if (n > this.remaining) throw new FormatError(this.src.name, `truncated: ${say(what)} at offset ${this.pos} needs ${n} bytes, the file has ${this.remaining} left`);
  }
  private need(n: number, what: Where): number {
    this.check(n, what);
    if (this.pos < this.start || this.pos + n > this.start + this.buf.length) {
      const len = Math.min(this.remaining, Math.max(n, READ_WINDOW));
      this.buf = this.src.read(this.pos, len);
      this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
      this.start = this.pos;
    }
    const at = this.pos - this.start;
    this.pos += n;
    return at;
  }
  u8(w: Where): number { const at = this.need(1, w); return this.dv.getUint8(at); }
  i8(w: Where): number { const at = this.need(1, w); return this.dv.getInt8(at); }
  u16(w: Where): number { const at = this.need(2, w); return this.dv.getUint16(at, true); }
  i16(w: Where): number { const at = this.need(2, w); return this.dv.getInt16(at, true); }
  u32(w: Where): number { const at = this.need(4, w); return this.dv.getUint32(at, true); }
  i32(w: Where): number { const at = this.need(4, w); return this.dv.getInt32(at, true); }
  f32(w: Where): number { const at = this.need(4, w); return this.dv.getFloat32(at, true); }
  f64(w: Where): number { const at = this.need(8, w); return this.dv.getFloat64(at, true); }
  u64big(w: Where): bigint { const at = this.need(8, w); return this.dv.getBigUint64(at, true); }
  i64big(w: Where): bigint { const at = this.need(8, w); return this.dv.getBigInt64(at, true); }
  /** A u64 count or size; anything beyond 2^53 is absurd for a file this reader can open. */
  u64(w: Where): number {
    const at = this.need(8, w);
    // Two u32 halves, not a BigInt: a vocabulary reads 65k lengths.
    const lo = this.dv.getUint32(at, true), hi = this.dv.getUint32(at + 4, true);
    if (hi >= 2 ** 21) throw new FormatError(this.src.name, `${say(w)} is absurd (${(BigInt(hi) << 32n) | BigInt(lo)})`);
    return hi * 2 ** 32 + lo;
  }
  /** Steps over n bytes without reading them. */
  skip(n: number, w: Where): void {
    this.check(n, w);
    this.pos += n;
  }
  bytes(n: number, w: Where): Uint8Array { const at = this.need(n, w); return this.buf.subarray(at, at + n); }
  string(w: Where, maxBytes = Infinity): string {
    const len = this.u64(() => `length of ${say(w)}`);
    if (len > maxBytes) throw new FormatError(this.src.name, `${say(w)} at offset ${this.pos - 8} has absurd length ${len}`);
    return UTF8.decode(this.bytes(len, w));
  }
}

function valueType(src: ByteSource, id: number, where: string): GgufValueType {
  const t = VALUE_TYPES[id];
  if (t === undefined) throw new FormatError(src.name, `${where}: unknown GGUF value type ${id}`);
  return t;
}

/** One number of a fixed-size numeric type. */
function readNumber(c: Cursor, type: GgufNumberType, w: Where): number {
  switch (type) {
    case "u8": return c.u8(w);
    case "i8": return c.i8(w);
    case "u16": return c.u16(w);
    case "i16": return c.i16(w);
    case "u32": return c.u32(w);
    case "i32": return c.i32(w);
    case "f32": return c.f32(w);
    case "f64": return c.f64(w);
  }
}

function readBool(c: Cursor, src: ByteSource, w: Where): boolean {
  const b = c.u8(w);
  if (b > 1) throw new FormatError(src.name, `${say(w)}: bool value ${b} is neither 0 nor 1`);
  return b === 1;
}

/**
 * An array of n strings, checked now and decoded on first use: a vocabulary's 65k strings held as
 * JavaScript strings cost ~15 MB of RSS (the heap grows to hold them), which a model that never
 * tokenizes (a benchmark, a server given token ids) need not pay. The section's bytes are kept (~1 MB).
 */
function lazyStrings(c: Cursor, src: ByteSource, n: number, where: string): GgufArray {
  const start = c.pos;
  let i = 0;
  const at = () => `${where}[${i}]`;
  const lengthAt = () => `length of ${where}[${i}]`;
  for (; i < n; i++) c.skip(c.u64(lengthAt), at);
  const raw = n === 0 ? new Uint8Array(0) : src.read(start, c.pos - start);
  let value: string[] | undefined;
  const decode = (): string[] => {
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const out = new Array<string>(n);
    for (let i = 0, p = 0; i < n; i++) {
      const len = dv.getUint32(p, true) + dv.getUint32(p + 4, true) * 2 ** 32; // checked below 2^53 while indexing
      out[i] = UTF8.decode(raw.subarray(p + 8, p + 8 + len));
      p += 8 + len;
    }
    return out;
  };
  const array: GgufArray = { type: "array", itemType: "string", get value() { return value ??= decode(); } };
  LAZY_LENGTH.set(array, n);
  return array;
}
/** The lengths of lazy string arrays, so that describing one does not decode it. */
const LAZY_LENGTH = new WeakMap<GgufArray, number>();

function readValue(c: Cursor, src: ByteSource, type: GgufValueType, where: string, depth: number): GgufValue {
  switch (type) {
    case "u64": return { type, value: c.u64big(where) };
    case "i64": return { type, value: c.i64big(where) };
    case "bool": return { type, value: readBool(c, src, where) };
    case "string": return { type, value: c.string(where) };
    case "array": return readArray(c, src, where, depth);
    default: return { type, value: readNumber(c, type, where) };
  }
}

function readArray(c: Cursor, src: ByteSource, where: string, depth: number): GgufArray {
  if (depth >= MAX_ARRAY_DEPTH) throw new FormatError(src.name, `${where}: arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
  const itemType = valueType(src, c.u32(`${where} item type`), where);
  const n = c.u64(`${where} length`);
  const minItem = itemType === "string" ? MIN_STRING_BYTES : itemType === "array" ? MIN_ARRAY_BYTES : FIXED_SIZE[itemType];
  // Refuse before allocating: n items cannot take fewer bytes than this.
  if (n * minItem > c.remaining) throw new FormatError(src.name, `${where}: array of ${n} ${itemType} values cannot fit in the ${c.remaining} bytes left (truncated or corrupt)`);
  // A vocabulary is 65k items: no wrapper object, no message text and no closure per item (garbage that grows the heap).
  let i = 0;
  const at = () => `${where}[${i}]`;
  const items = <T>(read: (w: Where) => T): T[] => {
    const out = new Array<T>(n);
    for (i = 0; i < n; i++) out[i] = read(at);
    return out;
  };
  switch (itemType) {
    case "string": return lazyStrings(c, src, n, where);
    case "array": return { type: "array", itemType, value: items((w) => readArray(c, src, say(w), depth + 1)) };
    case "bool": return { type: "array", itemType, value: items((w) => readBool(c, src, w)) };
    case "u64": return { type: "array", itemType, value: items((w) => c.u64big(w)) };
    case "i64": return { type: "array", itemType, value: items((w) => c.i64big(w)) };
    default: return { type: "array", itemType, value: items((w) => readNumber(c, itemType, w)) };
  }
}

function tensorTypeOf(src: ByteSource, id: number, tensor: string): GgufTensorType {
  const t = TYPE_BY_ID.get(id);
  if (t) return t;
  const known = UNSUPPORTED_TYPE_NAMES[id];
  throw new FormatError(src.name, `tensor ${tensor}: ${known ? `ggml type ${known} (${id}) is not supported` : `unknown ggml type ${id}`} (supported: ${TENSOR_TYPES.map((x) => x.name).join(", ")})`);
}

/** Parses the header, metadata and tensor infos; reads no tensor data. */
export function readGguf(src: ByteSource): GgufFile {
  checkRange(src, 0, HEADER_BYTES, "GGUF header");
  const c = new Cursor(src);
  const magic = c.u32("magic");
  if (magic !== GGUF_MAGIC) throw new FormatError(src.name, `bad magic 0x${magic.toString(16)} (GGUF files start with "GGUF")`);
  const fileVersion = c.u32("version");
  if (fileVersion !== GGUF_VERSION) {
    const hint = fileVersion > 0xffff ? " (a big-endian GGUF file?)" : fileVersion < GGUF_VERSION ? " (an old GGUF; re-convert it with a current llama.cpp)" : "";
    throw new FormatError(src.name, `unsupported GGUF version ${fileVersion}${hint}; only version ${GGUF_VERSION} is supported`);
  }
  const tensorCount = c.u64("tensor count");
  const kvCount = c.u64("metadata count");
  if (kvCount * MIN_KV_BYTES > c.remaining) throw new FormatError(src.name, `metadata count ${kvCount} cannot fit in a file of ${src.size} bytes (truncated or corrupt)`);
  if (tensorCount * MIN_TENSOR_INFO_BYTES > c.remaining) throw new FormatError(src.name, `tensor count ${tensorCount} cannot fit in a file of ${src.size} bytes (truncated or corrupt)`);

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = c.string(`metadata key ${i}`, MAX_KEY_BYTES);
    if (metadata.has(key)) throw new FormatError(src.name, `metadata key ${key} appears twice`);
    const type = valueType(src, c.u32(`type of ${key}`), `metadata ${key}`);
    metadata.set(key, readValue(c, src, type, `metadata ${key}`, 0));
  }
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = metadata.get("general.alignment");
  if (al !== undefined) {
    if (al.type !== "u32" || al.value === 0 || (al.value & (al.value - 1)) !== 0) {
      throw new FormatError(src.name, `general.alignment must be a power-of-two u32, got ${describeValue(al)}`);
    }
    alignment = al.value;
  }

  const infos: Array<{ name: string; ne: number[]; type: GgufTensorType; offset: number }> = [];
  const seen = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = c.string(`name of tensor ${i}`, MAX_KEY_BYTES);
    if (seen.has(name)) throw new FormatError(src.name, `tensor ${name} appears twice`);
    seen.add(name);
    const nDims = c.u32(`dimension count of ${name}`);
    if (nDims < 1 || nDims > GGML_MAX_DIMS) throw new FormatError(src.name, `tensor ${name}: ${nDims} dimensions (must be 1..${GGML_MAX_DIMS})`);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) ne.push(c.u64(`dimension ${d} of ${name}`));
    const type = tensorTypeOf(src, c.u32(`type of ${name}`), name);
    const offset = c.u64(`data offset of ${name}`);
    const count = numel(ne);
    if (count > MAX_TENSOR_ELEMENTS) throw new FormatError(src.name, `tensor ${name}: absurd dimensions [${ne}]`);
    if (ne[0] % type.blockElements) throw new FormatError(src.name, `tensor ${name}: ${type.name} needs ne[0] to be a multiple of ${type.blockElements}, got ${ne[0]}`);
    if (offset % alignment) throw new FormatError(src.name, `tensor ${name}: data offset ${offset} is not a multiple of the alignment ${alignment}`);
    infos.push({ name, ne, type, offset });
  }
  const dataStart = alignUp(c.pos, alignment);
  const tensors = infos.map((t): GgufTensorInfo => {
    const byteLength = (numel(t.ne) / t.type.blockElements) * t.type.blockBytes;
    checkRange(src, dataStart + t.offset, byteLength, `tensor ${t.name} data`);
    return { name: t.name, ne: t.ne, type: t.type, dataOffset: dataStart + t.offset, byteLength };
  });
  checkPacking(src, tensors, dataStart, alignment);
  return { version: fileVersion, metadata, tensors, alignment, dataStart };
}

/**
 * GGUF writers (llama.cpp's, gguf-py, ours) pack tensors back to back, each padded to the
 * alignment. Anything else means shared bytes (an offset pointing into another tensor) or a type
 * relabelled to one of another size (an f32 tensor read as f16): both would load wrong weights.
 */
function checkPacking(src: ByteSource, tensors: readonly GgufTensorInfo[], dataStart: number, alignment: number): void {
  const sorted = [...tensors].sort((a, b) => a.dataOffset - b.dataOffset);
  let expect = dataStart;
  let prev = "the start of the data section";
  for (const t of sorted) {
    if (t.dataOffset < expect) {
      throw new FormatError(src.name, `tensor ${t.name}: data at offset ${t.dataOffset - dataStart} overlaps ${prev} (${t.type.name} [${t.ne}] takes ${t.byteLength} bytes)`);
    }
    if (t.dataOffset > expect) {
      throw new FormatError(src.name, `tensor ${t.name}: data at offset ${t.dataOffset - dataStart} leaves a gap of ${t.dataOffset - expect} bytes after ${prev} (a wrong offset, or a type or dimensions that do not match the stored bytes)`);
    }
    expect = dataStart + alignUp(t.dataOffset - dataStart + t.byteLength, alignment);
    prev = `tensor ${t.name} (${t.type.name} [${t.ne}], ${t.byteLength} bytes)`;
  }
  const end = sorted.length ? sorted[sorted.length - 1].dataOffset + sorted[sorted.length - 1].byteLength : dataStart;
  // The last tensor's padding may or may not have been written.
  if (src.size > Math.max(end, expect)) {
    throw new FormatError(src.name, `${src.size - Math.max(end, expect)} bytes after the last tensor's data (${prev}): the tensors do not cover the data section (a wrong type, dimensions or offset)`);
  }
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** A tensor's stored values as f32, in stored (ggml) order. */
export function decodeGgufTensor(src: ByteSource, t: GgufTensorInfo): Float32Array {
  const bytes = src.read(t.dataOffset, t.byteLength);
  const count = numel(t.ne);
  if (t.type.dtype === "bf16" || t.type.dtype === "f64") return decodeFloats(bytes, t.type.dtype, count);
  return ggmlToFloat32(t.type, bytes, count);
}

/** Short human form of a value (arrays summarized), for messages and `rwkv info`. */
export function describeValue(v: GgufValue, maxChars = 120): string {
  if (v.type === "array") return `[${LAZY_LENGTH.get(v) ?? v.value.length} x ${v.itemType}]`;
  const s = v.type === "f32" ? shortestF32(v.value) : String(v.value);
  return s.length > maxChars ? `${s.slice(0, maxChars)}... (${s.length} chars)` : s;
}

const MAX_F32_DIGITS = 9;

/** The shortest decimal that reads back as the same f32 (1e-5, not 0.000009999999747378752). */
function shortestF32(x: number): string {
  for (let p = 1; p < MAX_F32_DIGITS; p++) {
    const s = Number(x.toPrecision(p));
    if (Math.fround(s) === x) return String(s);
  }
  return String(x);
}

/** A checkpoint read from a GGUF file, with the file's metadata. */
export interface GgufCheckpoint extends Checkpoint {
  readonly gguf: GgufFile;
}

export function isGgufCheckpoint(c: Checkpoint): c is GgufCheckpoint {
  return (c as Partial<GgufCheckpoint>).gguf !== undefined;
}

export function metaNumber(file: GgufFile, key: string): number | undefined {
  const v = file.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type === "u64" || v.type === "i64") return Number(v.value);
  return typeof v.value === "number" ? v.value : undefined;
}

export function metaString(file: GgufFile, key: string): string | undefined {
  const v = file.metadata.get(key);
  return v?.type === "string" ? v.value : undefined;
}

/** A tensor to write: its GGUF name, ggml dimensions and values (computed when written). */
export interface OutTensor {
  readonly name: string;
  readonly ne: readonly number[];
  readonly values: () => Float32Array;
}

/** The ggml tensor type of a dtype this writer can write. */
export function ggufTensorType(dtype: DType): GgufTensorType {
  const t = TYPE_BY_DTYPE.get(dtype);
  if (!t) throw new Error(`GGUF: no tensor type for ${dtype}`);
  return t;
}

/** Serializes metadata and tensors (header first; then each tensor's data, padded to the alignment). */
export function* ggufChunks(kv: ReadonlyMap<string, GgufValue>, tensors: readonly OutTensor[], typeOf: (t: OutTensor) => GgufTensorType, quantizeOptions?: QuantizeOptions): Generator<Uint8Array> {
  const alignment = GGUF_DEFAULT_ALIGNMENT;
  const w = new GrowableWriter();
  w.u32(GGUF_MAGIC).u32(GGUF_VERSION).u64(tensors.length).u64(kv.size);
  for (const [k, v] of kv) { w.string(k).u32(VALUE_TYPE_ID.get(v.type)!); writeValue(w, v); }
  const types = tensors.map(typeOf);
  let offset = 0;
  const sizes: number[] = [];
  tensors.forEach((t, i) => {
    const size = (numel(t.ne) / types[i].blockElements) * types[i].blockBytes;
    sizes.push(size);
    w.string(t.name).u32(t.ne.length);
    for (const d of t.ne) w.u64(d);
    w.u32(types[i].id).u64(offset);
    offset += alignUp(size, alignment);
  });
  w.pad(alignment);
  yield w.bytes();
  for (let i = 0; i < tensors.length; i++) {
    const values = tensors[i].values();
    const t = types[i];
    const data = t.dtype === "f32" ? toF32Bytes(values) : t.dtype === "f16" ? toF16Bytes(values) : t.dtype === "bf16" ? toBf16Bytes(values) : quantize(t.dtype as QuantDType, values, quantizeOptions);
    if (data.length !== sizes[i]) throw new Error(`gguf writer: ${tensors[i].name} encoded to ${data.length} bytes, expected ${sizes[i]}`);
    yield data;
    const pad = alignUp(data.length, alignment) - data.length;
    if (pad) yield new Uint8Array(pad);
  }
}

class GrowableWriter {
  private buf = new Uint8Array(1 << 16);
  private dv = new DataView(this.buf.buffer);
  private pos = 0;
  private readonly enc = new TextEncoder();
  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n));
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }
  u8(v: number): this { this.ensure(1); this.dv.setUint8(this.pos, v); this.pos += 1; return this; }
  i8(v: number): this { this.ensure(1); this.dv.setInt8(this.pos, v); this.pos += 1; return this; }
  u16(v: number): this { this.ensure(2); this.dv.setUint16(this.pos, v, true); this.pos += 2; return this; }
  i16(v: number): this { this.ensure(2); this.dv.setInt16(this.pos, v, true); this.pos += 2; return this; }
  u32(v: number): this { this.ensure(4); this.dv.setUint32(this.pos, v, true); this.pos += 4; return this; }
  i32(v: number): this { this.ensure(4); this.dv.setInt32(this.pos, v, true); this.pos += 4; return this; }
  f32(v: number): this { this.ensure(4); this.dv.setFloat32(this.pos, v, true); this.pos += 4; return this; }
  f64(v: number): this { this.ensure(8); this.dv.setFloat64(this.pos, v, true); this.pos += 8; return this; }
  u64(v: number | bigint): this { this.ensure(8); this.dv.setBigUint64(this.pos, BigInt(v), true); this.pos += 8; return this; }
  i64(v: bigint): this { this.ensure(8); this.dv.setBigInt64(this.pos, v, true); this.pos += 8; return this; }
  string(s: string): this { const b = this.enc.encode(s); this.u64(b.length); this.ensure(b.length); this.buf.set(b, this.pos); this.pos += b.length; return this; }
  pad(alignment: number): this { const n = alignUp(this.pos, alignment) - this.pos; this.ensure(n); this.pos += n; return this; }
  bytes(): Uint8Array { return this.buf.slice(0, this.pos); }
}

function writeScalar(w: GrowableWriter, type: GgufValueType, v: number | bigint | boolean | string): void {
  switch (type) {
    case "u8": w.u8(Number(v)); break;
    case "i8": w.i8(Number(v)); break;
    case "u16": w.u16(Number(v)); break;
    case "i16": w.i16(Number(v)); break;
    case "u32": w.u32(Number(v)); break;
    case "i32": w.i32(Number(v)); break;
    case "f32": w.f32(Number(v)); break;
    case "f64": w.f64(Number(v)); break;
    case "u64": w.u64(BigInt(v)); break;
    case "i64": w.i64(BigInt(v)); break;
    case "bool": w.u8(v ? 1 : 0); break;
    case "string": w.string(String(v)); break;
    case "array": throw new Error("writeScalar: array");
  }
}

function writeValue(w: GrowableWriter, v: GgufValue): void {
  if (v.type !== "array") { writeScalar(w, v.type, v.value); return; }
  w.u32(VALUE_TYPE_ID.get(v.itemType)!).u64(v.value.length);
  if (v.itemType === "array") { for (const a of v.value) writeValue(w, a); return; }
  for (const item of v.value) writeScalar(w, v.itemType, item);
}
