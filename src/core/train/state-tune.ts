import { RwkvInputError } from "../errors.js";
import type { ParamStore } from "./params.js";

/*
 * State tuning (RWKV-PEFT's "state" mode): the frozen model's WKV scans start from a trained
 * initial state `blocks.i.att.time_state` (H, N, N) instead of zeros; nothing else changes. The
 * training scan for it exists for RWKV-7 (TrainKernels.wkv7Forward's s0, wkv7Backward's gs0).
 */

export const TIME_STATE_SUFFIX = ".att.time_state";

/** Adds a zero time_state per layer (kept when the checkpoint already has one: tuning continues). */
export function addTimeStateParams(store: ParamStore, source: string): void {
  if (!store.has("blocks.0.att.r_k")) throw new RwkvInputError(source, "--state-tune trains RWKV-7 models only (this is an older version)");
  const [H, N] = store.get("blocks.0.att.r_k").shape;
  for (let i = 0; store.has(`blocks.${i}.ln1.weight`); i++) {
    const name = `blocks.${i}${TIME_STATE_SUFFIX}`;
    if (!store.has(name)) store.add(name, [H, N, N]);
  }
}

export function timeStateNames(store: ParamStore): string[] {
  return store.list.filter((p) => p.name.endsWith(TIME_STATE_SUFFIX)).map((p) => p.name);
}
