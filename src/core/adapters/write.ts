import { toF16Bytes } from "../formats/quantize.js";
import { numel } from "../tensor.js";

/** One f32 tensor to write. */
export interface F32Tensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: ArrayLike<number>;
}

const ALIGN = 8;

/**
 * A whole f32 safetensors file in memory (adapters are small: ranks × widths). Header padded with
 * spaces so data starts 8-byte aligned, as the reference writer does.
 */
export function safetensorsF32(tensors: readonly F32Tensor[], metadata: Readonly<Record<string, string>> = {}): Uint8Array {
  return safetensorsOf(tensors, "F32", metadata);
}

/** The same with every value rounded to f16 (nearest even, as torch's `.half()`): ai00's LoRA files. */
export function safetensorsF16(tensors: readonly F32Tensor[], metadata: Readonly<Record<string, string>> = {}): Uint8Array {
  return safetensorsOf(tensors, "F16", metadata);
}

const BYTES = { F32: 4, F16: 2 } as const;

function safetensorsOf(tensors: readonly F32Tensor[], dtype: keyof typeof BYTES, metadata: Readonly<Record<string, string>>): Uint8Array {
  const size = BYTES[dtype];
  const header: Record<string, unknown> = Object.keys(metadata).length ? { __metadata__: metadata } : {};
  let off = 0;
  for (const t of tensors) {
    const n = numel(t.shape);
    if (n !== t.data.length) throw new Error(`tensor ${t.name}: ${t.data.length} values for shape [${t.shape}]`);
    header[t.name] = { dtype, shape: t.shape, data_offsets: [off, off + size * n] };
    off += size * n;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((ALIGN - ((ALIGN + new TextEncoder().encode(json).length) % ALIGN)) % ALIGN);
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(ALIGN + hb.length + off);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, ALIGN);
  let p = ALIGN + hb.length;
  for (const t of tensors) {
    if (dtype === "F16") {
      out.set(toF16Bytes(Float32Array.from(t.data)), p);
      p += 2 * t.data.length;
    } else {
      for (let i = 0; i < t.data.length; i++, p += 4) dv.setFloat32(p, t.data[i], true);
    }
  }
  return out;
}
