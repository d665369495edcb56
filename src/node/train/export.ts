import { basename, extname } from "node:path";
import { type PthDType, pthChunks } from "../../core/formats/pth-writer.js";
import { toBf16Bytes, toF32Bytes } from "../../core/formats/quantize.js";
import { writeSafetensors } from "../../core/formats/safetensors.js";
import type { ParamStore } from "../../core/train/params.js";
import { writeFileAtomic } from "../atomic-write.js";

/*
 * Trained weights as files other tools load: the official RWKV-LM checkpoint (torch.save of the
 * state dict: same names, shapes and order as RWKV-LM's model.state_dict(), so its GPU trainer can
 * continue from it with --load_model) and safetensors. Both are written atomically.
 */

export type ExportDType = "f32" | "bf16";

function bytesOf(data: ArrayLike<number>, dtype: ExportDType): Uint8Array {
  const f = data instanceof Float32Array ? data : Float32Array.from(data);
  return dtype === "f32" ? toF32Bytes(f.slice()) : toBf16Bytes(f);
}

export async function exportPth(params: ParamStore, path: string, dtype: ExportDType): Promise<void> {
  const tensors = params.list.map((p) => ({ name: p.name, shape: p.shape, dtype: dtype as PthDType, data: () => bytesOf(p.data, dtype) }));
  await writeFileAtomic(path, pthChunks(tensors, { archiveName: basename(path, extname(path)) || "archive" }));
}

export async function exportSafetensors(params: ParamStore, path: string, dtype: ExportDType, metadata: Record<string, string> = {}): Promise<void> {
  const tensors = params.list.map((p) => ({ name: p.name, shape: p.shape, dtype, data: bytesOf(p.data, dtype) }));
  await writeFileAtomic(path, writeSafetensors(tensors, metadata));
}
