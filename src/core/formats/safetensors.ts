import { type ByteSource, checkRange, rawAccess, Reader } from "../bytes.js";
import { FormatError } from "../errors.js";
import { decodeFloats, DTYPE_BYTES, type DType, numel, type TensorEntry } from "../tensor.js";
import { type Checkpoint, MAX_TENSOR_ELEMENTS } from "./checkpoint.js";

// https://github.com/huggingface/safetensors: u64 header length, JSON header, then raw data.
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const ST_DTYPES: Record<string, "f32" | "f16" | "bf16" | "f64"> = { F32: "f32", F16: "f16", BF16: "bf16", F64: "f64" };

export function isSafetensors(head: Uint8Array): boolean {
  // u64 header size followed by '{'
  return head.length >= 9 && head[8] === 0x7b && head[5] === 0 && head[6] === 0 && head[7] === 0;
}

export function readSafetensors(src: ByteSource): Checkpoint {
  checkRange(src, 0, 8, "safetensors header length");
  const headerLen = new Reader(src.name, src.read(0, 8)).u64("header length");
  if (headerLen > MAX_HEADER_BYTES) throw new FormatError(src.name, `safetensors header length ${headerLen} is absurd`);
  checkRange(src, 8, headerLen, "safetensors header");
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(src.read(8, headerLen)));
  } catch (e) {
    throw new FormatError(src.name, `safetensors header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new FormatError(src.name, "safetensors header is not a JSON object");
  }
  const dataStart = 8 + headerLen;
  const tensors = new Map<string, TensorEntry>();
  const ranges: Array<{ name: string; begin: number; end: number }> = [];
  let metadata: Record<string, string> = {};
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = Object.fromEntries(Object.entries((info ?? {}) as Record<string, unknown>).map(([k, v]) => [k, String(v)]));
      continue;
    }
    const t = info as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = ST_DTYPES[String(t.dtype)];
    if (!dtype) throw new FormatError(src.name, `tensor ${name}: unsupported safetensors dtype ${String(t.dtype)}`);
    const shape = t.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new FormatError(src.name, `tensor ${name}: invalid shape ${JSON.stringify(shape)}`);
    }
    const count = numel(shape);
    if (count > MAX_TENSOR_ELEMENTS) throw new FormatError(src.name, `tensor ${name}: absurd shape ${JSON.stringify(shape)}`);
    const offs = t.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      throw new FormatError(src.name, `tensor ${name}: invalid data_offsets ${JSON.stringify(offs)}`);
    }
    const [begin, end] = offs as number[];
    if (end - begin !== count * DTYPE_BYTES[dtype]) {
      throw new FormatError(src.name, `tensor ${name}: data_offsets cover ${end - begin} bytes but shape ${JSON.stringify(shape)} ${dtype} needs ${count * DTYPE_BYTES[dtype]}`);
    }
    if (dataStart + end > src.size) {
      throw new FormatError(src.name, `tensor ${name}: data_offsets point past the end of the file (needs ${dataStart + end} bytes, file has ${src.size})`);
    }
    ranges.push({ name, begin, end });
    tensors.set(name, {
      name, dtype: dtype as DType, shape: shape as number[],
      toFloat32: () => decodeFloats(src.read(dataStart + begin, end - begin), dtype, count),
      ...rawAccess(src, dataStart + begin, end - begin),
    });
  }
  checkCoverage(src.name, ranges, src.size - dataStart);
  return { format: "safetensors", source: src.name, tensors, metadata };
}

/**
 * The format requires the tensors' byte ranges to tile the data section exactly, in any order, as
 * the reference implementation checks: an overlap means shared or shifted bytes, a gap or a tail
 * means a header whose length or offsets are off (a header one byte short reads every tensor one
 * byte off).
 */
function checkCoverage(file: string, ranges: Array<{ name: string; begin: number; end: number }>, dataBytes: number): void {
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  let prev = "the start of the data section";
  for (const r of ranges) {
    if (r.begin < at) throw new FormatError(file, `tensor ${r.name}: data_offsets [${r.begin}, ${r.end}] overlap ${prev}`);
    if (r.begin > at) throw new FormatError(file, `tensor ${r.name}: data_offsets [${r.begin}, ${r.end}] leave a gap of ${r.begin - at} bytes after ${prev}`);
    at = r.end;
    prev = `tensor ${r.name}`;
  }
  if (at !== dataBytes) {
    throw new FormatError(file, `the data section holds ${dataBytes} bytes but the tensors cover ${at} (header length or data_offsets are wrong, or the file is truncated or has trailing bytes)`);
  }
}

export interface TensorToWrite {
  readonly name: string;
  readonly dtype: "f32" | "f16" | "bf16";
  readonly shape: readonly number[];
  /** Raw little-endian bytes of that dtype. */
  readonly data: Uint8Array;
}

/** Serialize to safetensors bytes as chunks (header, then each tensor) so callers can stream them to disk. */
export function writeSafetensors(tensors: readonly TensorToWrite[], metadata: Record<string, string> = {}): Uint8Array[] {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype.toUpperCase(), shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so tensor data starts 8-byte aligned (as the reference writer does).
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  const hb = new TextEncoder().encode(json);
  const prefix = new Uint8Array(8 + hb.length);
  new DataView(prefix.buffer).setUint32(0, hb.length, true);
  prefix.set(hb, 8);
  return [prefix, ...tensors.map((t) => t.data)];
}
