import { RwkvInputError } from "../errors.js";
import type { TrainDType } from "./kernels.js";
import type { TrainVersion } from "./model.js";
import { ParamStore } from "./params.js";
import type { TrainRng } from "./rng.js";

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
 * Parameters appear in the official state-dict order, so an exported file lists them as torch does.
 * Orthogonal matrices come from a seeded normal matrix made orthonormal (Gram-Schmidt = QR with
 * positive diagonal, torch's sign convention); the values differ from torch's (another RNG).
 */

export interface NewModelSpec {
  readonly version: TrainVersion;
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

const DEFAULT_HEAD_SIZE = 64;
const V4_DEFAULT_LR_INIT = 6e-4;
/** RWKV-LM asserts n_embd, dim_att, dim_ffn % 32 == 0 (its kernels' tiling); we keep the rule for exported files. */
const DIM_MULTIPLE = 32;
/** v6 LoRA widths fixed in RWKV_Tmix_x060. */
const V6_MIX_LORA = 32, V6_DECAY_LORA = 64;
const EMB_INIT = 1e-4;
const LORA_INIT_SCALE = 0.1;
const V6_W2_INIT = 0.01;
const LN_X_EXPONENT = 0.7;

/** Python's round(): halves go to the even neighbour. */
function pyRound(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** v7's suggested LoRA width: max(32, round(k·sqrt(C)/32)·32). */
export function v7LoraDim(factor: number, C: number): number {
  return Math.max(DIM_MULTIPLE, pyRound((factor * Math.sqrt(C)) / DIM_MULTIPLE) * DIM_MULTIPLE);
}

/** v7 LoRA factors of train_temp: decay 2.5, in-context rate 2.5, value 1.7, gate 5. */
const V7_LORA_FACTORS = { w: 2.5, a: 2.5, v: 1.7, g: 5 } as const;

export function validateSpec(s: NewModelSpec): void {
  const bad = (what: string) => { throw new RwkvInputError("model", what); };
  if (!(Number.isInteger(s.nLayer) && s.nLayer >= 1)) bad(`--layers must be a positive integer, got ${s.nLayer}`);
  if (!(Number.isInteger(s.nEmbd) && s.nEmbd >= DIM_MULTIPLE && s.nEmbd % DIM_MULTIPLE === 0)) bad(`--embd must be a positive multiple of ${DIM_MULTIPLE}, got ${s.nEmbd}`);
  if (!(Number.isInteger(s.vocabSize) && s.vocabSize >= 2)) bad(`--vocab must be at least 2, got ${s.vocabSize}`);
  if (s.version !== "4") {
    const N = s.headSize ?? DEFAULT_HEAD_SIZE;
    if (!(Number.isInteger(N) && N > 0 && s.nEmbd % N === 0)) bad(`--head-size ${N} must divide --embd ${s.nEmbd}`);
  }
  if (s.dimFfn !== undefined && !(Number.isInteger(s.dimFfn) && s.dimFfn > 0)) bad(`dim_ffn must be a positive integer, got ${s.dimFfn}`);
}

/** A freshly initialised model. */
export function initModel(spec: NewModelSpec, rng: TrainRng, dtype: TrainDType = "f32"): ParamStore {
  validateSpec(spec);
  const { version: ver, nLayer: L, nEmbd: C, vocabSize: V } = spec;
  const N = ver === "4" ? C : spec.headSize ?? DEFAULT_HEAD_SIZE;
  const H = C / N;
  const F = spec.dimFfn ?? (ver === "4" || ver === "7" ? 4 * C : Math.floor((C * 3.5) / DIM_MULTIPLE) * DIM_MULTIPLE);
  const store = new ParamStore(dtype);
  const vec = (name: string, f: (c: number) => number, shape: number[] = [1, 1, C]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    store.add(name, shape, Float64Array.from({ length: n }, (_, c) => f(c)));
  };
  const ones = (name: string) => vec(name, () => 1, [C]);
  const zeros = (name: string, shape: number[]) => store.add(name, shape);
  const ortho = (name: string, rows: number, cols: number, gain: number) => store.add(name, [rows, cols], orthogonal(rng, rows, cols, gain));
  const uniform = (name: string, shape: number[], a: number) => store.add(name, shape, Float64Array.from({ length: shape.reduce((x, y) => x * y, 1) }, () => (2 * rng.uniform() - 1) * a));
  /** v5/v6/v7 generate_init_weight rule for a Linear weight. */
  const linear = (name: string, rows: number, cols: number) => {
    if (/\.att\.output\.|\.ffn\.value\.|\.ffn\.receptance\./.test(name)) return zeros(name, [rows, cols]);
    return ortho(name, rows, cols, /\.att\.(key|gate)\./.test(name) ? LORA_INIT_SCALE : 1);
  };
  /** v4neo generate_init_weight rule. */
  const linearV4 = (name: string, rows: number, cols: number) => {
    if (/\.att\.(key|receptance|output)\.|\.ffn\.(value|receptance)\./.test(name)) return zeros(name, [rows, cols]);
    return ortho(name, rows, cols, rows > cols ? Math.sqrt(rows / cols) : 1);
  };
  const pow = Math.pow;

  if (ver === "4") uniform("emb.weight", [V, C], spec.lrInit ?? V4_DEFAULT_LR_INIT);
  else uniform("emb.weight", [V, C], EMB_INIT);

  for (let i = 0; i < L; i++) {
    const b = `blocks.${i}.`, a = b + "att.", f = b + "ffn.";
    const r01 = L > 1 ? i / (L - 1) : 0; // "ratio_0_to_1" (RWKV-LM divides by zero for L = 1)
    const r1 = 1 - i / L; // "ratio_1_to_almost0"
    const ddd = (c: number) => c / C;
    ones(b + "ln1.weight"); zeros(b + "ln1.bias", [C]);
    ones(b + "ln2.weight"); zeros(b + "ln2.bias", [C]);
    if (i === 0) { ones(b + "ln0.weight"); zeros(b + "ln0.bias", [C]); }
    const zig3 = (n: number) => ((n + 1) % 3) - 1;
    const lnx = () => { vec(a + "ln_x.weight", () => pow((1 + i) / L, LN_X_EXPONENT), [C]); zeros(a + "ln_x.bias", [C]); };

    switch (ver) {
      case "4": {
        vec(a + "time_decay", (h) => -5 + 8 * pow(h / (C - 1), 0.7 + 1.3 * r01), [C]);
        vec(a + "time_first", (h) => Math.log(0.3) + zig3(h) * 0.5, [C]);
        vec(a + "time_mix_k", (c) => pow(ddd(c), r1));
        vec(a + "time_mix_v", (c) => pow(ddd(c), r1) + 0.3 * r01);
        vec(a + "time_mix_r", (c) => pow(ddd(c), 0.5 * r1));
        for (const m of ["key", "value", "receptance"]) linearV4(`${a}${m}.weight`, C, C);
        linearV4(a + "output.weight", C, C);
        vec(f + "time_mix_k", (c) => pow(ddd(c), r1));
        vec(f + "time_mix_r", (c) => pow(ddd(c), r1));
        linearV4(f + "key.weight", F, C);
        linearV4(f + "receptance.weight", C, C);
        linearV4(f + "value.weight", C, F);
        break;
      }
      case "5.2": {
        vec(a + "time_mix_k", (c) => pow(ddd(c), r1));
        vec(a + "time_mix_v", (c) => pow(ddd(c), r1) + 0.3 * r01);
        vec(a + "time_mix_r", (c) => pow(ddd(c), 0.5 * r1));
        vec(a + "time_mix_g", (c) => pow(ddd(c), 0.5 * r1));
        vec(a + "time_decay", (n) => -6 + 5 * pow(n / (C - 1), 0.7 + 1.3 * r01), [H, N]);
        vec(a + "time_faaaa", (n) => r01 * (1 - n / (C - 1)) + zig3(n) * 0.1, [H, N]);
        for (const m of ["receptance", "key", "value", "output", "gate"]) linear(`${a}${m}.weight`, C, C);
        lnx();
        vec(f + "time_mix_k", (c) => pow(ddd(c), r1));
        vec(f + "time_mix_r", (c) => pow(ddd(c), r1));
        linear(f + "key.weight", F, C);
        linear(f + "receptance.weight", C, C);
        linear(f + "value.weight", C, F);
        break;
      }
      case "6": {
        vec(a + "time_maa_x", (c) => 1 - pow(ddd(c), r1));
        vec(a + "time_maa_w", (c) => 1 - pow(ddd(c), r1));
        vec(a + "time_maa_k", (c) => 1 - pow(ddd(c), r1));
        vec(a + "time_maa_v", (c) => 1 - (pow(ddd(c), r1) + 0.3 * r01));
        vec(a + "time_maa_r", (c) => 1 - pow(ddd(c), 0.5 * r1));
        vec(a + "time_maa_g", (c) => 1 - pow(ddd(c), 0.5 * r1));
        zeros(a + "time_maa_w1", [C, 5 * V6_MIX_LORA]);
        uniform(a + "time_maa_w2", [5, V6_MIX_LORA, C], V6_W2_INIT);
        vec(a + "time_decay", (n) => -6 + 5 * pow(n / (C - 1), 0.7 + 1.3 * r01));
        zeros(a + "time_decay_w1", [C, V6_DECAY_LORA]);
        uniform(a + "time_decay_w2", [V6_DECAY_LORA, C], V6_W2_INIT);
        vec(a + "time_faaaa", (n) => r01 * (1 - n / (C - 1)) + zig3(n) * 0.1, [H, N]);
        for (const m of ["receptance", "key", "value", "output", "gate"]) linear(`${a}${m}.weight`, C, C);
        lnx();
        vec(f + "time_maa_k", (c) => 1 - pow(ddd(c), r1));
        vec(f + "time_maa_r", (c) => 1 - pow(ddd(c), r1));
        linear(f + "key.weight", F, C);
        linear(f + "receptance.weight", C, C);
        linear(f + "value.weight", C, F);
        break;
      }
      case "7": {
        const lin = (n: number) => n / (C - 1) - 0.5;
        const zig = (n: number) => { const z = ((n % N) - (N - 1) / 2) / ((N - 1) / 2); return z * Math.abs(z); };
        const www = (n: number) => -6 + 6 * pow(n / (C - 1), 1 + pow(r01, 0.3));
        vec(a + "x_r", (c) => 1 - pow(ddd(c), 0.2 * r1));
        vec(a + "x_w", (c) => 1 - pow(ddd(c), 0.9 * r1));
        vec(a + "x_k", (c) => 1 - pow(ddd(c), 0.7 * r1));
        vec(a + "x_v", (c) => 1 - pow(ddd(c), 0.7 * r1));
        vec(a + "x_a", (c) => 1 - pow(ddd(c), 0.9 * r1));
        vec(a + "x_g", (c) => 1 - pow(ddd(c), 0.2 * r1));
        /** ortho_init(zeros(D, C), 0.1): gain sqrt(D/C) when D > C. */
        const lora = (p: string, D: number) => {
          zeros(a + p + "1", [C, D]);
          ortho(a + p + "2", D, C, (D > C ? Math.sqrt(D / C) : 1) * LORA_INIT_SCALE);
        };
        lora("w", v7LoraDim(V7_LORA_FACTORS.w, C));
        vec(a + "w0", (n) => www(n) + 0.5 + zig(n) * 2.5);
        lora("a", v7LoraDim(V7_LORA_FACTORS.a, C));
        vec(a + "a0", (n) => -0.19 + zig(n) * 0.3 + lin(n) * 0.4);
        lora("v", v7LoraDim(V7_LORA_FACTORS.v, C));
        vec(a + "v0", (n) => 0.73 - lin(n) * 0.4);
        lora("g", v7LoraDim(V7_LORA_FACTORS.g, C));
        vec(a + "k_k", (n) => 0.71 - lin(n) * 0.1);
        vec(a + "k_a", () => 1.02);
        vec(a + "r_k", () => -0.04, [H, N]);
        for (const m of ["receptance", "key", "value", "output"]) linear(`${a}${m}.weight`, C, C);
        lnx();
        vec(f + "x_k", (c) => 1 - pow(ddd(c), pow(r1, 4)));
        linear(f + "key.weight", F, C);
        linear(f + "value.weight", C, F);
        break;
      }
    }
  }
  ones("ln_out.weight"); zeros("ln_out.bias", [C]);
  const headGain = ver === "4" ? 0.5 * (V > C ? Math.sqrt(V / C) : 1) : V > C ? 0.5 * Math.sqrt(V / C) : 0.5;
  ortho("head.weight", V, C, headGain);
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
