import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { loadCheckpoint } from "../src/node/load.js";
import type { TrainDType } from "../src/core/backend/train-kernels.js";
import { IGNORE_TARGET } from "../src/core/backend/train-ops.js";
import { ParamStore } from "../src/core/train/params.js";
import { sharedPath } from "./shared.js";

/** Shared by the train-*.test.ts files: golden model loading, targets, errors, seeds. */

export interface GoldenModel {
  readonly tokens: number[];
  readonly train_gpt: {
    readonly logits_fp64: number[][];
    readonly loss_fp64: number;
    readonly params_with_grad: string[];
    readonly desc: string;
  };
}

export const GOLDEN_VERSIONS = ["v4", "v5", "v6", "v7"] as const;

export function loadParams(path: string, dtype: TrainDType): ParamStore {
  const { checkpoint, close } = loadCheckpoint(path);
  try {
    return ParamStore.fromCheckpoint(checkpoint, dtype);
  } finally {
    close();
  }
}

/** Next-token targets of one sequence: position t predicts tokens[t+1]; the last has none. */
export function nextTokenTargets(tokens: readonly number[]): Int32Array {
  const targets = new Int32Array(tokens.length).fill(IGNORE_TARGET);
  for (let t = 0; t + 1 < tokens.length; t++) targets[t] = tokens[t + 1];
  return targets;
}

/** max |a - b| / max |b| (b = reference), and max |b|. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): { rel: number; max: number; abs: number } {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    const x = Math.abs(a[i] - b[i]);
    d = Number.isNaN(x) ? NaN : Math.max(d, x);
    m = Math.max(m, Math.abs(b[i]));
  }
  return { rel: m > 0 ? d / m : d, max: m, abs: d };
}

/** Deterministic pseudo-random numbers in [lo, hi) for test inputs. */
export function seeded(seed: number): (lo?: number, hi?: number) => number {
  let s = seed >>> 0;
  return (lo = -1, hi = 1) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return lo + ((s >>> 8) / 2 ** 24) * (hi - lo);
  };
}

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");

/** `chars` of tiny Shakespeare from ../shared written to DIR/data.txt (null, test skipped, without it). */
export function shakespeareFile(t: TestContext, dir: string, chars: number): string | null {
  const src = sharedPath(t, "data", "tinyshakespeare", "input.txt");
  if (!src) return null;
  const p = join(dir, "data.txt");
  writeFileSync(p, readFileSync(src, "utf8").slice(0, chars));
  return p;
}

/** Runs `rwkv ARGV` in a child process (the only way to SIGKILL a run), killed once its stderr contains `killAfter`. */
export async function runBin(argv: string[], killAfter?: string): Promise<{ code: number | null; signal: NodeJS.Signals | null; err: string }> {
  const c = spawn(process.execPath, [BIN, ...argv], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  c.stderr.setEncoding("utf8");
  c.stderr.on("data", (d: string) => {
    err += d;
    if (killAfter !== undefined && err.includes(killAfter)) c.kill("SIGKILL");
  });
  return await new Promise((res) => c.on("exit", (code, signal) => res({ code, signal, err })));
}
