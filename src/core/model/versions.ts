import { FormatError, RwkvInputError } from "../errors.js";
import type { FormatTable, LayerTable } from "../formats/tensor-map.js";
import type { TrainSupport } from "../train/version.js";
import type { Architecture, ModelConfig, Version } from "./model.js";
import type { TensorLayout, TensorShapes } from "./shapes.js";
import { v4 } from "./v4/index.js";
import { v51, v52 } from "./v5/index.js";
import { v6 } from "./v6/index.js";
import { v7 } from "./v7/index.js";
import { v7a } from "./v7a/index.js";
import { v7b } from "./v7b/index.js";
import { v8 } from "./v8/index.js";
import { v8Hybrid } from "./v8/hybrid.js";

export type { TensorLayout, TensorShapes } from "./shapes.js";

/*
 * The version registry: everything generic code needs to know about one RWKV generation lives in
 * that generation's module (src/core/model/vN/), and generic code asks the registry instead of
 * comparing version strings.
 *
 * Adding a generation (checklist):
 *   1. add its id to `Version` (model.ts);
 *   2. write src/core/model/vX/index.ts exporting a VersionModule: detection, config inference,
 *      tensor layout, eps, the inference Architecture (vX/infer.ts) and, where it applies, training
 *      (TrainSupport), random models and its rwkv.cpp / GGUF table rows (formats/tensor-map.ts);
 *      A generation that keeps RWKV-7's layout and adds tensors is built by v7Successor (v7/index.ts).
 *      A state that grows with the context (a KV cache) names its arrays in Architecture.growingState
 *      and checks them in checkGrowingState (see v7b/);
 *   3. put it in VERSIONS below, before any older generation whose tensors it also has (detection
 *      asks the modules in order, first match wins);
 *   4. add its golden model to test/versions.test.ts's detection table (shared/golden, or the
 *      repository's test/fixtures/golden for the generations after RWKV-7).
 */

/** The hyper-parameters a new model is made from (the rest follows from the version's rules). */
export interface LayoutSpec {
  readonly nLayer: number;
  readonly nEmbd: number;
  readonly vocabSize: number;
  /** Default: the version's (64 where it has heads). */
  readonly headSize?: number;
  /** Default: the version's defaultDimFfn. */
  readonly dimFfn?: number;
}

/** What RWKV-LM's trainer for this version needs to continue a run made here. */
export interface RwkvLmSupport {
  /** The RWKV-LM folder its train.py lives in, e.g. "RWKV-v7/train_temp". */
  readonly folder: string;
  /** train.py's --my_testing value. */
  readonly myTesting: string;
  /** Extra train.py flags this trainer needs. */
  readonly extraFlags: readonly string[];
  /** Why this trainer cannot take a model of this config (empty: it can), besides its tensor layout. */
  problems(cfg: ModelConfig): string[];
}

export interface VersionModule {
  readonly id: Version;
  /** Display name, e.g. "RWKV-7". */
  readonly name: string;
  /** Whether these tensor names are this version's (asked newest first; see VERSIONS). */
  detect(has: (name: string) => boolean): boolean;
  /** Hyper-parameters from tensor shapes. */
  inferConfig(t: TensorShapes): ModelConfig;
  /** Whether the model has heads (a head size to choose); RWKV-4 has one channel-wide recurrence. */
  readonly heads: boolean;
  /** dim_ffn of a new model of width C (the official trainer's default). */
  defaultDimFfn(C: number): number;
  /** GroupNorm (ln_x) eps of the official code, when the version has an ln_x. */
  readonly groupNormEps?: number;
  /** Inference: the block, its state layout, state tuning. */
  readonly architecture: Architecture;
  /** The full tensor layout in the official state-dict order (new models, random models, RWKV-LM export). */
  layout?(cfg: ModelConfig): TensorLayout[];
  /**
   * Value range of a random model's tensor that is not one of the common kinds (embedding, norms,
   * Linear weights): uniform on [lo, hi]. Present when random models of this version can be built.
   */
  randomRange?(name: string, shape: readonly number[]): readonly [number, number];
  /**
   * Ranges that take precedence over the common kinds: per-token tables stored as `.weight` that
   * are not Linear layers (a random model's table rows act as scales near 1, not as weights).
   */
  randomOverride?(name: string, shape: readonly number[]): readonly [number, number] | undefined;
  /**
   * A research preview (official demo code, no released checkpoints, e.g. RWKV-7a/7b/8 rc00): it
   * loads and runs, but is nobody's default (e.g. `rwkv bench --random` without a version).
   */
  readonly preview?: boolean;
  /** Training: blocks, initialisation, optimizer groups, FLOPs. */
  readonly train?: TrainSupport;
  /** Continuing runs on RWKV-LM. */
  readonly rwkvLm?: RwkvLmSupport;
  /** This version's rwkv.cpp tensor table (reader and writer). */
  readonly rwkvcpp: FormatTable;
  /** This version's GGUF table (absent: llama.cpp has no architecture for it). */
  readonly gguf?: LayerTable;
}

/** Every supported version, newest first: detection asks them in this order. */
export const VERSIONS: readonly VersionModule[] = [
  v8Hybrid, // has RWKV-8's ffn.enn too
  v8,
  v7b, // has 7a's DeepEmbed too
  v7a,
  v7, // matches every generation above
  v6, v52, v51, v4,
];

/** The module of a version id. */
export function versionModule(id: Version): VersionModule {
  const m = VERSIONS.find((v) => v.id === id);
  if (!m) throw new RwkvInputError("version", `RWKV-${String(id)} is not supported (supported: ${VERSIONS.map((v) => v.id).join(", ")})`);
  return m;
}

/** The ids of the modules that have `feature`, oldest first (for messages and option lists). */
export function versionsWith(feature: "train" | "randomRange" | "rwkvLm" | "gguf"): Version[] {
  return VERSIONS.filter((v) => v[feature] !== undefined).map((v) => v.id).reverse();
}

/** Which version these tensor names are (SPEC §2.3); a clear error when none. */
export function detectFromNames(has: (name: string) => boolean, source: string): VersionModule {
  if (!has("emb.weight")) throw new FormatError(source, "missing tensor emb.weight: not an RWKV checkpoint");
  const m = VERSIONS.find((v) => v.detect(has));
  if (!m) throw new FormatError(source, "unrecognised RWKV checkpoint: no blocks.0.att tensors of any known version");
  return m;
}
