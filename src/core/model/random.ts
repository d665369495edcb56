import { RwkvInputError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import { numel, type TensorEntry } from "../tensor.js";
import type { Version } from "./model.js";

/*
 * Random models of any size, built in memory for benchmarks and tests: a Checkpoint with a real
 * release's tensor names and shapes whose values are drawn from a seeded generator. No tensor is
 * held: each toFloat32() regenerates its values from (seed, name), so a 190M-parameter model costs
 * only what the built model keeps, as when it is loaded from a file.
 *
 * Values are plausible rather than trained: Linear weights ~ U with std gain/√in (activations stay
 * O(1) through the layers), no all-zero tensors (the official init zeroes some LoRA factors, which
 * would skip work a trained model does), norms near 1, mixes in (0, 1).
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

type Layout = (spec: RandomModelSpec) => TensorSpec[];

/** std s ⇔ uniform on ±s√3. */
const SQRT3 = Math.sqrt(3);
/** Output std of a Linear layer for unit-std inputs. */
const LINEAR_GAIN = 0.5;
/** v7 head size N (every released v7 model). */
const V7_HEAD_SIZE = 64;
/** Rows of ggml blocks: quantized matrices need widths that are whole blocks of 32. */
const WIDTH_MULTIPLE = V7_HEAD_SIZE;

const uniform = (name: string, shape: readonly number[], lo: number, hi: number): TensorSpec => ({ name, shape, lo, hi });
const centred = (name: string, shape: readonly number[], halfWidth: number) => uniform(name, shape, -halfWidth, halfWidth);
/** A weight used as x·Wᵀ (or x·W) with `fanIn` inputs: std LINEAR_GAIN/√fanIn. */
const linear = (name: string, shape: readonly number[], fanIn: number) => centred(name, shape, (SQRT3 * LINEAR_GAIN) / Math.sqrt(fanIn));
const norm = (prefix: string, C: number): TensorSpec[] => [uniform(`${prefix}.weight`, [C], 0.8, 1.2), centred(`${prefix}.bias`, [C], 0.1)];

/** The train code's LoRA width: max(32, round(k·C^p / 32)·32) (RWKV-LM x070 `RWKV_Tmix_x070`). */
function loraWidth(C: number, k: number, p: number): number {
  return Math.max(32, Math.round((k * C ** p) / 32) * 32);
}

/** RWKV-7 (SPEC §2.2): for C = 768 the LoRA widths are the released 0.1B's 64, 64, 32, 128. */
const v7Layout: Layout = ({ nLayer: L, nEmbd: C, vocabSize: V }) => {
  const H = C / V7_HEAD_SIZE, F = 4 * C;
  const dims: Record<string, number> = { w: loraWidth(C, 1.8, 0.5), a: loraWidth(C, 1.8, 0.5), v: loraWidth(C, 1.3, 0.5), g: loraWidth(C, 0.6, 0.8) };
  const out: TensorSpec[] = [
    centred("emb.weight", [V, C], 1), // re-normed by ln0 at load: any scale works
    ...norm("blocks.0.ln0", C),
  ];
  for (let i = 0; i < L; i++) {
    const a = `blocks.${i}.att.`, f = `blocks.${i}.ffn.`;
    out.push(...norm(`blocks.${i}.ln1`, C), ...norm(`blocks.${i}.ln2`, C));
    for (const x of ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"]) out.push(uniform(a + x, [1, 1, C], 0, 1));
    out.push(uniform(a + "w0", [1, 1, C], -3, 1), centred(a + "a0", [1, 1, C], 1), centred(a + "v0", [1, 1, C], 1));
    for (const [n, D] of Object.entries(dims)) out.push(linear(a + n + "1", [C, D], C), linear(a + n + "2", [D, C], D));
    out.push(uniform(a + "k_k", [1, 1, C], 0.5, 1), uniform(a + "k_a", [1, 1, C], 0.5, 1.5), centred(a + "r_k", [H, V7_HEAD_SIZE], 0.5));
    for (const n of ["receptance", "key", "value", "output"]) out.push(linear(a + n + ".weight", [C, C], C));
    out.push(...norm(a + "ln_x", C));
    out.push(uniform(f + "x_k", [1, 1, C], 0, 1), linear(f + "key.weight", [F, C], C), linear(f + "value.weight", [C, F], F));
  }
  out.push(...norm("ln_out", C), linear("head.weight", [V, C], C));
  return out;
};

/** Head size of released RWKV-5/6 models (as v7). */
const V56_HEAD_SIZE = 64;
/** The v5/v6 train code's dim_ffn: 3.5·C rounded down to a multiple of 32. */
const ffnWidth = (C: number): number => Math.floor((3.5 * C) / 32) * 32;
/** log(-log decay) range: decays e^{-e^w} from 0.998 (w = -6) to 0.55 (w = -0.5), as trained models span. */
const LOG_DECAY = [-6, -0.5] as const;

/** Embedding, ln0, each layer's ln1/ln2 plus `layer(i)`, then ln_out and the head. */
function skeleton(L: number, C: number, V: number, layer: (i: number) => TensorSpec[]): TensorSpec[] {
  const out: TensorSpec[] = [centred("emb.weight", [V, C], 1), ...norm("blocks.0.ln0", C)];
  for (let i = 0; i < L; i++) out.push(...norm(`blocks.${i}.ln1`, C), ...norm(`blocks.${i}.ln2`, C), ...layer(i));
  out.push(...norm("ln_out", C), linear("head.weight", [V, C], C));
  return out;
}

/** The v4/v5 channel mix: time_mix_k/r, key (F, C), receptance (C, C), value (C, F). */
const channelMixTensors = (f: string, C: number, F: number, mix: "time_mix" | "time_maa"): TensorSpec[] => [
  uniform(`${f}${mix}_k`, [1, 1, C], 0, 1), uniform(`${f}${mix}_r`, [1, 1, C], 0, 1),
  linear(f + "key.weight", [F, C], C), linear(f + "receptance.weight", [C, C], C), linear(f + "value.weight", [C, F], F),
];

/** RWKV-4 (SPEC §3): dim_ffn 4C, per-channel time_decay and time_first. */
const v4Layout: Layout = ({ nLayer: L, nEmbd: C, vocabSize: V }) => skeleton(L, C, V, (i) => {
  const a = `blocks.${i}.att.`;
  return [
    ...["k", "v", "r"].map((x) => uniform(`${a}time_mix_${x}`, [1, 1, C], 0, 1)),
    uniform(a + "time_decay", [C], -6, 1), centred(a + "time_first", [C], 1),
    ...["key", "value", "receptance", "output"].map((n) => linear(`${a}${n}.weight`, [C, C], C)),
    ...channelMixTensors(`blocks.${i}.ffn.`, C, 4 * C, "time_mix"),
  ];
});

/** RWKV-5.2 "Eagle" (SPEC §4): per-head decay and bonus (H, N), a gate, ln_x. */
const v5Layout: Layout = ({ nLayer: L, nEmbd: C, vocabSize: V }) => skeleton(L, C, V, (i) => {
  const a = `blocks.${i}.att.`, H = C / V56_HEAD_SIZE;
  return [
    ...["k", "v", "r", "g"].map((x) => uniform(`${a}time_mix_${x}`, [1, 1, C], 0, 1)),
    uniform(a + "time_decay", [H, V56_HEAD_SIZE], ...LOG_DECAY), centred(a + "time_faaaa", [H, V56_HEAD_SIZE], 0.5),
    ...["receptance", "key", "value", "gate", "output"].map((n) => linear(`${a}${n}.weight`, [C, C], C)),
    ...norm(a + "ln_x", C),
    ...channelMixTensors(`blocks.${i}.ffn.`, C, ffnWidth(C), "time_mix"),
  ];
});

/** The v6 train code's LoRA widths for C < 4096: token-shift mixes 32 (x5), decay 64. */
const V6_MIX_LORA = 32, V6_DECAY_LORA = 64;

/** RWKV-6 "Finch" (SPEC §5): data-dependent token shift and decay through LoRAs. */
const v6Layout: Layout = ({ nLayer: L, nEmbd: C, vocabSize: V }) => skeleton(L, C, V, (i) => {
  const a = `blocks.${i}.att.`, H = C / V56_HEAD_SIZE;
  return [
    ...["x", "w", "k", "v", "r", "g"].map((x) => uniform(`${a}time_maa_${x}`, [1, 1, C], 0, 1)),
    linear(a + "time_maa_w1", [C, 5 * V6_MIX_LORA], C), linear(a + "time_maa_w2", [5, V6_MIX_LORA, C], V6_MIX_LORA),
    uniform(a + "time_decay", [1, 1, C], ...LOG_DECAY),
    linear(a + "time_decay_w1", [C, V6_DECAY_LORA], C), linear(a + "time_decay_w2", [V6_DECAY_LORA, C], V6_DECAY_LORA),
    centred(a + "time_faaaa", [H, V56_HEAD_SIZE], 0.5),
    ...["receptance", "key", "value", "gate", "output"].map((n) => linear(`${a}${n}.weight`, [C, C], C)),
    ...norm(a + "ln_x", C),
    ...channelMixTensors(`blocks.${i}.ffn.`, C, ffnWidth(C), "time_maa"),
  ];
});

/** DeepEmbed's gate width and the attention's widths, as the official 7a/7b/8 files hard-code them. */
const GATE = 32, ATTENTION_WIDTH = 256, CACHE_WIDTH = 32;

/** RWKV-7a: RWKV-7 plus DeepEmbed's per-layer (V, 32·32) table, its fold matrix and the gate's s0/s1/s2. */
const deepEmbedTensors = (i: number, C: number, V: number): TensorSpec[] => {
  const f = `blocks.${i}.ffn.`, F = 4 * C;
  return [
    centred(f + "s_emb.weight", [V, GATE * GATE], 0.1), linear(f + "s_emb_x.weight", [GATE * GATE, C], 10 * C), // a small fold
    linear(f + "s1", [C, GATE], C), linear(f + "s2", [GATE, F], 4 * GATE), uniform(f + "s0", [1, 1, F], 0.8, 1.2), // the gate stays near 1
  ];
};
const v7aLayout: Layout = (spec) => [...v7Layout(spec), ...perLayer(spec, (i) => deepEmbedTensors(i, spec.nEmbd, spec.vocabSize))];

/** RWKV-7b: 7a plus DeepEmbedAttention's qkv.* tensors. */
const v7bLayout: Layout = (spec) => [...v7aLayout(spec), ...perLayer(spec, (i) => {
  const q = `blocks.${i}.qkv.`, C = spec.nEmbd, V = spec.vocabSize, D = ATTENTION_WIDTH, E = CACHE_WIDTH;
  return [
    linear(q + "qq.weight", [D, C], C), linear(q + "k1", [C, E], C), linear(q + "k2", [E, D], E), linear(q + "v1", [C, E], C), linear(q + "v2", [E, C], E),
    uniform(q + "k_emb.weight", [V, D], 0.8, 1.2), linear(q + "k_emb_x.weight", [D, C], 10 * C),
    uniform(q + "v_emb.weight", [V, C], 0.8, 1.2), linear(q + "v_emb_x.weight", [C, C], 10 * C),
    uniform(q + "x_q", [1, 1, D], 0, 1), uniform(q + "x_k", [1, 1, D], 0, 1), uniform(q + "x_v", [1, 1, C], 0, 1),
    ...norm(q + "lnq", D), ...norm(q + "lnk", D), ...norm(q + "lnv", C),
  ];
})];

/** RWKV-8 rc00: RWKV-7 plus the channel mix's per-token output scale ffn.enn (V, C). */
const v8Layout: Layout = (spec) => [...v7Layout(spec), ...perLayer(spec, (i) => [uniform(`blocks.${i}.ffn.enn.weight`, [spec.vocabSize, spec.nEmbd], 0.8, 1.2)])];

/** The RWKV-8 rc00 hybrid: RWKV-8 rc00 without ln0, plus its attention's qkv.* tensors. */
const v8HybridLayout: Layout = (spec) => [...v8Layout(spec).filter((t) => !t.name.startsWith("blocks.0.ln0.")), ...perLayer(spec, (i) => {
  const q = `blocks.${i}.qkv.`, C = spec.nEmbd, V = spec.vocabSize, D = ATTENTION_WIDTH, E = CACHE_WIDTH;
  return [
    linear(q + "qq.weight", [D, C], C), linear(q + "kk.weight", [E, C], C), linear(q + "kkup.weight", [D, E], E),
    linear(q + "vv.weight", [E, C], C), linear(q + "vvup.weight", [C, E], E),
    uniform(q + "ennk.weight", [V, D], 0.8, 1.2), uniform(q + "emm.weight", [V, C], 0.8, 1.2),
    ...norm(q + "lnq", D), ...norm(q + "lnk", D), ...norm(q + "lnv", C),
  ];
})];

/** `layer(i)` for every layer, concatenated. */
function perLayer({ nLayer: L }: RandomModelSpec, layer: (i: number) => TensorSpec[]): TensorSpec[] {
  return Array.from({ length: L }, (_, i) => layer(i)).flat();
}

const LAYOUTS: Partial<Record<Version, Layout>> = {
  "4": v4Layout, "5.2": v5Layout, "6": v6Layout, "7": v7Layout, "7a": v7aLayout, "7b": v7bLayout, "8": v8Layout, "8-hybrid": v8HybridLayout,
};

/** Versions randomCheckpoint can build. */
export const RANDOM_MODEL_VERSIONS: readonly Version[] = (["4", "5.2", "6", "7", "7a", "7b", "8", "8-hybrid"] as const).filter((v) => LAYOUTS[v]);

/** Checks a spec; every problem is an RwkvInputError naming the option. */
export function checkRandomSpec(spec: RandomModelSpec): void {
  if (!LAYOUTS[spec.version]) {
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
  for (const t of LAYOUTS[spec.version]!(spec)) {
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
