import type { ByteSource } from "../bytes.js";
import { RwkvInputError } from "../errors.js";
import type { Version } from "../model/model.js";
import { numel, transposeLast2 } from "../tensor.js";
import type { Checkpoint } from "./checkpoint.js";
import { QK } from "./ggml-quants.js";
import { type QuantDType, quantize, type QuantizeOptions, toF16Bytes, toF32Bytes } from "./quantize.js";
import { decodeRecord, readRwkvCppRecords, RWKVCPP_MAGIC } from "./rwkvcpp.js";

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
const V7_TRANSPOSED = /\.att\.[wavg][12]$/;
const X_RWKVAG_PARTS = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"];
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

/** Versions stored in RWKV-7's rwkv.cpp layout. */
const V7_LAYOUT: ReadonlySet<Version> = new Set<Version>(["7", "7a", "7b", "8", "8-hybrid"]);

/**
 * An official checkpoint in rwkv.cpp's stored form (what convert_pytorch_to_ggml.py writes):
 * `.time_*` squeezed, decays re-parameterised, v6/v7 matrices transposed, v7 lerps concatenated.
 * Values are computed in float64 and rounded once to f32.
 */
export function rwkvCppModelFromCheckpoint(ckpt: Checkpoint, detected: Version): RwkvCppModel {
  // The generations after RWKV-7 keep its layout and add tensors stored as is: written (and read
  // back, by readRwkvCpp's detection from att.r_k) with RWKV-7's transforms.
  const version: Version = V7_LAYOUT.has(detected) ? "7" : detected;
  const emb = ckpt.tensors.get("emb.weight");
  if (!emb || emb.shape.length !== 2) throw new RwkvInputError(ckpt.source, "missing or malformed emb.weight");
  let nLayer = 0;
  for (const name of ckpt.tensors.keys()) {
    const m = /^blocks\.(\d+)\./.exec(name);
    if (m) nLayer = Math.max(nLayer, Number(m[1]) + 1);
  }
  const nHead = version === "6" ? ckpt.tensors.get("blocks.0.att.time_faaaa")?.shape[0] : undefined;
  const records: StoredRecord[] = [];
  for (const [name, t] of ckpt.tensors) {
    const shape = t.shape;
    const raw = () => t.toFloat32();
    const add = (s: readonly number[], values: () => Float32Array) =>
      records.push({ name, ne: [...s].reverse(), sourceType: "f32", values });
    if (version === "7") {
      const part = X_RWKVAG_PARTS.findIndex((p) => name.endsWith(`.att.${p}`));
      if (part > 0) continue; // written with x_r as one concatenated record
      if (part === 0) {
        const prefix = name.slice(0, -"x_r".length);
        const parts = X_RWKVAG_PARTS.map((p) => {
          const e = ckpt.tensors.get(prefix + p);
          if (!e) throw new RwkvInputError(ckpt.source, `missing tensor ${prefix + p}`);
          return e;
        });
        const c = numel(shape);
        records.push({
          name: prefix + "x_rwkvag", ne: [c, 1, X_RWKVAG_PARTS.length], sourceType: "f32",
          values: () => { const out = new Float32Array(c * parts.length); parts.forEach((e, i) => out.set(e.toFloat32(), i * c)); return out; },
        });
        continue;
      }
      if (V7_TRANSPOSED.test(name)) { add(transposedShape(ckpt, name, shape), () => transpose2(raw(), shape)); continue; }
      add(shape, raw);
      continue;
    }
    // v4-v6: the converter squeezes every `.time_*` tensor first.
    const s = name.includes(".time_") ? shape.filter((d) => d !== 1) : shape;
    if (version === "6") {
      if (/\.(time_maa_w1|time_decay_w1|time_decay_w2)$/.test(name)) { add(transposedShape(ckpt, name, s), () => transpose2(raw(), s)); continue; }
      if (name.endsWith(".time_maa_w2")) {
        if (s.length !== 3) throw new RwkvInputError(ckpt.source, `tensor ${name}: expected 3 dimensions, got [${shape}]`);
        add([s[0], s[2], s[1]], () => transposeLast2(raw(), s[0], s[1], s[2]));
        continue;
      }
      if (name.endsWith(".time_decay") && nHead) { add([nHead, numel(s) / nHead, 1], raw); continue; }
      if (name.endsWith(".time_faaaa")) { add([...s, 1], raw); continue; }
      add(s, raw);
      continue;
    }
    if (version === "5.2" || version === "5.1") {
      if (name.endsWith(".time_decay")) {
        const f = (w: number) => Math.exp(-Math.exp(w));
        add(version === "5.2" ? [...s, 1] : [numel(s), 1, 1], mapped(raw, f));
        continue;
      }
      if (name.endsWith(".time_first")) { add([numel(s), 1, 1], mapped(raw, Math.exp)); continue; }
      if (name.endsWith(".time_faaaa")) { add([...s, 1], raw); continue; }
      add(s, raw);
      continue;
    }
    if (name.endsWith(".time_decay")) { add(s, mapped(raw, (w) => -Math.exp(w))); continue; }
    add(s, raw);
  }
  return { nVocab: emb.shape[0], nEmbed: emb.shape[1], nLayer, records };
}

function transposedShape(ckpt: Checkpoint, name: string, s: readonly number[]): number[] {
  if (s.length !== 2) throw new RwkvInputError(ckpt.source, `tensor ${name}: expected a matrix, got [${s}]`);
  return [s[1], s[0]];
}

function mapped(raw: () => Float32Array, f: (x: number) => number): () => Float32Array {
  return () => {
    const v = raw();
    for (let i = 0; i < v.length; i++) v[i] = f(v[i]);
    return v;
  };
}

function transpose2(m: Float32Array, s: readonly number[]): Float32Array {
  return transposeLast2(m, 1, s[0], s[1]);
}
