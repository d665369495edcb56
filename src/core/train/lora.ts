import { RwkvInputError } from "../errors.js";
import type { ParamStore } from "./params.js";
import type { TrainRng } from "./rng.js";

/*
 * LoRA training (RWKV-PEFT's layout): for each targeted Linear weight W (out, in) of the frozen
 * base, trainable A (r, in) and B (out, r) named `<prefix>.lora_A` / `.lora_B`, and the forward
 * uses W + (alpha / r) · B A. B starts at zero, so step 0 is exactly the base model; A starts
 * Kaiming-uniform like peft's and RWKV-PEFT's LoraLinear (bound 1/√in).
 */

/** RWKV-PEFT's default parts "att,ffn": every Linear of both mixers. */
export const DEFAULT_LORA_TARGETS: readonly string[] = [
  "att.receptance", "att.key", "att.value", "att.output", "att.gate", "ffn.key", "ffn.value", "ffn.receptance",
];

export interface LoraSpec {
  readonly rank: number;
  readonly alpha: number;
  /** Module names inside a block, e.g. "att.key"; a base weight `blocks.i.<target>.weight` gets an adapter. */
  readonly targets: readonly string[];
}

/** Adds A and B for every targeted base weight (in state-dict order); returns their names. */
export function addLoraParams(store: ParamStore, spec: LoraSpec, rng: TrainRng): string[] {
  const names: string[] = [];
  const bases = store.list.filter((p) => {
    const m = /^blocks\.\d+\.(.+)\.weight$/.exec(p.name);
    return m !== null && spec.targets.includes(m[1]) && p.shape.length === 2;
  }).map((p) => ({ name: p.name, shape: p.shape }));
  if (bases.length === 0) throw new RwkvInputError("--lora-targets", `none of ${spec.targets.join(", ")} is a Linear weight of this model`);
  for (const { name, shape } of bases) {
    const [out, inp] = shape;
    if (spec.rank > Math.min(out, inp)) throw new RwkvInputError("--lora", `rank ${spec.rank} exceeds ${name}'s smaller side ${Math.min(out, inp)}`);
    const prefix = name.slice(0, -".weight".length);
    const bound = 1 / Math.sqrt(inp);
    const A = new Float32Array(spec.rank * inp);
    for (let i = 0; i < A.length; i++) A[i] = (2 * rng.uniform() - 1) * bound;
    store.add(prefix + ".lora_A", [spec.rank, inp], A);
    store.add(prefix + ".lora_B", [out, spec.rank]);
    names.push(prefix + ".lora_A", prefix + ".lora_B");
  }
  return names;
}

/** Names of the LoRA tensors in a store (what is trained and exported). */
export function loraParamNames(store: ParamStore): string[] {
  return store.list.filter((p) => p.name.endsWith(".lora_A") || p.name.endsWith(".lora_B")).map((p) => p.name);
}
