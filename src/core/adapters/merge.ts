import { FormatError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { GGML_TYPES, ggmlToFloat32 } from "../formats/ggml-quants.js";
import { type QuantDType, quantize, toBf16Bytes, toF16Bytes } from "../formats/quantize.js";
import { decodeFloats, type DType, type TensorEntry } from "../tensor.js";
import { officialFromAi00 } from "./ai00.js";
import { type Adapter, BONE, DEFAULT_LORA_ALPHA, DISHA, INIT_LORA_A, INIT_LORA_B, LORA_A, LORA_B, TIME_STATE } from "./adapter.js";

/*
 * Merges adapters into a base checkpoint, lazily: the result is a checkpoint whose touched
 * tensors compute base + delta when read, so a model built from it (or a file written from it)
 * never holds the base twice. Every shape is checked up front, before any arithmetic, so a
 * wrong adapter is refused by name instead of merging garbage.
 */

/** Adds the adapter's change to a base matrix W (out, in), in place. */
export type MatrixEdit = (w: Float32Array, out: number, inp: number) => void;

export interface MergeResult {
  readonly checkpoint: Checkpoint;
  /** Human-readable remarks (e.g. tensors re-quantized into the base's block type). */
  readonly notes: string[];
}

/** W += scale · B A with A (r, in), B (out, r); products summed in f64. */
export function addLowRank(w: Float32Array, out: number, inp: number, A: Float32Array, B: Float32Array, r: number, scale: number): void {
  const row = new Float64Array(inp);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let k = 0; k < r; k++) {
      const b = B[o * r + k];
      if (b === 0) continue;
      const a = A.subarray(k * inp, (k + 1) * inp);
      for (let i = 0; i < inp; i++) row[i] += b * a[i];
    }
    for (let i = 0; i < inp; i++) w[o * inp + i] += scale * row[i];
  }
}

/** DiSHA "Bone" form, D (r, out): W[o, i] += D[i mod r, o] (merge_disha.py's 2-D case, ragged last block included). */
export function addBone(w: Float32Array, out: number, inp: number, D: Float32Array, r: number): void {
  for (let o = 0; o < out; o++) for (let i = 0; i < inp; i++) w[o * inp + i] += D[(i % r) * out + o];
}

/**
 * DiSHA "Bat" form, D (in/r, r, r): W seen as (out/r) × (in/r) blocks of r × r; block (a, b)
 * becomes X + X D_b + D_b with X the original block (merge_disha.py's 3-D case).
 */
export function addBat(w: Float32Array, out: number, inp: number, D: Float32Array, r: number): void {
  const x = new Float64Array(r * r);
  for (let a = 0; a < out / r; a++) {
    for (let b = 0; b < inp / r; b++) {
      for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) x[i * r + j] = w[(a * r + i) * inp + b * r + j];
      const d = D.subarray(b * r * r, (b + 1) * r * r);
      for (let i = 0; i < r; i++) {
        for (let j = 0; j < r; j++) {
          let s = x[i * r + j] + d[i * r + j];
          for (let k = 0; k < r; k++) s += x[i * r + k] * d[k * r + j];
          w[(a * r + i) * inp + b * r + j] = s;
        }
      }
    }
  }
}

/** A tensor's key, and the file's own name for it when a reader renamed it (ai00's lora.0 is lora_A transposed). */
const label = (key: string, t: TensorEntry) => (t.name === key ? key : `${key} (${t.name})`);
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
const fmt = (s: readonly number[]) => `[${s.join(", ")}]`;

/** The initial-state shape (H, N, N) the base model implies, from its per-head tensors. */
function timeStateShape(base: Checkpoint, layer: string): number[] | null {
  for (const n of ["att.time_faaaa", "att.r_k"]) {
    const t = base.tensors.get(`${layer}.${n}`);
    if (t && t.shape.length === 2) return [t.shape[0], t.shape[1], t.shape[1]];
  }
  return null;
}

/** Every edit an adapter makes to the base, keyed by base tensor name; throws on any mismatch. */
function planAdapter(base: Checkpoint, a: Adapter): { edits: Map<string, MatrixEdit[]>; replace: Map<string, TensorEntry>; added: TensorEntry[] } {
  const edits = new Map<string, MatrixEdit[]>(), replace = new Map<string, TensorEntry>(), added: TensorEntry[] = [];
  const wrong = (name: string, problem: string) => new FormatError(a.source, `tensor ${name} ${problem} (model ${base.source})`);
  const target = (name: string, suffix: string): { key: string; out: number; inp: number } => {
    const key = name.slice(0, -suffix.length) + ".weight";
    const w = base.tensors.get(key);
    if (!w) throw wrong(name, `adapts ${key}, which the model does not have`);
    if (w.shape.length !== 2) throw wrong(name, `adapts ${key} of shape ${fmt(w.shape)}, which is not a matrix`);
    return { key, out: w.shape[0], inp: w.shape[1] };
  };
  const push = (key: string, e: MatrixEdit) => edits.set(key, [...(edits.get(key) ?? []), e]);
  for (const [name, t] of a.tensors) {
    if (name.endsWith(LORA_B) || name.endsWith(INIT_LORA_A) || name.endsWith(INIT_LORA_B)) continue; // handled with lora_A
    if (name.endsWith(LORA_A)) {
      const { key, out, inp } = target(name, LORA_A);
      const bName = name.slice(0, -LORA_A.length) + LORA_B;
      const B = a.tensors.get(bName);
      if (!B) throw new FormatError(a.source, `${name} has no matching ${bName}`);
      const r = t.shape[0];
      if (!sameShape(t.shape, [r, inp]) || r < 1) throw wrong(label(name, t), `has shape ${fmt(t.shape)} but ${key} is ${fmt([out, inp])}: a LoRA A must be [r, ${inp}]`);
      if (!sameShape(B.shape, [out, r])) throw wrong(label(bName, B), `has shape ${fmt(B.shape)} but ${key} is ${fmt([out, inp])} and ${name} has rank ${r}: a LoRA B must be [${out}, ${r}]`);
      if (a.pissaInit) {
        const p = a.pissaInit, prefix = name.slice(0, -LORA_A.length);
        const A0 = p.tensors.get(prefix + INIT_LORA_A), B0 = p.tensors.get(prefix + INIT_LORA_B);
        if (!A0 || !B0) throw new FormatError(p.source, `PiSSA init has no ${prefix}${INIT_LORA_A}/${INIT_LORA_B} for ${name} of ${a.source}`);
        if (!sameShape(A0.shape, t.shape) || !sameShape(B0.shape, B.shape)) {
          throw new FormatError(p.source, `PiSSA init ${prefix}${INIT_LORA_A} ${fmt(A0.shape)} / ${INIT_LORA_B} ${fmt(B0.shape)} do not match ${a.source}'s ${fmt(t.shape)} / ${fmt(B.shape)}`);
        }
        push(key, (w) => {
          addLowRank(w, out, inp, A0.toFloat32(), B0.toFloat32(), r, -1);
          addLowRank(w, out, inp, t.toFloat32(), B.toFloat32(), r, 1);
        });
      } else {
        const scale = (a.alpha ?? DEFAULT_LORA_ALPHA) / r;
        push(key, (w) => addLowRank(w, out, inp, t.toFloat32(), B.toFloat32(), r, scale));
      }
    } else if (name.endsWith(DISHA) || name.endsWith(BONE)) {
      const { key, out, inp } = target(name, name.endsWith(DISHA) ? DISHA : BONE);
      if (t.shape.length === 2 && name.endsWith(DISHA)) {
        const r = t.shape[0];
        if (t.shape[1] !== out || r < 1) throw wrong(name, `has shape ${fmt(t.shape)} but ${key} is ${fmt([out, inp])}: a Bone-form DiSHA must be [r, ${out}]`);
        push(key, (w) => addBone(w, out, inp, t.toFloat32(), r));
      } else if (t.shape.length === 3) {
        const r = t.shape[1];
        if (r < 1 || t.shape[2] !== r || inp % r !== 0 || out % r !== 0 || t.shape[0] !== inp / r) {
          throw wrong(name, `has shape ${fmt(t.shape)} but ${key} is ${fmt([out, inp])}: a Bat-form DiSHA must be [in/r, r, r] with r dividing both ${out} and ${inp}`);
        }
        push(key, (w) => addBat(w, out, inp, t.toFloat32(), r));
      } else {
        throw wrong(name, `has shape ${fmt(t.shape)}: DiSHA tensors are [r, out] (Bone) or [in/r, r, r] (Bat)`);
      }
    } else if (name.endsWith(TIME_STATE)) {
      const layer = name.slice(0, -TIME_STATE.length);
      const want = timeStateShape(base, layer);
      if (!want) throw wrong(name, `targets ${layer}, which the model has no per-head state for`);
      if (!sameShape(t.shape, want)) throw wrong(name, `has shape ${fmt(t.shape)} but the model's state for ${layer} is ${fmt(want)}`);
      if (base.tensors.has(name)) replace.set(name, t);
      else added.push(t);
    } else {
      // ai00 files say time_first/time_mix where v5.2/v6 checkpoints say time_faaaa/time_maa.
      const key = officialFromAi00(name, (n) => base.tensors.has(n));
      const b = base.tensors.get(key);
      if (!b) throw wrong(name, "is neither a model tensor nor a LoRA/PiSSA/DiSHA/state tensor");
      if (!sameShape(b.shape, t.shape)) throw wrong(name, `has shape ${fmt(t.shape)} but the model's ${key === name ? "" : key + " "}is ${fmt(b.shape)}`);
      replace.set(key, t);
    }
  }
  for (const name of a.tensors.keys()) {
    if (name.endsWith(LORA_B) && !a.tensors.has(name.slice(0, -LORA_B.length) + LORA_A)) {
      throw new FormatError(a.source, `${name} has no matching ${name.slice(0, -LORA_B.length)}${LORA_A}`);
    }
  }
  return { edits, replace, added };
}

const QUANT = new Set<DType>(["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]);

/** A tensor equal to `t` after `edits`, stored in `t`'s type (re-encoded/re-quantized when compact). */
function edited(t: TensorEntry, edits: MatrixEdit[]): TensorEntry {
  const [out, inp] = t.shape;
  const merged = (): Float32Array => {
    const w = t.toFloat32();
    for (const e of edits) e(w, out, inp);
    return w;
  };
  const n = out * inp;
  switch (t.dtype) {
    case "f16": case "bf16": {
      const encode = () => (t.dtype === "f16" ? toF16Bytes : toBf16Bytes)(merged());
      return { name: t.name, dtype: t.dtype, shape: t.shape, raw: encode, toFloat32: () => decodeFloats(encode(), t.dtype as "f16" | "bf16", n) };
    }
    case "f32": case "f64":
      return { name: t.name, dtype: "f32", shape: t.shape, toFloat32: merged };
    default: {
      const type = [...GGML_TYPES.values()].find((g) => g.dtype === t.dtype)!;
      const encode = () => quantize(t.dtype as QuantDType, merged());
      return { name: t.name, dtype: t.dtype, shape: t.shape, raw: encode, toFloat32: () => ggmlToFloat32(type, encode(), n) };
    }
  }
}

/**
 * The base with every adapter applied in order (within one adapter: full-tensor replacements
 * first, then the LoRA/PiSSA/DiSHA deltas on top, in file order). Adapters for another model shape throw, naming the adapter and the model.
 */
export function mergeAdapters(base: Checkpoint, adapters: readonly Adapter[]): MergeResult {
  let tensors = new Map(base.tensors);
  const notes: string[] = [];
  for (const a of adapters) {
    const view: Checkpoint = { ...base, tensors };
    const { edits, replace, added } = planAdapter(view, a);
    const next = new Map<string, TensorEntry>();
    for (const [name, t] of tensors) {
      const r = replace.get(name);
      const cur = r ? { ...r, name } : t;
      const e = edits.get(name);
      next.set(name, e ? edited(cur, e) : cur);
    }
    for (const t of added) next.set(t.name, t);
    const requant = [...edits.keys()].filter((k) => QUANT.has(tensors.get(k)!.dtype));
    if (requant.length) notes.push(`${a.source}: ${requant.length} matrices merged and re-quantized to ${tensors.get(requant[0])!.dtype} (the base's type)`);
    tensors = next;
  }
  return { checkpoint: { ...base, source: `${base.source} + ${adapters.map((a) => a.source).join(" + ")}`, tensors }, notes };
}
