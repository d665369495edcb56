import { readFileSync, realpathSync } from "node:fs";
import { basename, extname, resolve } from "node:path";
import type { Checkpoint } from "../../core/formats/checkpoint.js";
import type { GgufValue } from "../../core/formats/gguf.js";
import { ggufFromCheckpoint } from "../../core/formats/gguf-rwkv.js";
import { byteVocabMetadata, ggufTokenizerMetadata, worldVocabMetadata } from "../../core/formats/gguf-vocab.js";
import { openCheckpoint } from "../../core/formats/open.js";
import { type PthDType, pthChunks } from "../../core/formats/pth-writer.js";
import { toBf16Bytes, toF16Bytes, toF32Bytes } from "../../core/formats/quantize.js";
import { rwkvCppChunks, rwkvCppModelFromCheckpoint, rwkvCppModelFromFile } from "../../core/formats/rwkvcpp-writer.js";
import { detectVersion } from "../../core/model/detect.js";
import { numel } from "../../core/tensor.js";
import { parseWorldVocab, WORLD_VOCAB_SIZE } from "../../core/tokenizer/world.js";
import { checkWritableTarget, writeFileAtomic } from "../atomic-write.js";
import { type CliIO, parse, str, UsageError } from "../cli-util.js";
import { FileSource } from "../file-source.js";
import { findTokenizerFile } from "../tokenizer.js";
import type { CliConfig } from "../model-arg.js";
import { resolveModelArg } from "../pull/home.js";

export const CONVERT_USAGE = `convert IN OUT [--dtype T] [--format F]   re-save any model in another format or precision
      --dtype f32|f16|bf16|q8_0|q5_1|q5_0|q4_1|q4_0 (f32)   quantized types: rwkv.cpp .bin and .gguf only
      --format pth|safetensors|rwkv.cpp|gguf   default: from OUT's extension (.pth .safetensors .bin .gguf)
      --tokenizer PATH      World vocabulary written into a GGUF (default: beside IN)
      --fma                 quantize like a ggml build compiled with fused multiply-add`;

export const OUTPUT_FORMATS = ["pth", "safetensors", "rwkv.cpp", "gguf"] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];
export const CONVERT_DTYPES = ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] as const;
export type ConvertDType = (typeof CONVERT_DTYPES)[number];

const EXTENSIONS: Readonly<Record<string, OutputFormat>> = { ".pth": "pth", ".pt": "pth", ".safetensors": "safetensors", ".bin": "rwkv.cpp", ".gguf": "gguf" };
const FLOAT_DTYPES: readonly ConvertDType[] = ["f32", "f16", "bf16"];
const SAFETENSORS_ALIGN = 8;
const ST_DTYPE: Record<PthDType, string> = { f32: "F32", f16: "F16", bf16: "BF16" };

export interface ConvertOptions {
  readonly dtype: ConvertDType;
  readonly format: OutputFormat;
  /** World vocabulary file for GGUF output of a 65536-token model. */
  readonly tokenizerPath?: string;
  readonly fusedMultiplyAdd?: boolean;
  /** Changes the checkpoint before it is written (rwkv merge applies adapters here). */
  readonly transform?: (ckpt: Checkpoint) => Checkpoint;
  /** Where notes (dropped tensors, byte vocabularies) go. */
  readonly note?: (text: string) => void;
}

export interface ConvertResult {
  readonly path: string;
  readonly bytes: number;
  readonly format: OutputFormat;
  readonly dtype: ConvertDType;
}

/** The output format of OUT: --format if given, else from the extension. */
export function outputFormat(out: string, flag: string | undefined): OutputFormat {
  if (flag !== undefined) {
    if (!(OUTPUT_FORMATS as readonly string[]).includes(flag)) throw new UsageError(`--format must be one of ${OUTPUT_FORMATS.join(", ")}, got "${flag}"`);
    return flag as OutputFormat;
  }
  const f = EXTENSIONS[extname(out).toLowerCase()];
  if (!f) throw new UsageError(`cannot tell the output format from "${out}": use a .pth, .safetensors, .bin or .gguf name, or --format`);
  return f;
}

/** Rejects dtype/format pairs the target format cannot hold. */
export function checkCombination(format: OutputFormat, dtype: ConvertDType): void {
  if ((format === "pth" || format === "safetensors") && !FLOAT_DTYPES.includes(dtype)) {
    throw new UsageError(`--dtype ${dtype} cannot be written as ${format}: it stores plain f32/f16/bf16 tensors (quantized types need an rwkv.cpp .bin or a .gguf output)`);
  }
  if (format === "rwkv.cpp" && dtype === "bf16") throw new UsageError("--dtype bf16 cannot be written as rwkv.cpp: its files have no bf16 type (use f16 or f32)");
}

function floatBytes(values: Float32Array, dtype: PthDType): Uint8Array {
  return dtype === "f32" ? toF32Bytes(values) : dtype === "f16" ? toF16Bytes(values) : toBf16Bytes(values);
}

/** safetensors as a stream: the header is computed from shapes alone, then tensors one at a time. */
function* safetensorsChunks(ckpt: Checkpoint, dtype: PthDType): Generator<Uint8Array> {
  const item = dtype === "f32" ? 4 : 2;
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of ckpt.tensors.values()) {
    const n = numel(t.shape) * item;
    header[t.name] = { dtype: ST_DTYPE[dtype], shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  // Space padding so tensor data starts 8-byte aligned, as the reference writer does.
  json += " ".repeat((SAFETENSORS_ALIGN - ((SAFETENSORS_ALIGN + new TextEncoder().encode(json).length) % SAFETENSORS_ALIGN)) % SAFETENSORS_ALIGN);
  const hb = new TextEncoder().encode(json);
  const prefix = new Uint8Array(SAFETENSORS_ALIGN + hb.length);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(hb.length), true);
  prefix.set(hb, SAFETENSORS_ALIGN);
  yield prefix;
  for (const t of ckpt.tensors.values()) yield floatBytes(t.toFloat32(), dtype);
}

/** GGUF tokenizer: the input GGUF's own, else World (65536) from a vocab file, else byte-level. */
function ggufTokenizer(ckpt: Checkpoint, modelPath: string, options: ConvertOptions): ReadonlyMap<string, GgufValue> {
  const own = ggufTokenizerMetadata(ckpt);
  if (own) return own;
  const V = ckpt.tensors.get("emb.weight")?.shape[0] ?? 0;
  if (V === WORLD_VOCAB_SIZE) {
    const file = findTokenizerFile("world", { path: options.tokenizerPath, modelPath });
    return worldVocabMetadata(parseWorldVocab(readFileSync(file!, "utf8"), file!), V);
  }
  if (options.tokenizerPath !== undefined) throw new UsageError(`--tokenizer: a World vocabulary has ${WORLD_VOCAB_SIZE} tokens but the model has ${V}`);
  options.note?.(`note: vocabulary of ${V} is not World's ${WORLD_VOCAB_SIZE}: writing a byte-level vocabulary (id b < 256 = byte b${V > 256 ? `, ids 256..${V - 1} unused` : ""})\n`);
  return byteVocabMetadata(V);
}

/** Converts IN to OUT (any readable format to any writable one); the output appears atomically. */
export async function convertModel(input: string, output: string, options: ConvertOptions): Promise<ConvertResult> {
  checkCombination(options.format, options.dtype);
  let sameFile = false;
  try { sameFile = realpathSync(input) === realpathSync(output); } catch { /* output does not exist yet */ }
  if (sameFile || resolve(input) === resolve(output)) throw new UsageError("the output would overwrite the input; choose another OUT");
  checkWritableTarget(output); // before reading a possibly huge input
  const src = new FileSource(input);
  try {
    const opened = openCheckpoint(src);
    const ckpt = options.transform ? options.transform(opened) : opened;
    const { dtype, format } = options;
    let chunks: Iterable<Uint8Array>;
    switch (format) {
      case "pth": {
        const d = dtype as PthDType;
        const tensors = [...ckpt.tensors.values()].map((t) => ({ name: t.name, shape: t.shape, dtype: d, data: () => floatBytes(t.toFloat32(), d) }));
        chunks = pthChunks(tensors, { archiveName: basename(output, extname(output)) || "archive" });
        break;
      }
      case "safetensors":
        chunks = safetensorsChunks(ckpt, dtype as PthDType);
        break;
      case "rwkv.cpp": {
        // An rwkv.cpp input passes through record by record: no log/exp round trip of its decays.
        const model = ckpt.format === "rwkv.cpp" && !options.transform ? rwkvCppModelFromFile(src) : rwkvCppModelFromCheckpoint(ckpt, detectVersion(ckpt));
        chunks = rwkvCppChunks(model, dtype as Exclude<ConvertDType, "bf16">, { fusedMultiplyAdd: options.fusedMultiplyAdd });
        break;
      }
      case "gguf": {
        const plan = ggufFromCheckpoint(ckpt, detectVersion(ckpt), {
          dtype, tokenizer: ggufTokenizer(ckpt, input, options), quantize: { fusedMultiplyAdd: options.fusedMultiplyAdd },
        });
        if (plan.dropped.length) options.note?.(`note: llama.cpp's ${plan.architecture} layout has no place for ${plan.dropped.join(", ")}; not written\n`);
        chunks = plan.chunks;
        break;
      }
    }
    const { bytes } = await writeFileAtomic(output, chunks);
    return { path: output, bytes, format, dtype };
  } finally {
    src.close();
  }
}

export async function convertCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, {
    dtype: { type: "string" }, format: { type: "string" }, tokenizer: { type: "string" }, fma: { type: "boolean" },
  }, ["IN", "OUT"]);
  const [modelArg, output] = positionals;
  const input = resolveModelArg(modelArg, config.home);
  const dtypeText = str(values, "dtype") ?? "f32";
  if (!(CONVERT_DTYPES as readonly string[]).includes(dtypeText)) throw new UsageError(`--dtype must be one of ${CONVERT_DTYPES.join(", ")}, got "${dtypeText}"`);
  const format = outputFormat(output, str(values, "format"));
  const r = await convertModel(input, output, {
    dtype: dtypeText as ConvertDType, format, tokenizerPath: str(values, "tokenizer"), fusedMultiplyAdd: values.fma === true,
    note: (t) => io.stderr(t),
  });
  io.stdout(`wrote ${r.path} (${r.format}, ${r.dtype}, ${r.bytes.toLocaleString("en-US")} bytes)\n`);
  return 0;
}
