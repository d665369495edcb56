import { createHash } from "node:crypto";
import type { Model } from "../../core/model/model.js";

/*
 * Redis key names of the shared prefix-state store. A state is only valid for the exact weights
 * that computed it (and, once adapters exist, the adapter applied on top), so every key lives
 * under a namespace built from the model's identity:
 *
 *   rwkv:states:v1:<model id>:<adapter or "base">:s:<sha256 of the token prefix>   the state (a state file)
 *   rwkv:states:v1:<model id>:<adapter or "base">:lens                             sorted set of stored prefix lengths
 *
 * The lengths set lets a lookup hash only the prefix lengths that were ever stored instead of
 * every prefix of a prompt.
 */

const KEY_ROOT = "rwkv:states:v1";
/** Hex digits of the model id kept in keys: 128 bits, no accidental collisions between models. */
const MODEL_ID_HEX = 32;
const BASE_ADAPTER = "base";

/**
 * The model's identity for the store: the weight fingerprint and config, the backend (backends
 * round differently, so their states differ in the last bits) and how the file was loaded
 * (e.g. a quantization), so replicas share states only when they would compute the same ones.
 */
export function storeModelId(model: Model, loadOptions: unknown = null): string {
  const text = JSON.stringify({ fingerprint: model.fingerprint, config: model.config, backend: model.backend.name, load: loadOptions });
  return createHash("sha256").update(text).digest("hex").slice(0, MODEL_ID_HEX);
}

/** The namespace of one model (+ adapter): the adapter id is escaped so it cannot forge another namespace. */
export function storeNamespace(modelId: string, adapterId?: string | null): string {
  if (!/^[0-9a-f]+$/.test(modelId)) throw new RangeError(`model id must be lowercase hex, got ${JSON.stringify(modelId)}`);
  const adapter = adapterId === undefined || adapterId === null ? BASE_ADAPTER : `a.${encodeURIComponent(adapterId)}`;
  return `${KEY_ROOT}:${modelId}:${adapter}`;
}

export const stateKey = (namespace: string, digest: string): string => `${namespace}:s:${digest}`;
export const lengthsKey = (namespace: string): string => `${namespace}:lens`;

/**
 * SHA-256 (hex) of the first `n` tokens for each n in `lengths`, in one pass over the prompt: the
 * tokens are hashed as little-endian u32 and the running hash is copied at each length.
 */
export function prefixDigests(tokens: readonly number[], lengths: readonly number[]): Map<number, string> {
  const want = [...new Set(lengths)].filter((n) => Number.isSafeInteger(n) && n > 0 && n <= tokens.length).sort((a, b) => a - b);
  const out = new Map<number, string>();
  if (want.length === 0) return out;
  const bytes = Buffer.alloc(4 * want[want.length - 1]);
  for (let i = 0; i < bytes.length / 4; i++) bytes.writeUInt32LE(tokens[i] >>> 0, 4 * i);
  const h = createHash("sha256");
  let at = 0;
  for (const n of want) {
    h.update(bytes.subarray(4 * at, 4 * n));
    at = n;
    out.set(n, h.copy().digest("hex"));
  }
  return out;
}
