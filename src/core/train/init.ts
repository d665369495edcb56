import { RwkvInputError } from "../errors.js";
import type { Version } from "../model/model.js";
import { DEFAULT_HEAD_SIZE } from "../model/shapes.js";
import { versionModule, versionsWith } from "../model/versions.js";
import type { TrainDType } from "../backend/train-kernels.js";
import { ParamStore } from "./params.js";
import type { TrainRng } from "./rng.js";
import type { InitContext } from "./version.js";

/*
 * A new model initialised as RWKV-LM does (SPEC §7.4): each block's `__init__` "fancy" per-channel
 * values for the time/mix/decay vectors, then `generate_init_weight` for the matrices:
 *   v5/v6/v7 (RWKV-v5/src/model.py, RWKV-v7/train_temp/src/model.py):
 *     emb U(±1e-4); head orthogonal, gain 0.5·sqrt(V/C) (V > C, else 0.5); att.key, att.gate
 *     orthogonal 0.1; att.output, ffn.value, ffn.receptance zero; other Linear weights orthogonal 1;
 *     ln_x.weight ((1+i)/L)^0.7; names without ".weight" (v7 w0, w1, w2, a*, v*, g*, k_k, k_a, r_k,
 *     x_*) keep their __init__ value (LoRA *1 zero, v7 *2 orthogonal 0.1, v6 *_w2 U(±0.01)).
 *   v4 (RWKV-v4neo/src/model.py): emb U(±lr_init); Linear weights orthogonal with gain
 *     sqrt(rows/cols) (if rows > cols) times 0 for att.key/receptance/output, ffn.value/receptance,
 *     0.5 for head, 1 otherwise.
 * Each version's part is its module's TrainSupport.initLayer (src/core/model/vN/train.ts).
 * Parameters appear in the official state-dict order, so an exported file lists them as torch does.
 * Orthogonal matrices come from a seeded normal matrix made orthonormal (Gram-Schmidt = QR with
 * positive diagonal, torch's sign convention); the values differ from torch's (another RNG).
 */

export interface NewModelSpec {
  readonly version: Version;
  readonly nLayer: number;
  readonly nEmbd: number;
  readonly vocabSize: number;
  /** v5.2/v6/v7 head size (default 64); v4 has no heads. */
  readonly headSize?: number;
  /** Default: 4·C for v4/v7, (3.5·C)//32·32 for v5.2/v6 (the trainers' defaults). */
  readonly dimFfn?: number;
  /** v4 only: emb is U(±lr_init) in RWKV-v4neo. */
  readonly lrInit?: number;
}

/** RWKV-LM asserts n_embd, dim_att, dim_ffn % 32 == 0 (its kernels' tiling); we keep the rule for exported files. */
const DIM_MULTIPLE = 32;
/** Gain of att.key/att.gate in the v5+ Linear rule. */
const KEY_GATE_GAIN = 0.1;
const LN_X_EXPONENT = 0.7;

export function validateSpec(s: NewModelSpec): void {
  const bad = (what: string) => { throw new RwkvInputError("model", what); };
  const m = versionModule(s.version);
  if (!m.train) bad(`${m.name} cannot be trained (training supports ${versionsWith("train").map((v) => `RWKV-${v}`).join(", ")})`);
  if (!(Number.isInteger(s.nLayer) && s.nLayer >= 1)) bad(`--layers must be a positive integer, got ${s.nLayer}`);
  if (!(Number.isInteger(s.nEmbd) && s.nEmbd >= DIM_MULTIPLE && s.nEmbd % DIM_MULTIPLE === 0)) bad(`--embd must be a positive multiple of ${DIM_MULTIPLE}, got ${s.nEmbd}`);
  if (!(Number.isInteger(s.vocabSize) && s.vocabSize >= 2)) bad(`--vocab must be at least 2, got ${s.vocabSize}`);
  if (m.heads) {
    const N = s.headSize ?? DEFAULT_HEAD_SIZE;
    if (!(Number.isInteger(N) && N > 0 && s.nEmbd % N === 0)) bad(`--head-size ${N} must divide --embd ${s.nEmbd}`);
  }
  if (s.dimFfn !== undefined && !(Number.isInteger(s.dimFfn) && s.dimFfn > 0)) bad(`dim_ffn must be a positive integer, got ${s.dimFfn}`);
}

/** A freshly initialised model. */
export function initModel(spec: NewModelSpec, rng: TrainRng, dtype: TrainDType = "f32"): ParamStore {
  validateSpec(spec);
  const m = versionModule(spec.version), train = m.train!;
  const { nLayer: L, nEmbd: C, vocabSize: V } = spec;
  const N = m.heads ? spec.headSize ?? DEFAULT_HEAD_SIZE : C;
  const H = C / N;
  const F = spec.dimFfn ?? m.defaultDimFfn(C);
  const store = new ParamStore(dtype);
  const count = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  const zeros = (name: string, shape: number[]) => store.add(name, shape);
  const ortho = (name: string, rows: number, cols: number, gain: number) => store.add(name, [rows, cols], orthogonal(rng, rows, cols, gain));
  const ctx: InitContext = {
    L, C, H, N, F,
    vec: (name, f, shape = [1, 1, C]) => store.add(name, shape, Float64Array.from({ length: count(shape) }, (_, c) => f(c))),
    zeros,
    ortho,
    uniform: (name, shape, a) => store.add(name, shape, Float64Array.from({ length: count(shape) }, () => (2 * rng.uniform() - 1) * a)),
    linear: (name, rows, cols) => {
      if (/\.att\.output\.|\.ffn\.value\.|\.ffn\.receptance\./.test(name)) return zeros(name, [rows, cols]);
      return ortho(name, rows, cols, /\.att\.(key|gate)\./.test(name) ? KEY_GATE_GAIN : 1);
    },
    lnX: (a, i) => { ctx.vec(a + "ln_x.weight", () => Math.pow((1 + i) / L, LN_X_EXPONENT), [C]); zeros(a + "ln_x.bias", [C]); },
  };
  const ones = (name: string) => ctx.vec(name, () => 1, [C]);

  ctx.uniform("emb.weight", [V, C], train.embInit(spec.lrInit));
  for (let i = 0; i < L; i++) {
    const b = `blocks.${i}.`;
    ones(b + "ln1.weight"); zeros(b + "ln1.bias", [C]);
    ones(b + "ln2.weight"); zeros(b + "ln2.bias", [C]);
    if (i === 0) { ones(b + "ln0.weight"); zeros(b + "ln0.bias", [C]); }
    // "ratio_0_to_1" (RWKV-LM divides by zero for L = 1) and "ratio_1_to_almost0".
    train.initLayer(ctx, { i, a: b + "att.", f: b + "ffn.", r01: L > 1 ? i / (L - 1) : 0, r1: 1 - i / L });
  }
  ones("ln_out.weight"); zeros("ln_out.bias", [C]);
  // Every trainer: orthogonal with gain 0.5·sqrt(V/C) when V > C, else 0.5.
  ortho("head.weight", V, C, V > C ? 0.5 * Math.sqrt(V / C) : 0.5);
  return store;
}

/**
 * torch.nn.init.orthogonal_: a (rows, cols) matrix with orthonormal columns (rows ≥ cols) or rows
 * (rows < cols), times gain. Gram-Schmidt (twice, for f64-level orthogonality) on a normal matrix.
 */
export function orthogonal(rng: TrainRng, rows: number, cols: number, gain: number): Float64Array {
  const tall = rows >= cols;
  const m = tall ? rows : cols, n = tall ? cols : rows; // work on an (m, n) matrix, m ≥ n, column-major
  const q = new Float64Array(m * n); // column j at j·m
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) q[j * m + i] = rng.normal(); // row-major draw order
  for (let j = 0; j < n; j++) {
    const cj = j * m;
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        const cp = p * m;
        let dot = 0;
        for (let i = 0; i < m; i++) dot += q[cp + i] * q[cj + i];
        for (let i = 0; i < m; i++) q[cj + i] -= dot * q[cp + i];
      }
    }
    let norm = 0;
    for (let i = 0; i < m; i++) norm += q[cj + i] * q[cj + i];
    norm = Math.sqrt(norm);
    for (let i = 0; i < m; i++) q[cj + i] /= norm;
  }
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      if (tall) out[i * cols + j] = q[j * m + i] * gain; // (rows, cols)[i][j]
      else out[j * cols + i] = q[j * m + i] * gain; // transposed back: (rows, cols)[j][i]
    }
  }
  return out;
}
