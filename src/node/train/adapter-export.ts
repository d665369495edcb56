import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { safetensorsF32 } from "../../core/adapters/write.js";
import { type PthDType, pthChunks } from "../../core/formats/pth-writer.js";
import { toBf16Bytes, toF32Bytes } from "../../core/formats/quantize.js";
import type { LoraSpec } from "../../core/train/lora.js";
import { timeStateNames } from "../../core/train/state-tune.js";
import type { ParamStore } from "../../core/train/params.js";
import { writeFileAtomic } from "../atomic-write.js";
import { PEFT_CONFIG, PEFT_WEIGHTS } from "../adapters.js";
import type { ExportDType } from "./export.js";

/*
 * A trained LoRA as the files users already pass around: RWKV-PEFT's slim checkpoint (only the
 * `<prefix>.lora_A/B` tensors, torch.save format; alpha is not stored there, as in RWKV-PEFT) and
 * a HuggingFace peft directory (adapter_config.json with r and lora_alpha, and
 * adapter_model.safetensors with `base_model.model.<prefix>.lora_A.weight` names).
 */

export const ADAPTER_PTH = "adapter.pth";
export const ADAPTER_DIR = "adapter";

export async function exportLora(params: ParamStore, names: readonly string[], out: string, spec: LoraSpec, dtype: ExportDType): Promise<{ pth: string; dir: string }> {
  const list = names.map((n) => params.get(n));
  const bytes = (d: ArrayLike<number>) => (dtype === "f32" ? toF32Bytes(Float32Array.from(d)) : toBf16Bytes(Float32Array.from(d)));
  const pth = join(out, ADAPTER_PTH);
  await writeFileAtomic(pth, pthChunks(list.map((p) => ({ name: p.name, shape: p.shape, dtype: dtype as PthDType, data: () => bytes(p.data) })), { archiveName: "adapter" }));
  const dir = join(out, ADAPTER_DIR);
  mkdirSync(dir, { recursive: true });
  const config = {
    peft_type: "LORA", r: spec.rank, lora_alpha: spec.alpha, target_modules: spec.targets, lora_dropout: 0, bias: "none",
    use_rslora: false, task_type: "CAUSAL_LM",
  };
  await writeFileAtomic(join(dir, PEFT_CONFIG), [new TextEncoder().encode(JSON.stringify(config, null, 2) + "\n")]);
  // peft files are f32 here whatever --export-dtype says: they are small and lossless.
  const st = safetensorsF32(list.map((p) => ({ name: "base_model.model." + p.name + ".weight", shape: p.shape, data: p.data })));
  await writeFileAtomic(join(dir, PEFT_WEIGHTS), [st]);
  return { pth, dir };
}

export const STATE_PTH = "state.pth";

/** A trained initial state as RWKV-PEFT saves one: only the blocks.i.att.time_state tensors. */
export async function exportTimeState(params: ParamStore, out: string, dtype: ExportDType): Promise<string> {
  const list = timeStateNames(params).map((n) => params.get(n));
  const bytes = (d: ArrayLike<number>) => (dtype === "f32" ? toF32Bytes(Float32Array.from(d)) : toBf16Bytes(Float32Array.from(d)));
  const path = join(out, STATE_PTH);
  await writeFileAtomic(path, pthChunks(list.map((p) => ({ name: p.name, shape: p.shape, dtype: dtype as PthDType, data: () => bytes(p.data) })), { archiveName: "state" }));
  return path;
}
