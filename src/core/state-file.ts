import { FormatError, RwkvInputError } from "./errors.js";
import type { Model, ModelConfig } from "./model/model.js";
import { State } from "./model/state.js";

/*
 * The state file: RWKV's whole context, saved to resume later — a fixed number of bytes, except for
 * the versions with attention (RWKV-7b, the RWKV-8 hybrid), whose state holds a KV cache and the
 * token ids and so grows with every token.
 *
 *   bytes 0..7   magic "RWKVSTF1"
 *   u32          length J of the JSON header (UTF-8)
 *   J bytes      header: { format: "rwkv-ts-state", version: 1, model: {version, nLayer, nEmbd,
 *                nHead, headSize, vocabSize, fingerprint}, tokens: number of tokens the state has
 *                seen, hasLogits, extra: free-form JSON (sampler RNG, penalties, chat history...) }
 *   zero padding to a multiple of 4
 *   State.serialize() bytes (its own magic, per-layer layout and f32 data)
 *   if hasLogits: V f32 logits of the next token (so generation continues without re-running a token)
 *
 * The model identity is the config plus the weight fingerprint; loading a state into any other
 * model is refused.
 */

const MAGIC = "RWKVSTF1";
const FORMAT_VERSION = 1;
const MAX_HEADER = 16 * 1024 * 1024;

export interface ModelIdentity extends Pick<ModelConfig, "version" | "nLayer" | "nEmbd" | "nHead" | "headSize" | "vocabSize"> {
  readonly fingerprint: string;
}

export interface StateFile {
  readonly model: ModelIdentity;
  readonly state: State;
  readonly logits: Float32Array | null;
  /** Tokens seen since the initial state. */
  readonly tokens: number;
  readonly extra: unknown;
}

export function modelIdentity(m: Model): ModelIdentity {
  const { version, nLayer, nEmbd, nHead, headSize, vocabSize } = m.config;
  return { version, nLayer, nEmbd, nHead, headSize, vocabSize, fingerprint: m.fingerprint };
}

export function encodeStateFile(f: StateFile): Uint8Array {
  const header = new TextEncoder().encode(JSON.stringify({
    format: "rwkv-ts-state", version: FORMAT_VERSION, model: f.model, tokens: f.tokens, hasLogits: f.logits !== null, extra: f.extra ?? null,
  }));
  const state = f.state.serialize();
  const head = 12 + header.length;
  const pad = (4 - (head % 4)) % 4;
  const logitBytes = f.logits ? 4 * f.logits.length : 0;
  const out = new Uint8Array(head + pad + state.length + logitBytes);
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, header.length, true);
  out.set(header, 12);
  out.set(state, head + pad);
  if (f.logits) out.set(new Uint8Array(f.logits.buffer, f.logits.byteOffset, logitBytes), head + pad + state.length);
  return out;
}

export function decodeStateFile(bytes: Uint8Array, source: string): StateFile {
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    throw new FormatError(source, "not an RWKV state file (bad magic)");
  }
  const jl = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8, true);
  if (jl > MAX_HEADER || 12 + jl > bytes.length) throw new FormatError(source, "truncated state file header");
  let h: { format?: unknown; version?: unknown; model?: ModelIdentity; tokens?: unknown; hasLogits?: unknown; extra?: unknown };
  try {
    h = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(12, 12 + jl)));
  } catch {
    throw new FormatError(source, "state file header is not valid JSON");
  }
  if (h.format !== "rwkv-ts-state" || typeof h.model !== "object" || h.model === null) throw new FormatError(source, "not an rwkv-ts state file");
  const fileVersion = h.version; // the file layout's version, not the model's
  if (fileVersion !== FORMAT_VERSION) throw new FormatError(source, `state file version ${String(fileVersion)} is not supported (this build reads ${FORMAT_VERSION})`);
  const head = 12 + jl;
  const start = head + ((4 - (head % 4)) % 4);
  const V = Number(h.model.vocabSize);
  const logitBytes = h.hasLogits ? 4 * V : 0;
  if (!Number.isSafeInteger(V) || V <= 0 || start + logitBytes > bytes.length) throw new FormatError(source, "truncated state file");
  const state = State.deserialize(bytes.subarray(start, bytes.length - logitBytes), source);
  const logits = h.hasLogits ? new Float32Array(bytes.slice(bytes.length - logitBytes).buffer) : null;
  return { model: h.model, state, logits, tokens: Number(h.tokens) || 0, extra: h.extra ?? null };
}

/** Refuses a state saved from another model (different architecture, shape or weights). */
export function checkStateBelongs(f: StateFile, model: Model, source: string): void {
  const want = modelIdentity(model);
  for (const k of Object.keys(want) as Array<keyof ModelIdentity>) {
    if (f.model[k] !== want[k]) {
      throw new RwkvInputError(source, `state belongs to another model (${k} ${String(f.model[k])}, this model has ${String(want[k])})`);
    }
  }
  if (model.checkState) {
    const problem = model.checkState(f.state);
    if (problem) throw new RwkvInputError(source, `state layout does not match this model: ${problem}`);
    return;
  }
  const fresh = model.initState();
  const ok = f.state.layers.length === fresh.layers.length && fresh.layers.every((l, i) =>
    Object.entries(l).every(([name, v]) => f.state.layers[i][name]?.length === v.length));
  if (!ok) throw new RwkvInputError(source, "state layout does not match this model");
}
