import { type ByteSource, checkRange } from "../bytes.js";
import { FormatError, RwkvInputError } from "../errors.js";
import type { Version } from "../model/model.js";
import { decodeFloats, type DType, numel, type TensorEntry, transposeLast2 } from "../tensor.js";
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
 * RWKV in llama.cpp (convert_hf_to_gguf.py Rwkv6Model / Rwkv7Model, src/models/rwkv6*.cpp,
 * rwkv7*.cpp), relative to the official RWKV-LM checkpoint:
 *  - names: emb -> token_embd, blocks.0.ln0 -> token_embd_norm, ln_out -> output_norm,
 *    head -> output, ln1/ln2 -> attn_norm/attn_norm_2, att.* -> time_mix_*, ffn.* -> channel_mix_*;
 *  - every tensor is squeezed (the (1,1,C) lerps/decays become (C));
 *  - v6: time_maa_w/k/v/r/g are stacked into time_mix_lerp_fused (5,1,1,C) in order w,k,v,r,g;
 *    time_maa_w1, time_decay_w1, time_decay_w2 are transposed and time_maa_w2 permuted (0,2,1);
 *    time_decay stays raw (the graph computes exp(-exp(w))); time_faaaa -> time_mix_first (H,N);
 *    with `rescale_every_n_layers` = n > 0, att.output and ffn.value of layer i are divided by
 *    2^floor(i/n) and the graph halves x after every n-th layer (undone on reading).
 *  - v7: x_r,x_w,x_k,x_v,x_a,x_g are stacked into time_mix_lerp_fused (6,1,1,C); w1,w2,a1,a2,
 *    v1,v2,g1,g2 transposed; w0/a0/v0 raw (w = exp(-e^-0.5 sigmoid(w0 + ...)) in the graph);
 *    r_k flattened to (C); layer 0 carries dummy v0/v1/v2 (copies of a0/a1/a2) because
 *    llama.cpp's loader requires them with the a-LoRA shapes.
 * Tensor data types: F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml's type ids).
 */

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
const GGML_MAX_DIMS = 4;
const GGML_QUANT_VERSION = 2;
/** llama.cpp's RWKV converters state this: RWKV is not context limited. */
const RWKV_CONTEXT_LENGTH = 1048576;
const LAYER_NORM_EPS = 1e-5;

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

/** Sequential little-endian reads over a ByteSource through a window, with bounds checked first. */
class Cursor {
  private buf: Uint8Array = new Uint8Array(0);
  private dv = new DataView(this.buf.buffer);
  private start = 0;
  pos = 0;
  constructor(private readonly src: ByteSource) {}

  // Note: callers must call need() before touching this.dv (it may swap the window).
  get remaining(): number { return this.src.size - this.pos; }

  private need(n: number, what: string): number {
    if (n > this.remaining) throw new FormatError(this.src.name, `truncated: ${what} at offset ${this.pos} needs ${n} bytes, the file has ${this.remaining} left`);
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
  u8(w: string): number { const at = this.need(1, w); return this.dv.getUint8(at); }
  i8(w: string): number { const at = this.need(1, w); return this.dv.getInt8(at); }
  u16(w: string): number { const at = this.need(2, w); return this.dv.getUint16(at, true); }
  i16(w: string): number { const at = this.need(2, w); return this.dv.getInt16(at, true); }
  u32(w: string): number { const at = this.need(4, w); return this.dv.getUint32(at, true); }
  i32(w: string): number { const at = this.need(4, w); return this.dv.getInt32(at, true); }
  f32(w: string): number { const at = this.need(4, w); return this.dv.getFloat32(at, true); }
  f64(w: string): number { const at = this.need(8, w); return this.dv.getFloat64(at, true); }
  u64big(w: string): bigint { const at = this.need(8, w); return this.dv.getBigUint64(at, true); }
  i64big(w: string): bigint { const at = this.need(8, w); return this.dv.getBigInt64(at, true); }
  /** A u64 count or size; anything beyond 2^53 is absurd for a file this reader can open. */
  u64(w: string): number {
    const v = this.u64big(w);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(this.src.name, `${w} is absurd (${v})`);
    return Number(v);
  }
  bytes(n: number, w: string): Uint8Array { const at = this.need(n, w); return this.buf.subarray(at, at + n); }
  string(w: string, maxBytes = Infinity): string {
    const len = this.u64(`length of ${w}`);
    if (len > maxBytes) throw new FormatError(this.src.name, `${w} at offset ${this.pos - 8} has absurd length ${len}`);
    return new TextDecoder().decode(this.bytes(len, w));
  }
}

function valueType(src: ByteSource, id: number, where: string): GgufValueType {
  const t = VALUE_TYPES[id];
  if (t === undefined) throw new FormatError(src.name, `${where}: unknown GGUF value type ${id}`);
  return t;
}

function readValue(c: Cursor, src: ByteSource, type: GgufValueType, where: string, depth: number): GgufValue {
  switch (type) {
    case "u8": return { type, value: c.u8(where) };
    case "i8": return { type, value: c.i8(where) };
    case "u16": return { type, value: c.u16(where) };
    case "i16": return { type, value: c.i16(where) };
    case "u32": return { type, value: c.u32(where) };
    case "i32": return { type, value: c.i32(where) };
    case "f32": return { type, value: c.f32(where) };
    case "f64": return { type, value: c.f64(where) };
    case "u64": return { type, value: c.u64big(where) };
    case "i64": return { type, value: c.i64big(where) };
    case "bool": {
      const b = c.u8(where);
      if (b > 1) throw new FormatError(src.name, `${where}: bool value ${b} is neither 0 nor 1`);
      return { type, value: b === 1 };
    }
    case "string": return { type, value: c.string(where) };
    case "array": return readArray(c, src, where, depth);
  }
}

function readArray(c: Cursor, src: ByteSource, where: string, depth: number): GgufArray {
  if (depth >= MAX_ARRAY_DEPTH) throw new FormatError(src.name, `${where}: arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
  const itemType = valueType(src, c.u32(`${where} item type`), where);
  const n = c.u64(`${where} length`);
  const minItem = itemType === "string" ? MIN_STRING_BYTES : itemType === "array" ? MIN_ARRAY_BYTES : FIXED_SIZE[itemType];
  // Refuse before allocating: n items cannot take fewer bytes than this.
  if (n * minItem > c.remaining) throw new FormatError(src.name, `${where}: array of ${n} ${itemType} values cannot fit in the ${c.remaining} bytes left (truncated or corrupt)`);
  const item = (i: number) => readValue(c, src, itemType, `${where}[${i}]`, depth + 1);
  switch (itemType) {
    case "string": return { type: "array", itemType, value: Array.from({ length: n }, (_, i) => c.string(`${where}[${i}]`)) };
    case "array": return { type: "array", itemType, value: Array.from({ length: n }, (_, i) => readArray(c, src, `${where}[${i}]`, depth + 1)) };
    case "bool": return { type: "array", itemType, value: Array.from({ length: n }, (_, i) => item(i).value as boolean) };
    case "u64": case "i64": return { type: "array", itemType, value: Array.from({ length: n }, (_, i) => item(i).value as bigint) };
    default: return { type: "array", itemType, value: Array.from({ length: n }, (_, i) => item(i).value as number) };
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
  if (v.type === "array") return `[${v.value.length} x ${v.itemType}]`;
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

// ---------------------------------------------------------------- GGUF -> official checkpoint

export interface GgufCheckpoint extends Checkpoint {
  readonly gguf: GgufFile;
}

export function isGgufCheckpoint(c: Checkpoint): c is GgufCheckpoint {
  return (c as Partial<GgufCheckpoint>).gguf !== undefined;
}

const ARCH_VERSION: Readonly<Record<string, Version>> = { rwkv6: "6", rwkv7: "7" };
const V6_FUSED = ["w", "k", "v", "r", "g"];
const V7_FUSED = ["r", "w", "k", "v", "a", "g"];
const LINEAR: Readonly<Record<string, string>> = {
  time_mix_key: "att.key.weight", time_mix_value: "att.value.weight", time_mix_receptance: "att.receptance.weight",
  time_mix_gate: "att.gate.weight", time_mix_output: "att.output.weight",
  channel_mix_key: "ffn.key.weight", channel_mix_value: "ffn.value.weight", channel_mix_receptance: "ffn.receptance.weight",
};
const NORMS: Readonly<Record<string, string>> = { attn_norm: "ln1", attn_norm_2: "ln2", time_mix_ln: "att.ln_x" };

function metaNumber(file: GgufFile, key: string): number | undefined {
  const v = file.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type === "u64" || v.type === "i64") return Number(v.value);
  return typeof v.value === "number" ? v.value : undefined;
}

function metaString(file: GgufFile, key: string): string | undefined {
  const v = file.metadata.get(key);
  return v?.type === "string" ? v.value : undefined;
}

/**
 * Reads an RWKV-6/7 GGUF as a checkpoint in official names and shapes: llama.cpp's renames,
 * squeezes, transposes, fused lerps and output rescaling are undone in toFloat32().
 */
export function readGgufCheckpoint(src: ByteSource): GgufCheckpoint {
  const file = readGguf(src);
  const arch = metaString(file, "general.architecture");
  if (arch === undefined) throw new FormatError(src.name, "GGUF without general.architecture");
  const version = ARCH_VERSION[arch];
  if (!version) throw new FormatError(src.name, `GGUF architecture "${arch}" is not RWKV-6 or RWKV-7 (supported: ${Object.keys(ARCH_VERSION).join(", ")})`);
  const rescale = metaNumber(file, `${arch}.rescale_every_n_layers`) ?? 0;
  const headSize = metaNumber(file, `${arch}.wkv.head_size`);
  const bad = (name: string, problem: string): never => { throw new FormatError(src.name, `tensor ${name}: ${problem}`); };

  const tensors = new Map<string, TensorEntry>();
  const add = (e: TensorEntry) => {
    if (tensors.has(e.name)) throw new FormatError(src.name, `two GGUF tensors map to ${e.name}`);
    tensors.set(e.name, e);
  };
  const entry = (t: GgufTensorInfo, name: string, shape: readonly number[], values: () => Float32Array): TensorEntry => {
    if (numel(shape) !== numel(t.ne)) bad(t.name, `cannot present [${t.ne}] as [${shape}]`);
    return { name, dtype: t.type.dtype, shape, toFloat32: values };
  };
  const raw = (t: GgufTensorInfo) => () => decodeGgufTensor(src, t);
  const torchShape = (t: GgufTensorInfo) => [...t.ne].reverse();
  const vec = (t: GgufTensorInfo, name: string) => add(entry(t, name, [1, 1, numel(t.ne)], raw(t)));
  const transposed = (t: GgufTensorInfo, name: string) => {
    if (t.ne.length !== 2) bad(t.name, `expected a matrix, got [${t.ne}]`);
    const [k, r] = t.ne; // torch (r, k) -> official (k, r)
    add(entry(t, name, [k, r], () => transposeLast2(decodeGgufTensor(src, t), 1, r, k)));
  };
  const fused = (t: GgufTensorInfo, prefix: string, parts: readonly string[]) => {
    const c = t.ne[0];
    if (numel(t.ne) !== c * parts.length) bad(t.name, `expected ${parts.length} x ${c} values, got [${t.ne}]`);
    parts.forEach((p, i) => add(entry({ ...t, ne: [c] }, prefix + p, [1, 1, c], () => decodeGgufTensor(src, t).slice(i * c, (i + 1) * c))));
  };

  for (const t of file.tensors) {
    const g = /^(token_embd|token_embd_norm|output_norm|output)\.(weight|bias)$/.exec(t.name);
    if (g) {
      const official = { token_embd: "emb", token_embd_norm: "blocks.0.ln0", output_norm: "ln_out", output: "head" }[g[1]];
      add(entry(t, `${official}.${g[2]}`, torchShape(t), raw(t)));
      continue;
    }
    const m = /^blk\.(\d+)\.([a-z0-9_]+)\.(weight|bias)$/.exec(t.name);
    if (!m) bad(t.name, `not part of llama.cpp's ${arch} layout`);
    const layer = Number(m![1]), base = m![2], kind = m![3];
    const p = `blocks.${layer}.`;
    if (NORMS[base]) { add(entry(t, `${p}${NORMS[base]}.${kind}`, [numel(t.ne)], raw(t))); continue; }
    if (kind !== "weight") bad(t.name, `unexpected bias in llama.cpp's ${arch} layout`);
    if (LINEAR[base]) {
      const rescaled = rescale > 0 && (base === "time_mix_output" || base === "channel_mix_value");
      const factor = rescaled ? 2 ** Math.floor(layer / rescale) : 1;
      const values = factor === 1 ? raw(t) : scaled(raw(t), factor);
      add(entry(t, p + LINEAR[base], torchShape(t), values));
      continue;
    }
    if (version === "6") {
      switch (base) {
        case "time_mix_lerp_x": vec(t, `${p}att.time_maa_x`); continue;
        case "time_mix_lerp_w": case "time_mix_lerp_k": case "time_mix_lerp_v": case "time_mix_lerp_r": case "time_mix_lerp_g":
          vec(t, `${p}att.time_maa_${base.slice(-1)}`); continue;
        case "time_mix_lerp_fused": fused(t, `${p}att.time_maa_`, V6_FUSED); continue;
        case "time_mix_w1": transposed(t, `${p}att.time_maa_w1`); continue;
        case "time_mix_w2": {
          if (t.ne.length !== 3) bad(t.name, `expected 3 dimensions, got [${t.ne}]`);
          const [dm, c, five] = t.ne; // torch (5, C, Dm) -> official (5, Dm, C)
          add(entry(t, `${p}att.time_maa_w2`, [five, dm, c], () => transposeLast2(decodeGgufTensor(src, t), five, c, dm)));
          continue;
        }
        case "time_mix_decay": vec(t, `${p}att.time_decay`); continue;
        case "time_mix_decay_w1": transposed(t, `${p}att.time_decay_w1`); continue;
        case "time_mix_decay_w2": transposed(t, `${p}att.time_decay_w2`); continue;
        case "time_mix_first": {
          if (t.ne.length !== 2) bad(t.name, `expected (N, H), got [${t.ne}]`);
          add(entry(t, `${p}att.time_faaaa`, torchShape(t), raw(t)));
          continue;
        }
        case "channel_mix_lerp_k": vec(t, `${p}ffn.time_maa_k`); continue;
        case "channel_mix_lerp_r": vec(t, `${p}ffn.time_maa_r`); continue;
      }
    } else {
      const lora = /^time_mix_([wavg])([012])$/.exec(base);
      if (lora) {
        // Layer 0's v0/v1/v2 are llama.cpp's placeholders (copies of a0/a1/a2): the model never uses them.
        if (layer === 0 && lora[1] === "v") continue;
        if (lora[2] === "0") vec(t, `${p}att.${lora[1]}0`);
        else transposed(t, `${p}att.${lora[1]}${lora[2]}`);
        continue;
      }
      switch (base) {
        case "time_mix_lerp_fused": fused(t, `${p}att.x_`, V7_FUSED); continue;
        case "time_mix_k_k": vec(t, `${p}att.k_k`); continue;
        case "time_mix_k_a": vec(t, `${p}att.k_a`); continue;
        case "time_mix_r_k": {
          const c = numel(t.ne);
          if (headSize === undefined || headSize <= 0 || c % headSize) {
            throw new FormatError(src.name, `${arch}.wkv.head_size (${headSize}) is missing or does not divide r_k's ${c} values`);
          }
          add(entry(t, `${p}att.r_k`, [c / headSize, headSize], raw(t)));
          continue;
        }
        case "channel_mix_lerp_k": vec(t, `${p}ffn.x_k`); continue;
      }
    }
    bad(t.name, `not part of llama.cpp's ${arch} layout`);
  }

  const metadata: Record<string, string> = { "gguf.version": String(file.version), "gguf.tensors": String(file.tensors.length) };
  for (const [k, v] of file.metadata) metadata[k] = describeValue(v);
  return { format: "gguf", source: src.name, tensors, metadata, gguf: file };
}

function scaled(raw: () => Float32Array, factor: number): () => Float32Array {
  return () => {
    const v = raw();
    for (let i = 0; i < v.length; i++) v[i] *= factor;
    return v;
  };
}

// ---------------------------------------------------------------- tokenizer ("rwkv" vocab)

/** llama.cpp token types (llama_token_type). */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;
const BACKSLASH = 0x5c;
const SINGLE_QUOTE = 0x27;
const DOUBLE_QUOTE = 0x22;
const PRINTABLE_MIN = 0x20;
const PRINTABLE_END = 0x7f;
const ESCAPES: Readonly<Record<number, string>> = { 0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r" };
/** World vocab conventions of llama.cpp's converter: id 0 "<s>" (BOS = EOS), "\n\n" (261) as EOT. */
const WORLD_BOS_EOS = 0;
const WORLD_EOT = 261;
const WORLD_CHAT_TEMPLATE = "rwkv-world";

/**
 * A token's bytes as llama.cpp's converter stores them: Python's `repr(bytes)[2:-1]` (printable
 * ASCII as is, \t \n \r, \\, the delimiting quote escaped, everything else \xNN).
 */
export function escapeRwkvToken(bytes: Uint8Array): string {
  const quote = bytes.includes(SINGLE_QUOTE) && !bytes.includes(DOUBLE_QUOTE) ? DOUBLE_QUOTE : SINGLE_QUOTE;
  let s = "";
  for (const b of bytes) {
    if (b === BACKSLASH || b === quote) s += "\\" + String.fromCharCode(b);
    else if (ESCAPES[b]) s += ESCAPES[b];
    else if (b >= PRINTABLE_MIN && b < PRINTABLE_END) s += String.fromCharCode(b);
    else s += "\\x" + b.toString(16).padStart(2, "0");
  }
  return s;
}

/** The inverse, as llama.cpp's `llama_unescape_rwkv_token` reads it (\t \n \r \xNN, \c -> c). */
export function unescapeRwkvToken(text: string, where = "token"): Uint8Array {
  const src = new TextEncoder().encode(text);
  const out: number[] = [];
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c !== BACKSLASH) { out.push(c); continue; }
    const e = src[++i];
    if (e === undefined) throw new FormatError(where, `dangling backslash in ${JSON.stringify(text)}`);
    const ch = String.fromCharCode(e);
    if (ch === "t") out.push(0x09);
    else if (ch === "n") out.push(0x0a);
    else if (ch === "r") out.push(0x0d);
    else if (ch === "x") {
      const hex = String.fromCharCode(src[i + 1] ?? 0, src[i + 2] ?? 0);
      if (!/^[0-9a-fA-F]{2}$/.test(hex)) throw new FormatError(where, `bad \\x escape in ${JSON.stringify(text)}`);
      out.push(parseInt(hex, 16));
      i += 2;
    } else out.push(e);
  }
  return Uint8Array.from(out);
}

export interface GgufVocab {
  /** tokenizer.ggml.model ("rwkv" for RWKV World and byte vocabularies). */
  readonly model: string;
  /** Bytes per id; undefined for control and unused ids (e.g. World's id 0 and padding). */
  readonly tokens: ReadonlyArray<Uint8Array | undefined>;
}

/** The tokenizer stored in a GGUF checkpoint, ready for `new WorldTokenizer(vocab.tokens)`; null if none. */
export function ggufVocab(ckpt: Checkpoint): GgufVocab | null {
  if (!isGgufCheckpoint(ckpt)) return null;
  const file = ckpt.gguf;
  const model = metaString(file, "tokenizer.ggml.model");
  const list = file.metadata.get("tokenizer.ggml.tokens");
  if (model === undefined || list?.type !== "array" || list.itemType !== "string") return null;
  const typesValue = file.metadata.get("tokenizer.ggml.token_type");
  const types = typesValue?.type === "array" && typesValue.itemType !== "string" && typesValue.itemType !== "array" && typesValue.itemType !== "bool"
    ? typesValue.value.map(Number) : [];
  const enc = new TextEncoder();
  const tokens = list.value.map((text, id) => {
    const t = types[id];
    if (t === TOKEN_TYPE.CONTROL || t === TOKEN_TYPE.UNUSED) return undefined;
    return model === "rwkv" ? unescapeRwkvToken(text, `${ckpt.source}: token ${id}`) : enc.encode(text);
  });
  return { model, tokens };
}

/** Tokenizer metadata for a World vocabulary (bytes per id, ids 1..65529), as llama.cpp's converter writes it. */
export function worldVocabMetadata(vocab: ReadonlyArray<Uint8Array | undefined>, vocabSize: number): Map<string, GgufValue> {
  if (vocab.length > vocabSize) throw new RwkvInputError("tokenizer", `the vocabulary has ${vocab.length} ids but the model only ${vocabSize}`);
  const tokens: string[] = [], types: number[] = [];
  for (let id = 0; id < vocabSize; id++) {
    const b = vocab[id];
    if (id === WORLD_BOS_EOS) { tokens.push("<s>"); types.push(TOKEN_TYPE.CONTROL); } else if (b === undefined) { tokens.push(`[PAD${id}]`); types.push(TOKEN_TYPE.UNUSED); } else { tokens.push(escapeRwkvToken(b)); types.push(TOKEN_TYPE.NORMAL); }
  }
  const m = vocabMetadata(tokens, types);
  m.set("tokenizer.ggml.bos_token_id", { type: "u32", value: WORLD_BOS_EOS });
  m.set("tokenizer.ggml.eos_token_id", { type: "u32", value: WORLD_BOS_EOS });
  m.set("tokenizer.ggml.eot_token_id", { type: "u32", value: WORLD_EOT });
  m.set("tokenizer.chat_template", { type: "string", value: WORLD_CHAT_TEMPLATE });
  return m;
}

/**
 * Tokenizer metadata for a byte-level model: id b < 256 is the byte b (what the rwkv.cpp tiny
 * models use); ids past 256 (e.g. the random golden models' 512) become unused "[PADi]" entries
 * so the token count matches the embedding rows, as llama.cpp requires.
 */
export function byteVocabMetadata(vocabSize: number): Map<string, GgufValue> {
  const tokens: string[] = [], types: number[] = [];
  for (let id = 0; id < vocabSize; id++) {
    if (id < 256) { tokens.push(escapeRwkvToken(Uint8Array.of(id))); types.push(TOKEN_TYPE.NORMAL); } else { tokens.push(`[PAD${id}]`); types.push(TOKEN_TYPE.UNUSED); }
  }
  return vocabMetadata(tokens, types);
}

function vocabMetadata(tokens: string[], types: number[]): Map<string, GgufValue> {
  return new Map<string, GgufValue>([
    ["tokenizer.ggml.model", { type: "string", value: "rwkv" }],
    ["tokenizer.ggml.tokens", { type: "array", itemType: "string", value: tokens }],
    ["tokenizer.ggml.token_type", { type: "array", itemType: "i32", value: types }],
  ]);
}

/** The tokenizer.* metadata of a GGUF checkpoint, to carry over when re-writing it. */
export function ggufTokenizerMetadata(ckpt: Checkpoint): Map<string, GgufValue> | null {
  if (!isGgufCheckpoint(ckpt)) return null;
  const m = new Map([...ckpt.gguf.metadata].filter(([k]) => k.startsWith("tokenizer.")));
  return m.has("tokenizer.ggml.tokens") ? m : null;
}

// ---------------------------------------------------------------- official checkpoint -> GGUF

export type GgufDType = "f32" | "f16" | "bf16" | QuantDType;

/** llama.cpp's general.file_type (llama_ftype) per output dtype. */
const FILE_TYPE: Readonly<Record<GgufDType, number>> = { f32: 0, f16: 1, q4_0: 2, q4_1: 3, q8_0: 7, q5_0: 8, q5_1: 9, bf16: 32 };
/** Kept F32 by convert_hf_to_gguf.py whatever the output type (small or precision-critical). */
const CONVERTER_F32 = /\.(time_mix_first|time_mix_w1|time_mix_w2|time_mix_decay_w1|time_mix_decay_w2|time_mix_lerp_fused)\.weight$/;
/** Never quantized by llama-quantize ("RWKV's small yet 2D weights"). */
const QUANTIZE_EXCLUDED = /\.time_mix_(first|[wavg][012]|decay_w[12]|lerp_fused)\.weight$/;

interface OutTensor {
  readonly name: string;
  readonly ne: readonly number[];
  readonly values: () => Float32Array;
}

export interface GgufWriteOptions {
  readonly dtype: GgufDType;
  /** tokenizer.* metadata (worldVocabMetadata, byteVocabMetadata or carried over from a GGUF). */
  readonly tokenizer: ReadonlyMap<string, GgufValue>;
  /** general.name, if wanted. */
  readonly name?: string;
  readonly quantize?: QuantizeOptions;
}

export interface GgufPlan {
  readonly architecture: string;
  /** Official tensors that llama.cpp's layout has no place for (e.g. a v6 `time_state`). */
  readonly dropped: readonly string[];
  readonly chunks: Iterable<Uint8Array>;
}

/** The ggml type a tensor gets in the output, following convert_hf_to_gguf.py and llama-quantize. */
export function ggufTypeFor(name: string, ne: readonly number[], dtype: GgufDType): GgufTensorType {
  const f32 = TYPE_BY_DTYPE.get("f32")!;
  if (dtype === "f32" || ne.filter((d) => d > 1).length <= 1 || CONVERTER_F32.test(name)) return f32;
  if (dtype === "f16" || dtype === "bf16") return TYPE_BY_DTYPE.get(dtype)!;
  if (QUANTIZE_EXCLUDED.test(name)) return f32;
  // llama-quantize gives the output matrix more bits (Q6_K); Q8_0 is the closest type we write.
  const q = name === "output.weight" ? "q8_0" : dtype;
  // A row that is not whole blocks cannot be quantized: llama-quantize falls back to F16.
  return ne[0] % QK === 0 ? TYPE_BY_DTYPE.get(q)! : TYPE_BY_DTYPE.get("f16")!;
}

function requireTensor(ckpt: Checkpoint, name: string): TensorEntry {
  const t = ckpt.tensors.get(name);
  if (!t) throw new RwkvInputError(ckpt.source, `missing tensor ${name} (needed for GGUF)`);
  return t;
}

/** Lays out an RWKV-6/7 checkpoint as llama.cpp expects it; values are computed lazily per tensor. */
export function ggufFromCheckpoint(ckpt: Checkpoint, version: Version, options: GgufWriteOptions): GgufPlan {
  if (version !== "6" && version !== "7") {
    throw new RwkvInputError(ckpt.source, `llama.cpp has no GGUF architecture for RWKV-${version} (only RWKV-6 "rwkv6" and RWKV-7 "rwkv7")`);
  }
  const arch = version === "6" ? "rwkv6" : "rwkv7";
  const get = (n: string) => requireTensor(ckpt, n);
  const emb = get("emb.weight");
  const [V, C] = emb.shape;
  let L = 0;
  for (const n of ckpt.tensors.keys()) { const m = /^blocks\.(\d+)\./.exec(n); if (m) L = Math.max(L, Number(m[1]) + 1); }
  const used = new Set<string>();
  const out: OutTensor[] = [];
  const take = (n: string) => { used.add(n); return get(n); };
  const plain = (gg: string, n: string) => { const t = take(n); out.push({ name: gg, ne: [...t.shape].reverse(), values: () => t.toFloat32() }); };
  const squeezed = (gg: string, n: string) => { const t = take(n); out.push({ name: gg, ne: [numel(t.shape)], values: () => t.toFloat32() }); };
  const transposedOut = (gg: string, n: string) => {
    const t = take(n);
    if (t.shape.length !== 2) throw new RwkvInputError(ckpt.source, `tensor ${n}: expected a matrix, got [${t.shape}]`);
    const [r, k] = t.shape; // official (r, k) -> torch (k, r) -> ne [r, k]
    out.push({ name: gg, ne: [r, k], values: () => transposeLast2(t.toFloat32(), 1, r, k) });
  };
  const stacked = (gg: string, names: readonly string[]) => {
    const parts = names.map(take);
    out.push({ name: gg, ne: [C, 1, 1, parts.length], values: () => {
      const v = new Float32Array(C * parts.length);
      parts.forEach((p, i) => v.set(p.toFloat32(), i * C));
      return v;
    } });
  };

  plain("token_embd.weight", "emb.weight");
  squeezed("token_embd_norm.weight", "blocks.0.ln0.weight");
  squeezed("token_embd_norm.bias", "blocks.0.ln0.bias");
  let headSize = 0, ffn = 0;
  const lora: Record<string, number> = {};
  for (let i = 0; i < L; i++) {
    const p = `blocks.${i}.`, g = `blk.${i}.`;
    for (const [ln, gg] of [["ln1", "attn_norm"], ["ln2", "attn_norm_2"], ["att.ln_x", "time_mix_ln"]]) {
      squeezed(`${g}${gg}.weight`, `${p}${ln}.weight`);
      squeezed(`${g}${gg}.bias`, `${p}${ln}.bias`);
    }
    for (const [gg, n] of Object.entries(LINEAR)) if (ckpt.tensors.has(p + n)) plain(`${g}${gg}.weight`, p + n);
    if (version === "6") {
      squeezed(`${g}time_mix_lerp_x.weight`, `${p}att.time_maa_x`);
      stacked(`${g}time_mix_lerp_fused.weight`, V6_FUSED.map((x) => `${p}att.time_maa_${x}`));
      transposedOut(`${g}time_mix_w1.weight`, `${p}att.time_maa_w1`);
      const w2 = take(`${p}att.time_maa_w2`);
      if (w2.shape.length !== 3) throw new RwkvInputError(ckpt.source, `tensor ${p}att.time_maa_w2: expected 3 dimensions, got [${w2.shape}]`);
      const [five, dm, c] = w2.shape; // (5, Dm, C) -> torch (5, C, Dm) -> ne [Dm, C, 5]
      out.push({ name: `${g}time_mix_w2.weight`, ne: [dm, c, five], values: () => transposeLast2(w2.toFloat32(), five, dm, c) });
      squeezed(`${g}time_mix_decay.weight`, `${p}att.time_decay`);
      transposedOut(`${g}time_mix_decay_w1.weight`, `${p}att.time_decay_w1`);
      transposedOut(`${g}time_mix_decay_w2.weight`, `${p}att.time_decay_w2`);
      plain(`${g}time_mix_first.weight`, `${p}att.time_faaaa`);
      squeezed(`${g}channel_mix_lerp_k.weight`, `${p}ffn.time_maa_k`);
      squeezed(`${g}channel_mix_lerp_r.weight`, `${p}ffn.time_maa_r`);
      headSize = get(`${p}att.time_faaaa`).shape[1];
      lora.mix = get(`${p}att.time_maa_w1`).shape[1] / V6_FUSED.length;
      lora.decay = get(`${p}att.time_decay_w1`).shape[1];
    } else {
      stacked(`${g}time_mix_lerp_fused.weight`, V7_FUSED.map((x) => `${p}att.x_${x}`));
      for (const m of ["w", "a", "v", "g"]) {
        // llama.cpp wants layer 0's (unused) v0/v1/v2 shaped like a0/a1/a2, and fills them so.
        const from = i === 0 && m === "v" ? "a" : m;
        if (m !== "g") squeezed(`${g}time_mix_${m}0.weight`, `${p}att.${from}0`);
        transposedOut(`${g}time_mix_${m}1.weight`, `${p}att.${from}1`);
        transposedOut(`${g}time_mix_${m}2.weight`, `${p}att.${from}2`);
        if (i > 0 || m !== "v") lora[m] = get(`${p}att.${m}1`).shape[1];
      }
      if (i === 0) for (const n of ["v0", "v1", "v2"]) used.add(`${p}att.${n}`);
      squeezed(`${g}time_mix_k_k.weight`, `${p}att.k_k`);
      squeezed(`${g}time_mix_k_a.weight`, `${p}att.k_a`);
      squeezed(`${g}time_mix_r_k.weight`, `${p}att.r_k`);
      squeezed(`${g}channel_mix_lerp_k.weight`, `${p}ffn.x_k`);
      headSize = get(`${p}att.r_k`).shape[1];
    }
    ffn = get(`${p}ffn.key.weight`).shape[0];
  }
  squeezed("output_norm.weight", "ln_out.weight");
  squeezed("output_norm.bias", "ln_out.bias");
  plain("output.weight", "head.weight");

  const kv = new Map<string, GgufValue>();
  const u32 = (k: string, value: number) => kv.set(k, { type: "u32", value });
  kv.set("general.architecture", { type: "string", value: arch });
  if (options.name !== undefined) kv.set("general.name", { type: "string", value: options.name });
  u32(`${arch}.context_length`, RWKV_CONTEXT_LENGTH);
  u32(`${arch}.embedding_length`, C);
  u32(`${arch}.block_count`, L);
  kv.set(`${arch}.attention.layer_norm_epsilon`, { type: "f32", value: LAYER_NORM_EPS });
  u32(`${arch}.wkv.head_size`, headSize);
  if (version === "6") {
    u32(`${arch}.rescale_every_n_layers`, 0); // weights are written unscaled
    u32(`${arch}.time_mix_extra_dim`, lora.mix);
    u32(`${arch}.time_decay_extra_dim`, lora.decay);
  } else {
    u32(`${arch}.attention.decay_lora_rank`, lora.w);
    u32(`${arch}.attention.iclr_lora_rank`, lora.a);
    // A one-layer model has no real v-LoRA; the placeholder then has the a-LoRA width.
    u32(`${arch}.attention.value_residual_mix_lora_rank`, lora.v ?? lora.a);
    u32(`${arch}.attention.gate_lora_rank`, lora.g);
  }
  u32(`${arch}.feed_forward_length`, ffn);
  u32("general.file_type", FILE_TYPE[options.dtype]);
  u32(`${arch}.attention.head_count`, 0); // required by llama.cpp's loader, unused by RWKV
  u32("general.quantization_version", GGML_QUANT_VERSION);
  const tokens = options.tokenizer.get("tokenizer.ggml.tokens");
  if (tokens?.type !== "array" || tokens.value.length !== V) {
    throw new RwkvInputError(ckpt.source, `the tokenizer has ${tokens?.type === "array" ? tokens.value.length : 0} tokens but the model's vocabulary is ${V} (llama.cpp requires them to match)`);
  }
  for (const [k, v] of options.tokenizer) kv.set(k, v);

  const dropped = [...ckpt.tensors.keys()].filter((n) => !used.has(n));
  return { architecture: arch, dropped, chunks: ggufChunks(kv, out, options) };
}

/** Serializes metadata and tensors (header first; then each tensor's data, padded to the alignment). */
function* ggufChunks(kv: ReadonlyMap<string, GgufValue>, tensors: readonly OutTensor[], options: GgufWriteOptions): Generator<Uint8Array> {
  const alignment = GGUF_DEFAULT_ALIGNMENT;
  const w = new GrowableWriter();
  w.u32(GGUF_MAGIC).u32(GGUF_VERSION).u64(tensors.length).u64(kv.size);
  for (const [k, v] of kv) { w.string(k).u32(VALUE_TYPE_ID.get(v.type)!); writeValue(w, v); }
  const types = tensors.map((t) => ggufTypeFor(t.name, t.ne, options.dtype));
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
    const data = t.dtype === "f32" ? toF32Bytes(values) : t.dtype === "f16" ? toF16Bytes(values) : t.dtype === "bf16" ? toBf16Bytes(values) : quantize(t.dtype as QuantDType, values, options.quantize);
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
