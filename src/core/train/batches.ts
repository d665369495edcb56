import { IGNORE_TARGET } from "../backend/train-ops.js";
import type { TrainRng } from "./rng.js";

/* Training and validation batches cut from a token sequence (GPT mode: each position predicts the next). */

export type TokenArray = Uint16Array | Uint32Array;

/** B random windows of T + 1 tokens (start uniform in [0, n - T - 1], nanoGPT's get_batch): inputs and targets (B·T). */
export function sampleBatch(train: TokenArray, B: number, T: number, rng: TrainRng): { inputs: Int32Array; targets: Int32Array } {
  const inputs = new Int32Array(B * T), targets = new Int32Array(B * T); // (B, T)
  const starts = train.length - T; // number of valid starts: s + T ≤ n - 1
  for (let b = 0; b < B; b++) {
    const s = rng.int(starts);
    for (let t = 0; t < T; t++) { inputs[b * T + t] = train[s + t]; targets[b * T + t] = train[s + t + 1]; }
  }
  return { inputs, targets };
}

/**
 * The whole validation split as consecutive windows of up to T scored positions, B at a time
 * (each window from a zero state, as in training). A short final window is padded with ignored
 * targets, so every validation token after the first is scored exactly once.
 */
export function* validationBatches(val: TokenArray, B: number, T: number): Generator<{ inputs: Int32Array; targets: Int32Array; B: number }> {
  const windows: number[] = [];
  for (let s = 0; s + 1 < val.length; s += T) windows.push(s);
  for (let w = 0; w < windows.length; w += B) {
    const nb = Math.min(B, windows.length - w);
    const inputs = new Int32Array(nb * T), targets = new Int32Array(nb * T).fill(IGNORE_TARGET); // (nb, T)
    for (let b = 0; b < nb; b++) {
      const s = windows[w + b];
      for (let t = 0; t < T; t++) {
        if (s + t < val.length) inputs[b * T + t] = val[s + t];
        if (s + t + 1 < val.length) targets[b * T + t] = val[s + t + 1];
      }
    }
    yield { inputs, targets, B: nb };
  }
}
