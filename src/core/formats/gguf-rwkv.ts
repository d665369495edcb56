import { type ByteSource, rawAccess } from "../bytes.js";
import { FormatError, RwkvInputError } from "../errors.js";
import type { ModelConfig } from "../model/model.js";
import { checkpointShapes } from "../model/shapes.js";
import { VERSIONS, versionModule } from "../model/versions.js";
import { numel, type TensorEntry } from "../tensor.js";
import type { Checkpoint } from "./checkpoint.js";
import { QK } from "./ggml-quants.js";
import {
  decodeGgufTensor, describeValue, type GgufCheckpoint, ggufChunks, type GgufTensorInfo, ggufTensorType, type GgufTensorType,
  type GgufValue, metaNumber, metaString, type OutTensor, readGguf,
} from "./gguf.js";
import type { QuantDType, QuantizeOptions } from "./quantize.js";
import { decodeValues, encodeValues, isLayerGroup, type LayerEntry, type LayerTable, PLAIN, ShapeProblem, type TensorRow } from "./tensor-map.js";

/*
 * RWKV in GGUF (llama.cpp's convert_hf_to_gguf.py Rwkv6Model / Rwkv7Model, src/models/rwkv6*.cpp,
 * rwkv7*.cpp), relative to the official RWKV-LM checkpoint. Common to every version (here):
 *  - names: emb -> token_embd, blocks.0.ln0 -> token_embd_norm, ln_out -> output_norm,
 *    head -> output, ln1/ln2/att.ln_x -> attn_norm/attn_norm_2/time_mix_ln, the Linear weights
 *    att.* -> time_mix_*, ffn.* -> channel_mix_*; every tensor squeezed;
 *  - with `rescale_every_n_layers` = n > 0, att.output and ffn.value of layer i are divided by
 *    2^floor(i/n) and the graph halves x after every n-th layer (undone on reading).
 * Each version's own per-layer tensors (fused lerps, transposed LoRA factors, ...) and metadata
 * are its module's GGUF LayerTable (model/vN/formats.ts): one table drives reader and writer.
 */

/** llama.cpp's RWKV converters state this: RWKV is not context limited. */
const RWKV_CONTEXT_LENGTH = 1048576;
const LAYER_NORM_EPS = 1e-5;
const GGML_QUANT_VERSION = 2;
/** Tensors outside the blocks. */
const TOP_LEVEL: Readonly<Record<string, string>> = { token_embd: "emb", token_embd_norm: "blocks.0.ln0", output_norm: "ln_out", output: "head" };
const LINEAR: Readonly<Record<string, string>> = {
  time_mix_key: "att.key.weight", time_mix_value: "att.value.weight", time_mix_receptance: "att.receptance.weight",
  time_mix_gate: "att.gate.weight", time_mix_output: "att.output.weight",
  channel_mix_key: "ffn.key.weight", channel_mix_value: "ffn.value.weight", channel_mix_receptance: "ffn.receptance.weight",
};
/** The Linear weights llama.cpp rescales with rescale_every_n_layers. */
const RESCALED = new Set(["time_mix_output", "channel_mix_value"]);
const NORMS: Readonly<Record<string, string>> = { attn_norm: "ln1", attn_norm_2: "ln2", time_mix_ln: "att.ln_x" };

/** The versions with a GGUF architecture, by its name. */
function tableOf(arch: string): { id: ModelConfig["version"]; table: LayerTable } | null {
  const m = VERSIONS.find((v) => v.gguf?.arch === arch);
  return m ? { id: m.id, table: m.gguf! } : null;
}

/**
 * Reads an RWKV GGUF as a checkpoint in official names and shapes: llama.cpp's renames,
 * squeezes, transposes, fused lerps and output rescaling are undone in toFloat32().
 */
export function readGgufCheckpoint(src: ByteSource): GgufCheckpoint {
  const file = readGguf(src);
  const arch = metaString(file, "general.architecture");
  if (arch === undefined) throw new FormatError(src.name, "GGUF without general.architecture");
  const found = tableOf(arch);
  if (!found) {
    const known = VERSIONS.filter((v) => v.gguf).map((v) => `${v.name} "${v.gguf!.arch}"`);
    throw new FormatError(src.name, `GGUF architecture "${arch}" is not an RWKV version this engine reads (supported: ${known.join(", ")})`);
  }
  const { table } = found;
  const rescale = metaNumber(file, `${arch}.rescale_every_n_layers`) ?? 0;
  const ctx = { headSize: metaNumber(file, `${arch}.wkv.head_size`) };
  const bad = (name: string, problem: string): never => { throw new FormatError(src.name, `tensor ${name}: ${problem}`); };
  const entries = new Map(table.layer.map((e) => [e.stored, e]));

  const tensors = new Map<string, TensorEntry>();
  const add = (e: TensorEntry) => {
    if (tensors.has(e.name)) throw new FormatError(src.name, `two GGUF tensors map to ${e.name}`);
    tensors.set(e.name, e);
  };
  const entry = (t: GgufTensorInfo, name: string, shape: readonly number[], values: () => Float32Array): TensorEntry => {
    if (numel(shape) !== numel(t.ne)) bad(t.name, `cannot present [${t.ne}] as [${shape}]`);
    return { name, dtype: t.type.dtype, shape, toFloat32: values };
  };
  const torchShape = (t: GgufTensorInfo) => [...t.ne].reverse();
  const viaRow = (t: GgufTensorInfo, name: string, row: TensorRow, factor = 1) => {
    const stored = torchShape(t);
    let shape: readonly number[] = stored;
    try {
      shape = row.toOfficial(stored, ctx);
    } catch (e) {
      if (e instanceof ShapeProblem) bad(t.name, e.message);
      throw e;
    }
    const e = entry(t, name, shape, () => {
      const v = decodeValues(row, decodeGgufTensor(src, t), stored);
      if (factor !== 1) for (let i = 0; i < v.length; i++) v[i] *= factor;
      return v;
    });
    // Stored exactly as the official tensor: matrices keep the file's (quantized) type in memory.
    const asIs = !row.layout && !row.values && factor === 1 && shape.join() === stored.join();
    add(asIs ? { ...e, ...rawAccess(src, t.dataOffset, t.byteLength) } : e);
  };

  for (const t of file.tensors) {
    const g = /^(token_embd|token_embd_norm|output_norm|output)\.(weight|bias)$/.exec(t.name);
    if (g) { add({ ...entry(t, `${TOP_LEVEL[g[1]]}.${g[2]}`, torchShape(t), () => decodeGgufTensor(src, t)), ...rawAccess(src, t.dataOffset, t.byteLength) }); continue; }
    const m = /^blk\.(\d+)\.([a-z0-9_]+)\.(weight|bias)$/.exec(t.name);
    if (!m) bad(t.name, `not part of llama.cpp's ${arch} layout`);
    const layer = Number(m![1]), base = m![2], kind = m![3];
    const p = `blocks.${layer}.`;
    if (NORMS[base]) { add(entry(t, `${p}${NORMS[base]}.${kind}`, [numel(t.ne)], () => decodeGgufTensor(src, t))); continue; }
    if (kind !== "weight") bad(t.name, `unexpected bias in llama.cpp's ${arch} layout`);
    if (LINEAR[base]) {
      viaRow(t, p + LINEAR[base], PLAIN, rescale > 0 && RESCALED.has(base) ? 2 ** Math.floor(layer / rescale) : 1);
      continue;
    }
    const e = entries.get(base);
    if (!e) bad(t.name, `not part of llama.cpp's ${arch} layout`);
    if (isLayerGroup(e!)) {
      const { parts } = e;
      const c = t.ne[0];
      if (numel(t.ne) !== c * parts.length) bad(t.name, `expected ${parts.length} x ${c} values, got [${t.ne}]`);
      parts.forEach((part, i) => add(entry({ ...t, ne: [c] }, p + part, [1, 1, c], () => decodeGgufTensor(src, t).slice(i * c, (i + 1) * c))));
      continue;
    }
    const le = e as LayerEntry;
    if (layer === 0 && le.layer0From) continue; // llama.cpp's placeholder: the model never uses it
    viaRow(t, p + le.official, le.row);
  }

  const metadata: Record<string, string> = { "gguf.version": String(file.version), "gguf.tensors": String(file.tensors.length) };
  for (const [k, v] of file.metadata) metadata[k] = describeValue(v);
  return { format: "gguf", source: src.name, tensors, metadata, gguf: file };
}

// ---------------------------------------------------------------- official checkpoint -> GGUF

export type GgufDType = "f32" | "f16" | "bf16" | QuantDType;

/** llama.cpp's general.file_type (llama_ftype) per output dtype. */
const FILE_TYPE: Readonly<Record<GgufDType, number>> = { f32: 0, f16: 1, q4_0: 2, q4_1: 3, q8_0: 7, q5_0: 8, q5_1: 9, bf16: 32 };
/** Kept F32 by convert_hf_to_gguf.py whatever the output type (small or precision-critical). */
const CONVERTER_F32 = /\.(time_mix_first|time_mix_w1|time_mix_w2|time_mix_decay_w1|time_mix_decay_w2|time_mix_lerp_fused)\.weight$/;
/** Never quantized by llama-quantize ("RWKV's small yet 2D weights"). */
const QUANTIZE_EXCLUDED = /\.time_mix_(first|[wavg][012]|decay_w[12]|lerp_fused)\.weight$/;

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
  const f32 = ggufTensorType("f32");
  if (dtype === "f32" || ne.filter((d) => d > 1).length <= 1 || CONVERTER_F32.test(name)) return f32;
  if (dtype === "f16" || dtype === "bf16") return ggufTensorType(dtype);
  if (QUANTIZE_EXCLUDED.test(name)) return f32;
  // llama-quantize gives the output matrix more bits (Q6_K); Q8_0 is the closest type we write.
  const q = name === "output.weight" ? "q8_0" : dtype;
  // A row that is not whole blocks cannot be quantized: llama-quantize falls back to F16.
  return ne[0] % QK === 0 ? ggufTensorType(q) : ggufTensorType("f16");
}

/** Lays out a checkpoint as llama.cpp expects it (by the version's GGUF table); values are computed lazily per tensor. */
export function ggufFromCheckpoint(ckpt: Checkpoint, version: ModelConfig["version"], options: GgufWriteOptions): GgufPlan {
  const module = versionModule(version);
  const table = module.gguf;
  if (!table) {
    const known = VERSIONS.filter((v) => v.gguf).map((v) => `${v.name} "${v.gguf!.arch}"`);
    throw new RwkvInputError(ckpt.source, `llama.cpp has no GGUF architecture for ${module.name} (only ${known.join(" and ")})`);
  }
  const arch = table.arch;
  const get = (n: string): TensorEntry => {
    const t = ckpt.tensors.get(n);
    if (!t) throw new RwkvInputError(ckpt.source, `missing tensor ${n} (needed for GGUF)`);
    return t;
  };
  const cfg = module.inferConfig(checkpointShapes(ckpt));
  const { nLayer: L, nEmbd: C, vocabSize: V } = cfg;
  const used = new Set<string>();
  const out: OutTensor[] = [];
  const take = (n: string) => { used.add(n); return get(n); };
  const viaRow = (gg: string, n: string, row: TensorRow, from = n) => {
    used.add(n);
    const t = take(from);
    let stored: readonly number[];
    try {
      stored = row.toStored(t.shape, cfg);
    } catch (e) {
      if (e instanceof ShapeProblem) throw new RwkvInputError(ckpt.source, `tensor ${from}: ${e.message}`);
      throw e;
    }
    out.push({ name: gg, ne: [...stored].reverse(), values: () => encodeValues(row, t.toFloat32(), t.shape) });
  };
  const squeezed = (gg: string, n: string) => { const t = take(n); out.push({ name: gg, ne: [numel(t.shape)], values: () => t.toFloat32() }); };

  viaRow("token_embd.weight", "emb.weight", PLAIN);
  squeezed("token_embd_norm.weight", "blocks.0.ln0.weight");
  squeezed("token_embd_norm.bias", "blocks.0.ln0.bias");
  for (let i = 0; i < L; i++) {
    const p = `blocks.${i}.`, g = `blk.${i}.`;
    for (const [gg, ln] of Object.entries(NORMS)) {
      squeezed(`${g}${gg}.weight`, `${p}${ln}.weight`);
      squeezed(`${g}${gg}.bias`, `${p}${ln}.bias`);
    }
    for (const [gg, n] of Object.entries(LINEAR)) if (ckpt.tensors.has(p + n)) viaRow(`${g}${gg}.weight`, p + n, PLAIN);
    for (const e of table.layer) {
      if (isLayerGroup(e)) {
        const parts = e.parts.map((x) => take(p + x));
        out.push({ name: `${g}${e.stored}.weight`, ne: [C, 1, 1, parts.length], values: () => {
          const v = new Float32Array(C * parts.length);
          parts.forEach((part, k) => v.set(part.toFloat32(), k * C));
          return v;
        } });
        continue;
      }
      if (e.readOnly) continue;
      viaRow(`${g}${e.stored}.weight`, p + e.official, e.row, i === 0 && e.layer0From ? p + e.layer0From : p + e.official);
    }
  }
  squeezed("output_norm.weight", "ln_out.weight");
  squeezed("output_norm.bias", "ln_out.bias");
  viaRow("output.weight", "head.weight", PLAIN);

  const kv = new Map<string, GgufValue>();
  const u32 = (k: string, value: number) => kv.set(k, { type: "u32", value });
  kv.set("general.architecture", { type: "string", value: arch });
  if (options.name !== undefined) kv.set("general.name", { type: "string", value: options.name });
  u32(`${arch}.context_length`, RWKV_CONTEXT_LENGTH);
  u32(`${arch}.embedding_length`, C);
  u32(`${arch}.block_count`, L);
  kv.set(`${arch}.attention.layer_norm_epsilon`, { type: "f32", value: LAYER_NORM_EPS });
  u32(`${arch}.wkv.head_size`, cfg.headSize);
  for (const [k, v] of table.metadata(cfg, (n) => get(n).shape)) u32(`${arch}.${k}`, v);
  u32(`${arch}.feed_forward_length`, cfg.dimFfn);
  u32("general.file_type", FILE_TYPE[options.dtype]);
  u32(`${arch}.attention.head_count`, 0); // required by llama.cpp's loader, unused by RWKV
  u32("general.quantization_version", GGML_QUANT_VERSION);
  const tokens = options.tokenizer.get("tokenizer.ggml.tokens");
  if (tokens?.type !== "array" || tokens.value.length !== V) {
    throw new RwkvInputError(ckpt.source, `the tokenizer has ${tokens?.type === "array" ? tokens.value.length : 0} tokens but the model's vocabulary is ${V} (llama.cpp requires them to match)`);
  }
  for (const [k, v] of options.tokenizer) kv.set(k, v);

  const dropped = [...ckpt.tensors.keys()].filter((n) => !used.has(n));
  return { architecture: arch, dropped, chunks: ggufChunks(kv, out, (t) => ggufTypeFor(t.name, t.ne, options.dtype), options.quantize) };
}
