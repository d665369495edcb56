import { RwkvInputError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { numel, type TensorEntry } from "../tensor.js";
import type { ModelConfig, Version } from "./model.js";
import { linearRange } from "./random-ranges.js";
import { DEFAULT_HEAD_SIZE } from "./shapes.js";
import { versionModule, versionsWith } from "./versions.js";

/*
 * Random models of any size, built in memory for benchmarks and tests: a Checkpoint with a real
 * release's tensor names and shapes whose values are drawn from a seeded generator. No tensor is
 * held: each toFloat32() regenerates its values from (seed, name), so a 190M-parameter model costs
 * only what the built model keeps, as when it is loaded from a file.
 *
 * Values are plausible rather than trained: Linear weights ~ U with std gain/√in (activations stay
 * O(1) through the layers), no all-zero tensors (the official init zeroes some LoRA factors, which
 * would skip work a trained model does), norms near 1, mixes in (0, 1). Names, shapes and the
 * version-specific ranges come from the version modules (layout, randomRange).
 */

export interface RandomModelSpec {
  readonly version: Version;
  readonly nLayer: number;
  readonly nEmbd: number;
  readonly vocabSize: number;
  /** Same seed, same weights (default 1). */
  readonly seed?: number;
}

/** How a tensor's values are drawn: uniform on [lo, hi]. */
interface TensorSpec { readonly name: string; readonly shape: readonly number[]; readonly lo: number; readonly hi: number }

/** Rows of ggml blocks: quantized matrices need widths that are whole blocks of 32, and heads of 64. */
const WIDTH_MULTIPLE = DEFAULT_HEAD_SIZE;
/** Norm weights near 1, biases near 0. */
const NORM_WEIGHT = [0.8, 1.2] as const, NORM_BIAS = [-0.1, 0.1] as const;
/** The embedding is re-normed by ln0 at load: any scale works. */
const EMB_RANGE = [-1, 1] as const;

/** Versions randomCheckpoint can build. */
export const RANDOM_MODEL_VERSIONS: readonly Version[] = versionsWith("randomRange");

/**
 * The version's released layout at this size (its own rules for heads, dim_ffn and LoRA widths)
 * with each tensor's range: the common kinds here, the rest from the version module.
 */
function randomTensors(spec: RandomModelSpec): TensorSpec[] {
  const m = versionModule(spec.version);
  const { nLayer, nEmbd: C, vocabSize } = spec;
  const H = m.heads ? C / DEFAULT_HEAD_SIZE : 1;
  const cfg: ModelConfig = {
    version: spec.version, nLayer, nEmbd: C, vocabSize, dimAtt: C, dimFfn: m.defaultDimFfn(C), nHead: H, headSize: C / H,
  };
  return m.layout!(cfg).map(({ name, shape }) => {
    // The version's own kinds first (e.g. per-token tables stored as .weight), then the common ones.
    const range = m.randomOverride?.(name, shape) ?? commonRange(name, shape) ?? m.randomRange!(name, shape);
    return { name, shape, lo: range[0], hi: range[1] };
  });
}

/** The range of a tensor of a kind every version has (embedding, norms, Linear weights), else undefined. */
function commonRange(name: string, shape: readonly number[]): readonly [number, number] | undefined {
  if (name === "emb.weight") return EMB_RANGE;
  if (/(^|\.)ln(0|1|2|_out|_x)\.weight$/.test(name)) return NORM_WEIGHT;
  if (/(^|\.)ln(0|1|2|_out|_x)\.bias$/.test(name)) return NORM_BIAS;
  if (name.endsWith(".weight") && shape.length === 2) return linearRange(shape[1]); // Linear (out, in)
  return undefined;
}

/** Checks a spec; every problem is an RwkvInputError naming the option. */
export function checkRandomSpec(spec: RandomModelSpec): void {
  if (!RANDOM_MODEL_VERSIONS.includes(spec.version)) {
    throw new RwkvInputError("random model", `RWKV-${spec.version} is not available (random models: ${RANDOM_MODEL_VERSIONS.map((v) => `RWKV-${v}`).join(", ")})`);
  }
  for (const [what, n] of [["layers", spec.nLayer], ["width", spec.nEmbd], ["vocabulary", spec.vocabSize]] as const) {
    if (!Number.isSafeInteger(n) || n < 1) throw new RwkvInputError("random model", `${what} must be a positive integer, got ${n}`);
  }
  if (spec.nEmbd % WIDTH_MULTIPLE !== 0) {
    throw new RwkvInputError("random model", `width ${spec.nEmbd} is not a multiple of ${WIDTH_MULTIPLE} (the head size, and whole ggml blocks)`);
  }
}

/** A seeded random model with a real release's tensor names and shapes (values regenerated on each read). */
export function randomCheckpoint(spec: RandomModelSpec): Checkpoint {
  checkRandomSpec(spec);
  const seed = spec.seed ?? 1;
  const tensors = new Map<string, TensorEntry>();
  for (const t of randomTensors(spec)) {
    const n = numel(t.shape);
    tensors.set(t.name, {
      name: t.name, dtype: "f32", shape: t.shape,
      toFloat32: () => {
        const out = new Float32Array(n);
        const next = mulberry32(hashString(t.name) ^ Math.imul(seed, 0x9e3779b9));
        const span = t.hi - t.lo;
        for (let i = 0; i < n; i++) out[i] = t.lo + next() * span;
        return out;
      },
    });
  }
  const { version, nLayer, nEmbd, vocabSize } = spec;
  return {
    format: "safetensors",
    source: `random RWKV-${version} L${nLayer} C${nEmbd} V${vocabSize} seed ${seed}`,
    tensors,
    metadata: { random: JSON.stringify({ version, nLayer, nEmbd, vocabSize, seed }) },
  };
}

/** FNV-1a of a string (a tensor's name picks its own random stream). */
function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** mulberry32: a fast 32-bit generator, uniform in [0, 1); plenty for weights that only need to look random. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
