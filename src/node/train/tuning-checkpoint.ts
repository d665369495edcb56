import { RwkvInputError } from "../../core/errors.js";
import { type FrozenMatrices, ParamStore, paramValues } from "../../core/train/params.js";
import { loadCheckpoint } from "../load.js";

/*
 * Checkpoints of adapter runs (--lora, --state-tune) hold only the trained tensors and their
 * optimizer moments, not the frozen base (which would make them three times the model's size):
 * a resumed run reloads the base from --model and checks it is the same by a fingerprint.
 */

/**
 * 64-bit FNV-1a (two 32-bit lanes) over names, shapes and every weight's f32 bits: one changed
 * weight changes it (a sample could miss it, and a resumed run must be on the very same base).
 */
export function storeFingerprint(store: ParamStore): string {
  let a = 0x811c9dc5, b = 0x01000193 ^ 0x5bd1e995;
  const mix = (x: number) => {
    a = Math.imul(a ^ x, 0x01000193) >>> 0;
    b = Math.imul(b ^ x, 0x5bd1e995) >>> 0;
  };
  for (const p of store.list) {
    for (let i = 0; i < p.name.length; i++) mix(p.name.charCodeAt(i));
    for (const d of p.shape) mix(d);
    const bits = new Uint32Array(paramValues(p).buffer); // a compact base hashes as its decoded values
    for (let i = 0; i < bits.length; i++) mix(bits[i]);
  }
  return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
}

/** The trained tensors only, copied (what an adapter run's checkpoint stores). */
export function trainedSubset(store: ParamStore, trainable: ReadonlySet<string>): ParamStore {
  const out = new ParamStore(store.dtype);
  for (const p of store.list) if (trainable.has(p.name)) out.add(p.name, p.shape, p.data);
  return out;
}

/** The base from `modelPath` (checked against `fingerprint`) with the saved trained tensors in place or appended. */
export function restoreTuned(saved: ParamStore, modelPath: string, fingerprint: string, frozen: FrozenMatrices,
  addTuning: (base: ParamStore) => void): ParamStore {
  const { checkpoint, close } = loadCheckpoint(modelPath);
  let store: ParamStore;
  try { store = ParamStore.fromCheckpoint(checkpoint, "f32", frozen); } finally { close(); }
  if (storeFingerprint(store) !== fingerprint) {
    throw new RwkvInputError(modelPath, "this base model is not the one the adapter run started from (its weights differ); resume needs the same --model file");
  }
  addTuning(store); // the same tensor list and order as the fresh run, then the saved values
  for (const p of saved.list) {
    const q = store.get(p.name);
    if (q.data.length !== p.data.length) throw new RwkvInputError(modelPath, `saved ${p.name} has ${p.data.length} values, the run's has ${q.data.length}`);
    q.data.set(p.data);
  }
  return store;
}
