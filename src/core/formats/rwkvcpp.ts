import { type ByteSource, checkRange, rawAccess, Reader } from "../bytes.js";
import { FormatError } from "../errors.js";
import { detectFromNames } from "../model/versions.js";
import { numel, type TensorEntry } from "../tensor.js";
import { type Checkpoint, MAX_TENSOR_ELEMENTS } from "./checkpoint.js";
import { decodeValues, type FormatTable, rowForStored, ShapeProblem, storedGroup } from "./tensor-map.js";
import { GGML_TYPES, type GgmlType, ggmlBytes, ggmlToFloat32, isQuantized, OBSOLETE_GGML_TYPES, QK } from "./ggml-quants.js";

// rwkv.cpp .bin (shared/README "rwkv.cpp file format"): six u32 header fields, then records
// [dim_count, key_len, type, ne[dim_count], key, data] until EOF, all little-endian, no padding.

export const RWKVCPP_MAGIC = 0x67676d66; // "ggmf"
const HEADER_BYTES = 24;
const RECORD_PREFIX_BYTES = 12;
const MAX_DIMS = 3;
const MAX_KEY_BYTES = 1024;
/** Version 100 predates ggml's May 2023 quantization format change; its quantized blocks differ. */
const FILE_VERSIONS = [100, 101];
const QUANTIZED_MIN_VERSION = 101;

export interface RwkvCppHeader {
  readonly fileVersion: number;
  readonly nVocab: number;
  readonly nEmbed: number;
  readonly nLayer: number;
  /** The model's nominal ggml type (0 FP32, 1 FP16, 2 Q4_0...). */
  readonly dataType: number;
}

/** One tensor record exactly as stored (no transforms undone). */
export interface RwkvCppRecord {
  readonly name: string;
  readonly type: GgmlType;
  /** ggml order: ne[0] is contiguous. */
  readonly ne: readonly number[];
  /** PyTorch order of the stored data (ne reversed). */
  readonly shape: readonly number[];
  readonly dataOffset: number;
  readonly byteLength: number;
}

export function isRwkvCpp(head: Uint8Array): boolean {
  return head.length >= 4 && new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true) === RWKVCPP_MAGIC;
}

function typeName(id: number): string {
  return GGML_TYPES.get(id)?.name ?? OBSOLETE_GGML_TYPES.get(id) ?? `unknown type ${id}`;
}

/** The header and every record's name, type, dimensions and data range; reads no tensor data. */
export function readRwkvCppRecords(src: ByteSource): { header: RwkvCppHeader; records: RwkvCppRecord[] } {
  checkRange(src, 0, HEADER_BYTES, "rwkv.cpp header");
  const h = new Reader(src.name, src.read(0, HEADER_BYTES));
  const magic = h.u32();
  if (magic !== RWKVCPP_MAGIC) throw new FormatError(src.name, `bad magic 0x${magic.toString(16)} (rwkv.cpp files start with 0x${RWKVCPP_MAGIC.toString(16)})`);
  const header: RwkvCppHeader = { fileVersion: h.u32(), nVocab: h.u32(), nEmbed: h.u32(), nLayer: h.u32(), dataType: h.u32() };
  if (!FILE_VERSIONS.includes(header.fileVersion)) {
    throw new FormatError(src.name, `unsupported rwkv.cpp file version ${header.fileVersion} (expected ${FILE_VERSIONS.join(" or ")})`);
  }
  if (OBSOLETE_GGML_TYPES.has(header.dataType)) {
    throw new FormatError(src.name, `obsolete data type ${header.dataType} (${typeName(header.dataType)}) in the header; re-quantize the model with a current rwkv.cpp`);
  }

  const records: RwkvCppRecord[] = [];
  const seen = new Set<string>();
  let pos = HEADER_BYTES;
  while (pos < src.size) {
    checkRange(src, pos, RECORD_PREFIX_BYTES, `tensor record header at offset ${pos}`);
    const p = new Reader(src.name, src.read(pos, RECORD_PREFIX_BYTES));
    const dims = p.u32();
    const keyLen = p.u32();
    const typeId = p.u32();
    const at = `tensor record at offset ${pos}`;
    if (dims < 1 || dims > MAX_DIMS) throw new FormatError(src.name, `${at}: ${dims} dimensions (must be 1..${MAX_DIMS})`);
    if (keyLen < 1 || keyLen > MAX_KEY_BYTES) throw new FormatError(src.name, `${at}: name length ${keyLen} is absurd`);
    checkRange(src, pos + RECORD_PREFIX_BYTES, 4 * dims + keyLen, `${at} (dimensions and name)`);
    const r = new Reader(src.name, src.read(pos + RECORD_PREFIX_BYTES, 4 * dims + keyLen));
    const ne: number[] = [];
    for (let i = 0; i < dims; i++) ne.push(r.u32());
    let name: string;
    try {
      name = new TextDecoder("utf-8", { fatal: true }).decode(r.take(keyLen));
    } catch {
      throw new FormatError(src.name, `${at}: name is not valid UTF-8`);
    }
    const obsolete = OBSOLETE_GGML_TYPES.get(typeId);
    if (obsolete) throw new FormatError(src.name, `tensor ${name}: obsolete ggml type ${typeId} (${obsolete}); re-quantize the model with a current rwkv.cpp`);
    const type = GGML_TYPES.get(typeId);
    if (!type) throw new FormatError(src.name, `tensor ${name}: unknown ggml type ${typeId}`);
    if (isQuantized(type) && header.fileVersion < QUANTIZED_MIN_VERSION) {
      throw new FormatError(src.name, `tensor ${name}: quantized type ${type.name} needs file version ${QUANTIZED_MIN_VERSION}, this file is version ${header.fileVersion} (old quantization format)`);
    }
    if (ne.some((d) => d < 1)) throw new FormatError(src.name, `tensor ${name}: invalid dimensions [${ne}]`);
    const count = numel(ne);
    if (count > MAX_TENSOR_ELEMENTS) throw new FormatError(src.name, `tensor ${name}: absurd dimensions [${ne}]`);
    if (ne[0] % type.blockElements) {
      throw new FormatError(src.name, `tensor ${name}: ${type.name} needs ne[0] to be a multiple of ${QK}, got ${ne[0]}`);
    }
    if (seen.has(name)) throw new FormatError(src.name, `tensor ${name} appears twice`);
    seen.add(name);
    const dataOffset = pos + RECORD_PREFIX_BYTES + 4 * dims + keyLen;
    const byteLength = ggmlBytes(type, count);
    checkRange(src, dataOffset, byteLength, `tensor ${name} data`);
    records.push({ name, type, ne, shape: [...ne].reverse(), dataOffset, byteLength });
    pos = dataOffset + byteLength;
  }
  return { header, records };
}

/** A record's stored values as f32 (dequantized), in its stored PyTorch-order layout. */
export function decodeRecord(src: ByteSource, rec: RwkvCppRecord): Float32Array {
  return ggmlToFloat32(rec.type, src.read(rec.dataOffset, rec.byteLength), numel(rec.ne));
}

/**
 * Reads an rwkv.cpp file as a checkpoint in the official RWKV-LM names and shapes: the
 * converter's transforms (decay re-parameterisations, transposes, the v7 x_rwkvag concatenation,
 * squeezed (1,1,C) vectors), listed in each version's rwkv.cpp table (model/vN/formats.ts), are
 * undone in toFloat32(), in float64 before rounding to f32. Quantized tensors keep their stored
 * dtype and are dequantized on read.
 */
export function readRwkvCpp(src: ByteSource): Checkpoint {
  const { header, records } = readRwkvCppRecords(src);
  const names = new Set(records.map((r) => r.name));
  const module = detectFromNames((n) => names.has(n), src.name);
  const table = module.rwkvcpp;
  const tensors = new Map<string, TensorEntry>();
  const add = (e: TensorEntry) => {
    if (tensors.has(e.name)) throw new FormatError(src.name, `tensor ${e.name} appears twice`);
    tensors.set(e.name, e);
  };
  for (const rec of records) for (const e of officialEntries(src, rec, table)) add(e);
  const metadata: Record<string, string> = {
    file_version: String(header.fileVersion),
    n_vocab: String(header.nVocab),
    n_embed: String(header.nEmbed),
    n_layer: String(header.nLayer),
    data_type: String(header.dataType),
    data_type_name: typeName(header.dataType),
    version: module.id,
  };
  return { format: "rwkv.cpp", source: src.name, tensors, metadata, ...(table.numerics ? { numerics: table.numerics } : {}) };
}

/** The official tensor(s) one stored record stands for. */
function officialEntries(src: ByteSource, rec: RwkvCppRecord, table: FormatTable): TensorEntry[] {
  const raw = () => decodeRecord(src, rec);
  const { name, shape } = rec;
  const entry = (official: string, s: readonly number[], values: () => Float32Array): TensorEntry => ({ name: official, dtype: rec.type.dtype, shape: s, toFloat32: values });
  const bad = (problem: string): never => { throw new FormatError(src.name, `tensor ${name}: ${problem}`); };
  const group = storedGroup(table, name);
  if (group) {
    const { parts } = group.group;
    const c = shape[shape.length - 1];
    if (numel(shape) !== parts.length * c) bad(`expected ${parts.length} x C values, stored shape is [${shape}]`);
    return parts.map((part, i) => entry(group.prefix + part, [1, 1, c], () => raw().slice(i * c, (i + 1) * c)));
  }
  const { row, name: official } = rowForStored(table, name);
  let officialShape: readonly number[] = shape;
  try {
    officialShape = row.toOfficial(shape);
  } catch (e) {
    if (e instanceof ShapeProblem) bad(e.message);
    throw e;
  }
  if (!row.layout && !row.values && officialShape.join() === shape.join()) {
    // The stored bytes are the official tensor as is.
    return [{ ...entry(official, shape, raw), ...rawAccess(src, rec.dataOffset, rec.byteLength) }];
  }
  return [entry(official, officialShape, () => decodeValues(row, raw(), shape))];
}
