import { FormatError, RwkvInputError } from "../errors.js";
import { numel, type TensorEntry } from "../tensor.js";
import { type Adapter, BONE, DISHA, INIT_LORA_A, INIT_LORA_B, LORA_A, LORA_B, TIME_STATE } from "./adapter.js";

/*
 * The LoRA files ai00_server and web-rwkv load: the output of ai00's convert_safetensors.py run on
 * a RWKV-PEFT checkpoint, read by web-rwkv's loader (runtime/loader.rs):
 *   - every tensor f16, named by substring renames (time_faaaa → time_first, time_maa → time_mix,
 *     lora_A → lora.0, lora_B → lora.1), then lower-cased;
 *   - a tensor whose renamed name contains one of AI00_TRANSPOSED has its last two axes swapped,
 *     so <prefix>.lora.0 = Aᵀ, X (in, r), and <prefix>.lora.1 = B, Y (out, r);
 *   - web-rwkv applies W[o][i] += (alpha / r) · Σ_k X[i][k] · Y[o][k], r = X's second axis, which
 *     is RWKV-PEFT's W += (alpha / r) · B A; its kernel reads the rank 4 values at a time;
 *   - a non-matrix tensor named like a model tensor is blended t = f · t' + (1 − f) · t with
 *     f = 1 by default (replaced, as RWKV-PEFT's full tensors are); a full matrix is added,
 *     W += f · M, which no RWKV-PEFT tensor means, so both directions here refuse full matrices.
 * Letters: I/O a matrix's input/output width, r the rank.
 */

/** web-rwkv's names for the LoRA factors X = Aᵀ (I, r) and Y = B (O, r). */
export const AI00_LORA_X = ".lora.0";
export const AI00_LORA_Y = ".lora.1";

/** convert_safetensors.py's renames, applied in this order, each to every occurrence. */
const AI00_RENAMES: ReadonlyArray<readonly [string, string]> = [
  ["time_faaaa", "time_first"], ["time_maa", "time_mix"], ["lora_A", "lora.0"], ["lora_B", "lora.1"],
];

/** convert_safetensors.py's transpose list: a renamed name containing any of these swaps its last two axes. */
const AI00_TRANSPOSED = [
  "time_mix_w1", "time_mix_w2", "time_decay_w1", "time_decay_w2",
  "w1", "w2", "a1", "a2", "g1", "g2", "v1", "v2", "time_state", "lora.0",
];

/** safetensors metadata convert_safetensors.py writes (safetensors.torch's "pt" marker). */
export const AI00_METADATA: Readonly<Record<string, string>> = { format: "pt" };

/** web-rwkv's blend kernel reads LoRA factors 4 f16 values at a time. */
export const AI00_RANK_MULTIPLE = 4;

/** The name convert_safetensors.py gives a RWKV-PEFT tensor. */
export function ai00Name(name: string): string {
  let n = name;
  for (const [from, to] of AI00_RENAMES) n = n.split(from).join(to);
  return n.toLowerCase();
}

/** Whether convert_safetensors.py swaps the last two axes of the tensor it names `ai00` (a renamed name). */
export function ai00Transposes(ai00: string, shape: readonly number[]): boolean {
  return shape.length >= 2 && AI00_TRANSPOSED.some((t) => ai00.includes(t));
}

/**
 * RWKV-PEFT's (and the official checkpoints') name of an ai00 tensor name in a model that has
 * `has` tensors: v5.2/v6 call time_first time_faaaa and v6 calls time_mix time_maa, while v4/v5.1
 * keep time_first/time_mix, so only the model can tell. Returns `name` when nothing fits better.
 */
export function officialFromAi00(name: string, has: (n: string) => boolean): string {
  if (has(name)) return name;
  const alt = name.split("time_first").join("time_faaaa").split("time_mix").join("time_maa");
  return has(alt) ? alt : name;
}

/** Whether a tensor list is in ai00's form (its LoRA factors are named *.lora.0 / *.lora.1). */
export function isAi00Adapter(names: Iterable<string>): boolean {
  for (const n of names) if (n.endsWith(AI00_LORA_X) || n.endsWith(AI00_LORA_Y)) return true;
  return false;
}

/** web-rwkv adds a same-named full matrix instead of replacing it: Linear weights, emb/head and the mixers' factors. */
function isFullMatrix(ai00: string, shape: readonly number[]): boolean {
  if (ai00.endsWith(TIME_STATE)) return false;
  return (ai00.endsWith(".weight") && shape.length === 2) || ai00Transposes(ai00, shape);
}

const fmt = (s: readonly number[]) => `[${s.join(", ")}]`;

/** `t` with its last two axes swapped, as f32, named `name` (a LoRA factor's says where it came from, for messages). */
function transposed(t: TensorEntry, name: string): TensorEntry {
  const s = t.shape, a = s[s.length - 2], b = s[s.length - 1], lead = numel(s) / (a * b);
  const shape = [...s.slice(0, -2), b, a];
  return {
    name, dtype: "f32", shape,
    toFloat32: () => {
      const x = t.toFloat32(), y = new Float32Array(x.length);
      for (let l = 0; l < lead; l++) {
        const o = l * a * b;
        for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) y[o + j * a + i] = x[o + i * b + j];
      }
      return y;
    },
  };
}

/**
 * An ai00/web-rwkv LoRA file's tensors in RWKV-PEFT's form: <prefix>.lora_A = Xᵀ (r, I),
 * <prefix>.lora_B = Y (O, r), other tensors transposed back where the converter transposed them.
 * Their names stay ai00's (mergeAdapters maps time_first/time_mix back against the model).
 * Throws on a factor without its partner, ranks that differ, and full matrices (see above).
 */
export function fromAi00(source: string, tensors: ReadonlyMap<string, TensorEntry>): Map<string, TensorEntry> {
  const out = new Map<string, TensorEntry>();
  for (const [name, t] of tensors) {
    if (name.endsWith(AI00_LORA_Y)) {
      if (!tensors.has(name.slice(0, -AI00_LORA_Y.length) + AI00_LORA_X)) throw new FormatError(source, `${name} has no matching ${name.slice(0, -AI00_LORA_Y.length)}${AI00_LORA_X}`);
      continue;
    }
    if (name.endsWith(AI00_LORA_X)) {
      const prefix = name.slice(0, -AI00_LORA_X.length), yName = prefix + AI00_LORA_Y, y = tensors.get(yName);
      if (!y) throw new FormatError(source, `${name} has no matching ${yName}`);
      if (t.shape.length !== 2) throw new FormatError(source, `${name} has shape ${fmt(t.shape)}: web-rwkv's lora.0 is a matrix [in, r]`);
      if (y.shape.length !== 2) throw new FormatError(source, `${yName} has shape ${fmt(y.shape)}: web-rwkv's lora.1 is a matrix [out, r]`);
      if (t.shape[1] !== y.shape[1]) {
        throw new FormatError(source, `${name} ${fmt(t.shape)} has rank ${t.shape[1]} but ${yName} ${fmt(y.shape)} has rank ${y.shape[1]}: lora.0 is [in, r] and lora.1 is [out, r] with the same r`);
      }
      out.set(prefix + LORA_A, transposed(t, `${name} (transposed)`));
      out.set(prefix + LORA_B, { ...y, name: yName });
      continue;
    }
    if (isFullMatrix(name, t.shape)) {
      throw new FormatError(source, `${name} ${fmt(t.shape)} is a full matrix, which web-rwkv adds to the model's (W += f·M) rather than replacing; only LoRA factors (*.lora.0/1), vectors and time_state are read from an ai00 LoRA`);
    }
    out.set(name, ai00Transposes(name, t.shape) ? transposed(t, name) : t);
  }
  return out;
}

/** One tensor of an ai00 file: its name, shape and f32 values (written as f16). */
export interface Ai00Tensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/**
 * What convert_safetensors.py makes of an adapter, in name order (safetensors' writer sorts by
 * name): every tensor renamed, transposed where it transposes, values to be written as f16.
 * Refuses what ai00 cannot apply as RWKV-PEFT meant it: PiSSA (no init subtraction), DiSHA (no
 * such kernel), ranks that are not a multiple of 4, and full matrices (added, not replaced).
 */
export function toAi00(a: Adapter): Ai00Tensor[] {
  if (a.pissaInit) throw new RwkvInputError(a.source, "ai00 has no PiSSA (it cannot subtract the init_lora product): merge it with `rwkv merge` and convert the merged model instead");
  const out: Ai00Tensor[] = [];
  for (const [name, t] of a.tensors) {
    if (name.endsWith(DISHA) || name.endsWith(BONE)) throw new RwkvInputError(a.source, `${name} is a DiSHA tensor, which ai00/web-rwkv cannot apply: merge it with \`rwkv merge\` instead`);
    if (name.endsWith(INIT_LORA_A) || name.endsWith(INIT_LORA_B)) throw new RwkvInputError(a.source, `${name} is a PiSSA init tensor, which ai00 has no use for`);
    if (name.endsWith(LORA_A)) {
      const r = t.shape[0];
      if (r % AI00_RANK_MULTIPLE !== 0) throw new RwkvInputError(a.source, `${name} has rank ${r}: web-rwkv's LoRA kernel needs a rank that is a multiple of ${AI00_RANK_MULTIPLE}`);
    } else if (!name.endsWith(LORA_B) && isFullMatrix(ai00Name(name), t.shape)) {
      throw new RwkvInputError(a.source, `${name} ${fmt(t.shape)} is a full matrix: web-rwkv would add it to the model's (W += M) instead of replacing it; merge this adapter with \`rwkv merge\` instead`);
    }
    const n = ai00Name(name);
    const e = ai00Transposes(n, t.shape) ? transposed(t, n) : t;
    out.push({ name: n, shape: e.shape, data: e.toFloat32() });
  }
  return out.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
}
