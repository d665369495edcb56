import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { type Adapter, BONE, DISHA, LORA_A } from "../core/adapters/adapter.js";
import { fromAi00, isAi00Adapter } from "../core/adapters/ai00.js";
import { RwkvInputError } from "../core/errors.js";
import type { Model } from "../core/model/model.js";
import type { TensorEntry } from "../core/tensor.js";
import { loadCheckpoint } from "./load.js";

/*
 * Adapter files from disk: RWKV-PEFT's slim .pth/.safetensors state dicts, ai00/web-rwkv's f16
 * LoRA safetensors (core/adapters/ai00.ts), or a HuggingFace `peft` directory
 * (adapter_config.json + adapter_model.safetensors), as the newer RWKV-PEFT and the peft library
 * write them.
 */

export type AdapterKind = "lora" | "pissa" | "disha" | "any";

export interface AdapterSpec {
  readonly path: string;
  /** What the user said the file is; the file must hold tensors of that kind. Default "any". */
  readonly kind?: AdapterKind;
  /** LoRA alpha (RWKV-PEFT files do not store it); a peft directory's own config wins when absent. */
  readonly alpha?: number;
  /** PiSSA: the file with the `init_lora_A/B` tensors saved at initialisation. */
  readonly init?: string;
}

export const PEFT_CONFIG = "adapter_config.json";
export const PEFT_WEIGHTS = "adapter_model.safetensors";
/** Prefix peft puts before the wrapped model's module names. */
const PEFT_PREFIX = "base_model.model.";

interface PeftConfig { r?: unknown; lora_alpha?: unknown; use_rslora?: unknown; peft_type?: unknown }

/** Opens an adapter; `close()` releases its files once the merged model has been built or written. */
export function openAdapter(spec: AdapterSpec): { adapter: Adapter; close(): void } {
  const closers: Array<() => void> = [];
  const close = () => { for (const c of closers) c(); };
  try {
    let adapter = isDirectory(spec.path) ? readPeftDirectory(spec, closers) : readSlim(spec, closers);
    if (spec.kind === "pissa") {
      if (spec.init === undefined) throw new RwkvInputError(spec.path, "a PiSSA adapter needs its init file (the init_lora_A/B saved when training started)");
      const init = loadCheckpoint(spec.init);
      closers.push(init.close);
      adapter = { ...adapter, pissaInit: { source: spec.init, tensors: init.checkpoint.tensors } };
    }
    checkKind(adapter, spec.kind ?? "any");
    return { adapter, close };
  } catch (e) {
    close();
    throw e;
  }
}

/**
 * Keeps the adapter of `spec` unmerged in `model` under `name` (Model.loadAdapter: states whose
 * `adapter` is `name` run with it). Throws UnmergedUnsupportedError for adapters that must be merged.
 */
export function loadAdapterUnmerged(model: Model, name: string, spec: AdapterSpec): void {
  if (!model.loadAdapter) throw new RwkvInputError(spec.path, "this model cannot keep adapters unmerged (no loadAdapter)");
  const { adapter, close } = openAdapter(spec);
  try {
    model.loadAdapter(name, adapter);
  } finally {
    close();
  }
}

function isDirectory(path: string): boolean {
  try { return statSync(path).isDirectory(); } catch { return false; }
}

/** A slim state dict: RWKV-PEFT's names, or ai00/web-rwkv's (told apart by their *.lora.0/1 factors). */
function readSlim(spec: AdapterSpec, closers: Array<() => void>): Adapter {
  const { checkpoint, close } = loadCheckpoint(spec.path);
  closers.push(close);
  const tensors = isAi00Adapter(checkpoint.tensors.keys()) ? fromAi00(spec.path, checkpoint.tensors) : checkpoint.tensors;
  return { source: spec.path, tensors, alpha: spec.alpha };
}

/** A peft LoRA directory: tensors renamed to RWKV-PEFT's names, alpha (and rsLoRA's √r scale) from its config. */
function readPeftDirectory(spec: AdapterSpec, closers: Array<() => void>): Adapter {
  const cfgPath = join(spec.path, PEFT_CONFIG), weights = join(spec.path, PEFT_WEIGHTS);
  if (!existsSync(cfgPath)) throw new RwkvInputError(spec.path, `a directory adapter needs ${PEFT_CONFIG} (HuggingFace peft format)`);
  if (!existsSync(weights)) throw new RwkvInputError(spec.path, `a directory adapter needs ${PEFT_WEIGHTS} (HuggingFace peft format)`);
  let cfg: PeftConfig;
  try {
    cfg = JSON.parse(readFileSync(cfgPath, "utf8")) as PeftConfig;
  } catch (e) {
    throw new RwkvInputError(cfgPath, `not valid JSON (${(e as Error).message})`);
  }
  if (typeof cfg !== "object" || cfg === null) throw new RwkvInputError(cfgPath, "not a JSON object");
  if (cfg.peft_type !== undefined && cfg.peft_type !== "LORA") throw new RwkvInputError(cfgPath, `peft_type ${JSON.stringify(cfg.peft_type)} is not supported (only LORA)`);
  const r = Number(cfg.r), alpha = Number(cfg.lora_alpha);
  if (!(Number.isInteger(r) && r > 0)) throw new RwkvInputError(cfgPath, `"r" must be a positive integer, got ${JSON.stringify(cfg.r)}`);
  if (!(Number.isFinite(alpha) && alpha > 0)) throw new RwkvInputError(cfgPath, `"lora_alpha" must be a positive number, got ${JSON.stringify(cfg.lora_alpha)}`);
  const { checkpoint, close } = loadCheckpoint(weights);
  closers.push(close);
  const tensors = new Map<string, TensorEntry>();
  for (const [name, t] of checkpoint.tensors) {
    const plain = name.startsWith(PEFT_PREFIX) ? name.slice(PEFT_PREFIX.length) : name;
    const renamed = plain.replace(/\.lora_([AB])\.weight$/, ".lora_$1");
    tensors.set(renamed, { ...t, name: renamed });
  }
  // rsLoRA scales by alpha/√r instead of alpha/r: the same as alpha·√r over r.
  const fileAlpha = cfg.use_rslora === true ? alpha * Math.sqrt(r) : alpha;
  return { source: spec.path, tensors, alpha: spec.alpha ?? fileAlpha };
}

function checkKind(a: Adapter, kind: AdapterKind): void {
  const names = [...a.tensors.keys()];
  if ((kind === "lora" || kind === "pissa") && !names.some((n) => n.endsWith(LORA_A))) {
    throw new RwkvInputError(a.source, `no *${LORA_A} tensors: not a ${kind === "lora" ? "LoRA" : "PiSSA"} adapter`);
  }
  if (kind === "disha" && !names.some((n) => n.endsWith(DISHA) || n.endsWith(BONE))) {
    throw new RwkvInputError(a.source, `no *${DISHA} (or *${BONE}) tensors: not a DiSHA adapter`);
  }
}

/** `PATH[:ALPHA]` of --lora: the alpha is a trailing `:number`, so paths with colons still work. */
export function parseLoraFlag(text: string): AdapterSpec {
  const m = /^(.*):([^:/\\]*)$/.exec(text);
  if (m && m[1] !== "" && /^[0-9.eE+-]+$/.test(m[2])) {
    const alpha = Number(m[2]);
    if (!(Number.isFinite(alpha) && alpha > 0)) throw new RwkvInputError("--lora", `alpha must be a positive number, got "${m[2]}"`);
    return { path: m[1], kind: "lora", alpha };
  }
  return { path: text, kind: "lora" };
}

/** `ADAPTER:INIT` of --pissa (split at the last colon); `flag` names the flag in errors. */
export function parsePissaFlag(text: string, flag = "--pissa"): AdapterSpec {
  const i = text.lastIndexOf(":");
  if (i <= 0 || i === text.length - 1) throw new RwkvInputError(flag, `expected ADAPTER:INIT (the trained file and its init_lora file), got "${text}"`);
  return { path: text.slice(0, i), kind: "pissa", init: text.slice(i + 1) };
}
