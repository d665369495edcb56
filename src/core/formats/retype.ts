import { decodeFloats, type TensorEntry } from "../tensor.js";
import type { Checkpoint } from "./checkpoint.js";
import { GGML_TYPES, ggmlToFloat32, QK } from "./ggml-quants.js";
import { type QuantDType, quantize, toBf16Bytes, toF16Bytes } from "./quantize.js";

/*
 * A checkpoint whose weight matrices are re-encoded in memory as another storage type, as if the
 * file had been converted first: lets a benchmark or an experiment run any model in any type
 * without writing a file. Tensors are encoded when read, so nothing is held twice.
 */

export type MatrixDType = "f32" | "f16" | "bf16" | QuantDType;

export const MATRIX_DTYPES: readonly MatrixDType[] = ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"];

/**
 * Which tensors change type: the Linear weights (2-D `*.weight`, the head included) except the
 * embedding, which the model keeps in f32 anyway. LoRA factors, norms and mixes keep their type;
 * that is rwkv.cpp's quantizer rule except for the head, which it leaves unquantized while
 * llama.cpp's quantizer and our --int8 compact it too (it is the biggest matrix of a small model).
 * A matrix whose rows are not whole ggml blocks cannot take a block type and stays as it is.
 */
export function isRetypedMatrix(t: TensorEntry, dtype: MatrixDType): boolean {
  if (t.shape.length !== 2 || !t.name.endsWith(".weight") || t.name === "emb.weight") return false;
  return dtype === "f32" || dtype === "f16" || dtype === "bf16" || t.shape[1] % QK === 0;
}

export function retypeMatrices(ckpt: Checkpoint, dtype: MatrixDType): Checkpoint {
  const tensors = new Map<string, TensorEntry>();
  for (const [name, t] of ckpt.tensors) tensors.set(name, isRetypedMatrix(t, dtype) ? retype(t, dtype) : t);
  return { ...ckpt, source: `${ckpt.source} as ${dtype}`, tensors };
}

function retype(t: TensorEntry, dtype: MatrixDType): TensorEntry {
  if (dtype === "f32") return { name: t.name, dtype, shape: t.shape, toFloat32: () => t.toFloat32() };
  const n = t.shape[0] * t.shape[1];
  const encode = (): Uint8Array => {
    const x = t.toFloat32();
    return dtype === "f16" ? toF16Bytes(x) : dtype === "bf16" ? toBf16Bytes(x) : quantize(dtype, x);
  };
  // toFloat32 decodes the encoded bytes: whichever a model reads, it sees the same values.
  const decode = (raw: Uint8Array): Float32Array => dtype === "f16" || dtype === "bf16" ? decodeFloats(raw, dtype, n)
    : ggmlToFloat32([...GGML_TYPES.values()].find((g) => g.dtype === dtype)!, raw, n);
  return { name: t.name, dtype, shape: t.shape, raw: encode, toFloat32: () => decode(encode()) };
}
