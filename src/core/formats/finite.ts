import { FormatError } from "../errors.js";
import type { DType, TensorEntry } from "../tensor.js";
import type { Checkpoint } from "./checkpoint.js";

// A NaN or infinity in any weight makes every logit non-finite: the file is corrupt (a flipped
// exponent byte, a mis-typed tensor) and must not load as a model that then answers with NaNs.
// The check rides on the reads the model build does anyway: one pass over bytes already in cache.

/** Bytes per quantization block and the offsets of its f16 scale fields (ggml's block layouts). */
const BLOCK_SCALES: Partial<Record<DType, { bytes: number; scales: readonly number[] }>> = {
  q4_0: { bytes: 18, scales: [0] },
  q4_1: { bytes: 20, scales: [0, 2] },
  q5_0: { bytes: 22, scales: [0] },
  q5_1: { bytes: 24, scales: [0, 2] },
  q8_0: { bytes: 34, scales: [0] },
};

/**
 * rwkv.cpp stores these exp-transformed (exp(-exp(w)), -exp(w), exp(u)); the reader takes logs, and
 * a stored 0 or 1 legitimately comes back as ±Infinity (the limit the model's exp() maps back). The
 * stored values were finite, so only NaN is refused there.
 */
const RWKVCPP_LOG_TENSORS = /\.(time_decay|time_first)$/;

/** The same checkpoint, each tensor's values checked for NaN / ±Inf as they are read. */
export function checkingFinite(ckpt: Checkpoint): Checkpoint {
  const tensors = new Map<string, TensorEntry>();
  for (const [name, e] of ckpt.tensors) {
    const infinityOk = ckpt.format === "rwkv.cpp" && RWKVCPP_LOG_TENSORS.test(name);
    const fail = (what: string, index: number): never => {
      throw new FormatError(ckpt.source, `tensor ${name} holds a non-finite value (${what} at element ${index}): the file is corrupt (loading it would give NaN logits; --no-verify loads it anyway)`);
    };
    const raw = e.raw, rawInto = e.rawInto;
    const checkRaw = (b: Uint8Array) => {
      const i = firstNonFiniteRaw(b, e.dtype);
      if (i >= 0) fail(e.dtype in BLOCK_SCALES ? "a non-finite block scale" : "NaN or infinity", i);
    };
    tensors.set(name, {
      ...e,
      toFloat32: () => {
        const v = e.toFloat32();
        const i = infinityOk ? v.findIndex(Number.isNaN) : firstNonFinite(v);
        if (i >= 0) fail(String(v[i]), i);
        return v;
      },
      ...(raw ? {
        raw: () => {
          const b = raw();
          checkRaw(b);
          return b;
        },
      } : {}),
      ...(rawInto ? { rawInto: (dest: Uint8Array) => { rawInto(dest); checkRaw(dest); } } : {}),
    });
  }
  return { ...ckpt, tensors };
}

export function firstNonFinite(v: Float32Array): number {
  for (let i = 0; i < v.length; i++) {
    // x - x is 0 for finite x and NaN for NaN and ±Inf: one compare per element.
    if (v[i] - v[i] !== 0) return i;
  }
  return -1;
}

const F32_EXP = 0x7f800000, F16_EXP = 0x7c00, BF16_EXP = 0x7f80;

/** Index of the first element (or, for block types, block) with an all-ones exponent; -1 if none. */
export function firstNonFiniteRaw(b: Uint8Array, dtype: DType): number {
  // Aligned buffers (all that files give) are scanned a word at a time.
  if (dtype === "f32" && b.byteOffset % 4 === 0) {
    const w = new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
    for (let i = 0; i < w.length; i++) if ((w[i] & F32_EXP) === F32_EXP) return i;
    return -1;
  }
  if ((dtype === "f16" || dtype === "bf16") && b.byteOffset % 2 === 0) {
    const exp = dtype === "f16" ? F16_EXP : BF16_EXP;
    const h = new Uint16Array(b.buffer, b.byteOffset, b.length >>> 1);
    for (let i = 0; i < h.length; i++) if ((h[i] & exp) === exp) return i;
    return -1;
  }
  switch (dtype) {
    case "f32":
      for (let i = 3; i < b.length; i += 4) if ((b[i] & 0x7f) === 0x7f && (b[i - 1] & 0x80)) return (i - 3) / 4;
      return -1;
    case "f64":
      for (let i = 7; i < b.length; i += 8) if ((b[i] & 0x7f) === 0x7f && (b[i - 1] & 0xf0) === 0xf0) return (i - 7) / 8;
      return -1;
    case "bf16":
      for (let i = 1; i < b.length; i += 2) if ((b[i] & 0x7f) === 0x7f && (b[i - 1] & 0x80)) return (i - 1) / 2;
      return -1;
    case "f16":
      for (let i = 1; i < b.length; i += 2) if ((b[i] & 0x7c) === 0x7c) return (i - 1) / 2;
      return -1;
    default: {
      const layout = BLOCK_SCALES[dtype];
      if (!layout) return -1;
      for (let p = 0, k = 0; p + layout.bytes <= b.length; p += layout.bytes, k++) {
        for (const s of layout.scales) if ((b[p + s + 1] & 0x7c) === 0x7c) return k;
      }
      return -1;
    }
  }
}
