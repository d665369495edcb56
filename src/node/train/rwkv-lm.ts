import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import type { Checkpoint } from "../../core/formats/checkpoint.js";
import { pthChunks } from "../../core/formats/pth-writer.js";
import { toBf16Bytes } from "../../core/formats/quantize.js";
import type { ModelConfig } from "../../core/model/model.js";
import { type RwkvLmSupport, versionModule, versionsWith } from "../../core/model/versions.js";
import type { ParamStore } from "../../core/train/params.js";
import { numel, type TensorEntry } from "../../core/tensor.js";
import { writeFileAtomic } from "../atomic-write.js";

/*
 * Continuing a run on RWKV-LM's own PyTorch/DeepSpeed trainer (BlinkDL/RWKV-LM: RWKV-v7/train_temp
 * for RWKV-7, RWKV-v5 with --my_testing x060 for RWKV-6), and coming back.
 *
 * Out: DIR/rwkv-lm/ holds
 *   rwkv-init.pth      the weights as RWKV-LM's train.py writes its own (torch.save of the state
 *                      dict, bf16, its names, shapes and order); `--train_stage 3` picks up
 *                      rwkv-init.pth (or the newest rwkv-N.pth) from --proj_dir by itself;
 *   data/train.bin/.idx the run's training tokens as the binidx (Megatron MMapIndexedDataset)
 *                      file train.py reads with --data_type binidx;
 *   train.sh           the train.py command line with this run's sizes, magic_prime and schedule.
 * In: `rwkv train --init-from rwkv-N.pth` checks the file is a complete RWKV-LM state dict of a
 * version RWKV-LM trains (names, shapes) before fine-tuning it like --model.
 */

/** RWKV-LM's per-GPU "mini epoch" is always this many samples (dataset.py asserts it). */
const SAMPLES_PER_MINI_EPOCH = 40320;
/** train.py's dim_ffn default for x060 (3.5·C rounded down to 32) and its divisibility asserts. */
const DIM_MULTIPLE = 32;
/** train.py: "try 10 if you load a model". */
const RESUME_WARMUP_STEPS = 10;
/** A DeepSpeed-wrapped module's state dict prefixes every key with this (train.py strips it too). */
const DEEPSPEED_PREFIX = "_forward_module.";
/** binidx dtype codes (RWKV-LM src/binidx.py): 8 = uint16, 4 = int32. */
const BINIDX_UINT16 = 8, BINIDX_INT32 = 4;
const BINIDX_MAGIC = Uint8Array.from([0x4d, 0x4d, 0x49, 0x44, 0x49, 0x44, 0x58, 0x00, 0x00]); // "MMIDIDX\0\0"

/** The (name, shape) list RWKV-LM's model.state_dict() has for this config, in its order (the version's layout). */
export function rwkvLmLayout(config: ModelConfig): Array<[string, number[]]> {
  return (versionModule(config.version).layout?.(config) ?? []).map(({ name, shape }) => [name, [...shape]]);
}

/** The version's RWKV-LM trainer, or null when RWKV-LM has none for it. */
function rwkvLmOf(config: ModelConfig): RwkvLmSupport | null {
  return versionModule(config.version).rwkvLm ?? null;
}

/** Why RWKV-LM's trainer cannot take this model as is (empty: it can). */
export function rwkvLmProblems(config: ModelConfig, tensors: ReadonlyMap<string, { readonly shape: readonly number[] }>): string[] {
  const { nEmbd: C, dimFfn: F } = config;
  const lm = rwkvLmOf(config);
  if (!lm) {
    const trainers = versionsWith("rwkvLm").map((v) => { const m = versionModule(v); return `${m.name} (${m.rwkvLm!.folder}, ${m.rwkvLm!.myTesting})`; });
    return [`RWKV-${config.version} is not supported (RWKV-LM's current trainers are for ${trainers.join(" and ")})`];
  }
  const problems: string[] = [];
  if (C % DIM_MULTIPLE !== 0 || F % DIM_MULTIPLE !== 0) problems.push(`n_embd ${C} and dim_ffn ${F} must be multiples of ${DIM_MULTIPLE}`);
  problems.push(...lm.problems(config));
  const want = rwkvLmLayout(config);
  const names = new Set(want.map(([n]) => n));
  const missing = want.filter(([n]) => !tensors.has(n)).map(([n]) => n);
  const extra = [...tensors.keys()].filter((n) => !names.has(n));
  const shapes = want.filter(([n, s]) => tensors.has(n) && tensors.get(n)!.shape.join(",") !== s.join(","))
    .map(([n, s]) => `${n} is [${tensors.get(n)!.shape.join(",")}], RWKV-LM has [${s.join(",")}]`);
  const few = (list: string[]) => list.slice(0, 4).join(", ") + (list.length > 4 ? ` and ${list.length - 4} more` : "");
  if (missing.length) problems.push(`missing ${few(missing)}`);
  if (extra.length) problems.push(`not in RWKV-LM's model: ${few(extra)}`);
  if (shapes.length) problems.push(few(shapes));
  return problems;
}

/** The largest prime p ≡ 2 (mod 3) below data/ctx − 1 that dataset.py accepts (p / (data//ctx) in (0.9, 1]), or 0. */
export function magicPrime(tokens: number, ctx: number): number {
  const slots = Math.floor(tokens / ctx);
  for (let p = Math.floor(tokens / ctx - 1); p > 0.9 * slots; p--) if (p % 3 === 2 && isPrime(p)) return p;
  return 0;
}

function isPrime(n: number): boolean {
  if (n < 2) return false;
  if (n % 2 === 0 || n % 3 === 0) return n <= 3;
  for (let i = 5; i * i <= n; i += 6) if (n % i === 0 || n % (i + 2) === 0) return false;
  return true;
}

/** The binidx pair for one document of `tokens` (what RWKV-LM's MMapIndexedDataset reads). */
export function binidx(tokens: Uint16Array | Uint32Array, vocabSize: number): { bin: Uint8Array; idx: Uint8Array } {
  const wide = vocabSize > 0xffff + 1;
  const bin = new Uint8Array(tokens.length * (wide ? 4 : 2));
  const dv = new DataView(bin.buffer);
  for (let i = 0; i < tokens.length; i++) {
    if (wide) dv.setInt32(4 * i, tokens[i], true); else dv.setUint16(2 * i, tokens[i], true);
  }
  // magic, u64 version 1, u8 dtype, u64 #sequences (1), u64 #doc_idx (2), i32 sizes, i64 pointers, i64 doc_idx [0, 1]
  const idx = new Uint8Array(9 + 8 + 1 + 8 + 8 + 4 + 8 + 16);
  const x = new DataView(idx.buffer);
  idx.set(BINIDX_MAGIC, 0);
  let o = 9;
  x.setBigUint64(o, 1n, true); o += 8;
  x.setUint8(o, wide ? BINIDX_INT32 : BINIDX_UINT16); o += 1;
  x.setBigUint64(o, 1n, true); o += 8;
  x.setBigUint64(o, 2n, true); o += 8;
  x.setInt32(o, tokens.length, true); o += 4;
  x.setBigInt64(o, 0n, true); o += 8;
  x.setBigInt64(o, 0n, true); o += 8;
  x.setBigInt64(o, 1n, true);
  return { bin, idx };
}

export interface RwkvLmRun {
  readonly ctx: number;
  readonly batch: number;
  /** The learning rate the run had reached, and its final one. */
  readonly lrNow: number;
  readonly lrFinal: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly adamEps: number;
  readonly weightDecay: number;
  readonly gradClip: number;
}

/** Writes DIR (rwkv-init.pth, data/train.bin/.idx, train.sh); returns the files and the command. */
export async function exportRwkvLm(params: ParamStore, config: ModelConfig, train: Uint16Array | Uint32Array, run: RwkvLmRun, dir: string): Promise<{ files: string[]; command: string }> {
  const problems = rwkvLmProblems(config, new Map(params.list.map((p) => [p.name, p])));
  if (problems.length) throw new RwkvInputError("--export rwkv-lm", `RWKV-LM's trainer cannot continue this model: ${problems.join("; ")}`);
  const prime = magicPrime(train.length, run.ctx);
  if (prime === 0) throw new RwkvInputError("--export rwkv-lm", `${train.length} training tokens are too few for RWKV-LM's sampler at ctx_len ${run.ctx} (it needs a prime ≡ 2 mod 3 near tokens/ctx_len)`);
  mkdirSync(join(dir, "data"), { recursive: true });
  // In RWKV-LM's order (the layout), bf16 as its train.py saves under --precision bf16.
  const byName = new Map(params.list.map((p) => [p.name, p]));
  const tensors = rwkvLmLayout(config).map(([name, shape]) => {
    const p = byName.get(name)!;
    if (numel(shape) !== p.data.length) throw new Error(`${name}: ${p.data.length} values for [${shape}]`);
    return { name, shape, dtype: "bf16" as const, data: () => toBf16Bytes(Float32Array.from(p.data)) };
  });
  const pth = join(dir, "rwkv-init.pth");
  await writeFileAtomic(pth, pthChunks(tensors, { archiveName: "rwkv-init" }));
  const { bin, idx } = binidx(train, config.vocabSize);
  await writeFileAtomic(join(dir, "data", "train.bin"), [bin]);
  await writeFileAtomic(join(dir, "data", "train.idx"), [idx]);
  const command = trainCommandLine(config, run, dir, prime);
  const script = join(dir, "train.sh");
  await writeFileAtomic(script, [new TextEncoder().encode(command)]);
  return { files: [pth, join(dir, "data", "train.bin"), join(dir, "data", "train.idx"), script], command };
}

/** The train.py command that continues from DIR on N_NODE × GPU_PER_NODE GPUs (DeepSpeed stage 2, bf16). */
function trainCommandLine(config: ModelConfig, run: RwkvLmRun, dir: string, prime: number): string {
  const lm = rwkvLmOf(config);
  if (!lm) throw new RwkvInputError("rwkv-lm", `RWKV-LM has no trainer for RWKV-${config.version}`);
  const lines = [
    "#!/bin/sh",
    `# Continue this run on RWKV-LM (BlinkDL/RWKV-LM ${lm.folder} (${lm.myTesting})): run from that folder, e.g.`,
    `#   cd RWKV-LM/${lm.folder} && N_NODE=1 GPU_PER_NODE=8 M_BSZ=${run.batch} sh ${join(dir, "train.sh")}`,
    `# M_BSZ is per GPU; N_NODE x GPU_PER_NODE x M_BSZ must divide ${SAMPLES_PER_MINI_EPOCH} (RWKV-LM's mini-epoch).`,
    "# --train_stage 3 loads the newest rwkv-N.pth (at first rwkv-init.pth) from --proj_dir and saves",
    "# rwkv-N.pth every EPOCH_SAVE mini-epochs and rwkv-final.pth after one pass over the data",
    "# (my_exit_tokens = magic_prime x ctx_len). Bring it back: rwkv train --init-from PROJ_DIR/rwkv-final.pth ...",
    `PROJ_DIR="\${PROJ_DIR:-${dir}}"`,
    'N_NODE="${N_NODE:-1}"',
    'GPU_PER_NODE="${GPU_PER_NODE:-1}"',
    `M_BSZ="\${M_BSZ:-${run.batch}}"`,
    'EPOCH_SAVE="${EPOCH_SAVE:-1}"',
    [
      "python train.py --load_model \"0\" --wandb \"\" --proj_dir \"$PROJ_DIR\"",
      `--my_testing ${lm.myTesting} --ctx_len ${run.ctx} --train_stage 3 --epoch_count 999999 --epoch_begin 0`,
      `--data_file "$PROJ_DIR/data/train" --data_type binidx --vocab_size ${config.vocabSize}`,
      `--my_exit_tokens ${prime * run.ctx} --magic_prime ${prime}`,
      `--n_layer ${config.nLayer} --n_embd ${config.nEmbd} --dim_ffn ${config.dimFfn} --head_size ${config.headSize}`,
      `--lr_init ${Number(run.lrNow.toPrecision(6))} --lr_final ${run.lrFinal} --warmup_steps ${RESUME_WARMUP_STEPS}`,
      `--beta1 ${run.beta1} --beta2 ${run.beta2} --adam_eps ${run.adamEps} --weight_decay ${run.weightDecay} --grad_clip ${run.gradClip}`,
      "--epoch_save \"$EPOCH_SAVE\" --micro_bsz \"$M_BSZ\" --num_nodes \"$N_NODE\" --devices \"$GPU_PER_NODE\"",
      `--accelerator gpu --precision bf16 --strategy deepspeed_stage_2 --grad_cp 1${lm.extraFlags.map((f) => " " + f).join("")} --enable_progress_bar True`,
    ].join(" \\\n  "),
  ];
  return lines.join("\n") + "\n";
}

/** The checkpoint with DeepSpeed's module prefix removed from its names (train.py does the same when it loads). */
export function stripDeepSpeed(ckpt: Checkpoint): Checkpoint {
  const tensors = new Map([...ckpt.tensors.values()].map((t) => {
    const name = t.name.startsWith(DEEPSPEED_PREFIX) ? t.name.slice(DEEPSPEED_PREFIX.length) : t.name;
    // A wrapper, not a spread: readers may implement toFloat32 on a prototype.
    const entry: TensorEntry = { name, dtype: t.dtype, shape: t.shape, toFloat32: () => t.toFloat32() };
    return [name, entry] as const;
  }));
  return { ...ckpt, tensors };
}
