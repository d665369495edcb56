import type { ByteSource } from "../bytes.js";
import { RwkvInputError } from "../errors.js";
import type { Version } from "../model/model.js";
import { checkpointShapes } from "../model/shapes.js";
import { versionModule } from "../model/versions.js";
import { numel } from "../tensor.js";
import type { Checkpoint } from "./checkpoint.js";
import { QK } from "./ggml-quants.js";
import { type QuantDType, quantize, type QuantizeOptions, toF16Bytes, toF32Bytes } from "./quantize.js";
import { decodeRecord, readRwkvCppRecords, RWKVCPP_MAGIC } from "./rwkvcpp.js";
import { encodeValues, groupOf, rowFor, ShapeProblem } from "./tensor-map.js";

/*
 * rwkv.cpp .bin writer (format: shared/README "rwkv.cpp file format"). Two sources of records:
 *  - an official checkpoint: the converter's transforms (convert_pytorch_to_ggml.py) are applied,
 *    i.e. the inverse of what rwkvcpp.ts undoes;
 *  - an rwkv.cpp file: its records pass through untouched, so re-typing or quantizing an rwkv.cpp
 *    file never round-trips values through log/exp (which is not bit-exact in f32).
 * The output types follow rwkv.cpp: its converter's FP16 rule and its quantizer's rule.
 */

export type RwkvCppDType = "f32" | "f16" | QuantDType;

/** A record in stored form: ggml dimension order (ne[0] contiguous) and transformed values. */
export interface StoredRecord {
  readonly name: string;
  readonly ne: readonly number[];
  /** The type the source holds it in: a quantizer keeps non-quantized tensors in this type. */
  readonly sourceType: "f32" | "f16";
  values(): Float32Array;
}

export interface RwkvCppModel {
  readonly nVocab: number;
  readonly nEmbed: number;
  readonly nLayer: number;
  readonly records: readonly StoredRecord[];
  /** The source's file version (rwkv.cpp inputs), kept for unquantized output. */
  readonly fileVersion?: number;
}

export const RWKVCPP_FILE_VERSION = 101;
/** rwkv.cpp's own type ids (not ggml's: 4..6 are obsolete Q4 variants). */
export const RWKVCPP_TYPE_IDS: Readonly<Record<RwkvCppDType, number>> = { f32: 0, f16: 1, q4_0: 2, q4_1: 3, q5_0: 7, q5_1: 8, q8_0: 9 };

/** Substrings that keep a tensor FP32 in rwkv.cpp's FP16 files (shared/README). */
const FP16_KEEPS_F32 = [".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0"];
/** Never quantized by rwkv.cpp: embedding and head (perplexity), v7 LoRA factors and r_k. */
const NEVER_QUANTIZED = /^(emb\.weight|head\.weight)$|\.att\.([wavg][12]|r_k)$/;
const HEADER_FIELDS = 6;
const U32 = 4;

/** The type a record is written in for a target dtype. */
export function storedTypeFor(rec: Pick<StoredRecord, "name" | "ne" | "sourceType">, dtype: RwkvCppDType): RwkvCppDType {
  if (dtype === "f32") return "f32";
  if (dtype === "f16") {
    return rec.ne.length >= 2 && !FP16_KEEPS_F32.some((s) => rec.name.includes(s)) ? "f16" : "f32";
  }
  // rwkv.cpp's quantizer: 2-D tensors except the ones above. ggml needs whole blocks along ne[0];
  // rwkv.cpp would abort on a ragged row, we keep the source type instead.
  if (rec.ne.length === 2 && !NEVER_QUANTIZED.test(rec.name) && rec.ne[0] % QK === 0) return dtype;
  return rec.sourceType;
}

function encode(type: RwkvCppDType, values: Float32Array, options: QuantizeOptions): Uint8Array {
  if (type === "f32") return toF32Bytes(values);
  if (type === "f16") return toF16Bytes(values);
  return quantize(type, values, options);
}

/** The file as chunks (header, then per record its prefix and its data), built one record at a time. */
export function* rwkvCppChunks(model: RwkvCppModel, dtype: RwkvCppDType, options: QuantizeOptions = {}): Generator<Uint8Array> {
  const quantized = dtype !== "f32" && dtype !== "f16";
  const version = quantized ? RWKVCPP_FILE_VERSION : (model.fileVersion ?? RWKVCPP_FILE_VERSION);
  const header = new Uint32Array([RWKVCPP_MAGIC, version, model.nVocab, model.nEmbed, model.nLayer, RWKVCPP_TYPE_IDS[dtype]]);
  if (header.length !== HEADER_FIELDS) throw new Error("rwkv.cpp header layout");
  yield new Uint8Array(header.buffer);
  const enc = new TextEncoder();
  for (const rec of model.records) {
    const type = storedTypeFor(rec, dtype);
    const key = enc.encode(rec.name);
    const prefix = new Uint8Array(U32 * (3 + rec.ne.length) + key.length);
    const dv = new DataView(prefix.buffer);
    dv.setUint32(0, rec.ne.length, true);
    dv.setUint32(U32, key.length, true);
    dv.setUint32(2 * U32, RWKVCPP_TYPE_IDS[type], true);
    rec.ne.forEach((d, i) => dv.setUint32(U32 * (3 + i), d, true));
    prefix.set(key, U32 * (3 + rec.ne.length));
    yield prefix;
    yield encode(type, rec.values(), options);
  }
}

/** The records of an rwkv.cpp file as stored (quantized ones dequantized, counting as f32 sources). */
export function rwkvCppModelFromFile(src: ByteSource): RwkvCppModel {
  const { header, records } = readRwkvCppRecords(src);
  return {
    nVocab: header.nVocab, nEmbed: header.nEmbed, nLayer: header.nLayer, fileVersion: header.fileVersion,
    records: records.map((r) => ({
      name: r.name, ne: r.ne, sourceType: r.type.dtype === "f16" ? "f16" : "f32",
      values: () => decodeRecord(src, r),
    })),
  };
}

/**
 * An official checkpoint in rwkv.cpp's stored form (what convert_pytorch_to_ggml.py writes), by
 * the version's rwkv.cpp table (model/vN/formats.ts): `.time_*` squeezed, decays
 * re-parameterised, v6/v7 matrices transposed, v7 lerps concatenated. Values are computed in
 * float64 and rounded once to f32.
 */
export function rwkvCppModelFromCheckpoint(ckpt: Checkpoint, version: Version): RwkvCppModel {
  const emb = ckpt.tensors.get("emb.weight");
  if (!emb || emb.shape.length !== 2) throw new RwkvInputError(ckpt.source, "missing or malformed emb.weight");
  const module = versionModule(version);
  const table = module.rwkvcpp;
  const cfg = module.inferConfig(checkpointShapes(ckpt));
  const records: StoredRecord[] = [];
  for (const [name, t] of ckpt.tensors) {
    const group = groupOf(table, name);
    if (group) {
      if (group.index > 0) continue; // written with the first part as one record
      const parts = group.group.parts.map((p) => {
        const e = ckpt.tensors.get(group.prefix + p);
        if (!e) throw new RwkvInputError(ckpt.source, `missing tensor ${group.prefix + p}`);
        return e;
      });
      const c = numel(t.shape);
      records.push({
        name: group.prefix + group.group.stored, ne: [...group.group.storedShape(c)].reverse(), sourceType: "f32",
        values: () => { const out = new Float32Array(c * parts.length); parts.forEach((e, i) => out.set(e.toFloat32(), i * c)); return out; },
      });
      continue;
    }
    const row = rowFor(table, name);
    let stored: readonly number[];
    try {
      stored = row.toStored(t.shape, cfg);
    } catch (e) {
      if (e instanceof ShapeProblem) throw new RwkvInputError(ckpt.source, `tensor ${name}: ${e.message}`);
      throw e;
    }
    records.push({ name: row.storedName?.(name) ?? name, ne: [...stored].reverse(), sourceType: "f32", values: () => encodeValues(row, t.toFloat32(), t.shape) });
  }
  return { nVocab: emb.shape[0], nEmbed: emb.shape[1], nLayer: cfg.nLayer, records };
}
