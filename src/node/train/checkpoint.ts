import { crc32 } from "../../core/crc32.js";
import { readFileSync } from "node:fs";
import { RwkvInputError } from "../../core/errors.js";
import type { ModelConfig } from "../../core/model/model.js";
import type { Buf } from "../../core/backend/buffers.js";
import type { TrainHistory } from "../../core/train/loop.js";
import type { OptimizerState } from "../../core/train/optim.js";
import { ParamStore } from "../../core/train/params.js";
import type { RngState } from "../../core/train/rng.js";
import { writeFileAtomic } from "../atomic-write.js";

/*
 * A training checkpoint: everything a resumed run needs to continue exactly as if never stopped —
 * the weights, AdamW's moments and step, the RNG state (which also fixes the data position: the
 * batches are drawn from it), the step and token counters, the loss history and the run's options.
 *
 * File: "RWKVTRN1", u32 header length, JSON header, then every parameter's f32 values, then every
 * first moment, then every second moment (state-dict order, little-endian), then a u32 CRC-32 of
 * everything before it. Written to a temporary file and renamed, so a kill at any moment leaves
 * the previous checkpoint intact.
 */

const MAGIC = "RWKVTRN1";
const MAGIC_BYTES = 8;
const U32_BYTES = 4;
const F32_BYTES = 4;
export const CHECKPOINT_FORMAT_VERSION = 1;
/** Headers are small JSON; anything larger is not a checkpoint of ours. */
const MAX_HEADER_BYTES = 64 * 1024 * 1024;

export interface CheckpointHeader<RunOptions> {
  readonly formatVersion: number;
  readonly config: ModelConfig;
  readonly params: Array<{ name: string; shape: number[] }>;
  readonly run: RunOptions;
  readonly step: number;
  readonly tokensSeen: number;
  /** Wall-clock seconds spent training (not counting validation), summed over all sessions. */
  readonly seconds: number;
  readonly rng: RngState;
  readonly optimizerStep: number;
  readonly dataChecksum: string;
  readonly history: TrainHistory;
  /** The kernels' build that computed the steps (TrainKernels.build); absent in older checkpoints. */
  readonly kernels?: string;
}

export interface LoadedCheckpoint<RunOptions> {
  readonly header: CheckpointHeader<RunOptions>;
  readonly params: ParamStore;
  readonly optimizer: OptimizerState;
}


function f32Bytes(b: Buf): Uint8Array {
  const f = b instanceof Float32Array ? b : Float32Array.from(b);
  return new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
}

/** Writes the checkpoint atomically. */
export async function saveCheckpoint<R>(path: string, header: Omit<CheckpointHeader<R>, "formatVersion" | "params" | "optimizerStep">,
  params: ParamStore, opt: OptimizerState): Promise<void> {
  const full: CheckpointHeader<R> = {
    ...header, formatVersion: CHECKPOINT_FORMAT_VERSION,
    params: params.list.map((p) => ({ name: p.name, shape: [...p.shape] })), optimizerStep: opt.step,
  };
  const json = new TextEncoder().encode(JSON.stringify(full));
  const head = new Uint8Array(MAGIC_BYTES + U32_BYTES + json.length);
  head.set(new TextEncoder().encode(MAGIC));
  new DataView(head.buffer).setUint32(MAGIC_BYTES, json.length, true);
  head.set(json, MAGIC_BYTES + U32_BYTES);
  function* chunks(): Generator<Uint8Array> {
    let crc = crc32(head);
    yield head;
    for (const source of [(n: string) => params.get(n).data, (n: string) => opt.m.get(n)!, (n: string) => opt.v.get(n)!]) {
      for (const p of params.list) {
        const bytes = f32Bytes(source(p.name));
        crc = crc32(bytes, crc);
        yield bytes;
      }
    }
    const tail = new Uint8Array(U32_BYTES);
    new DataView(tail.buffer).setUint32(0, crc, true);
    yield tail;
  }
  await writeFileAtomic(path, chunks());
}

/** Reads and verifies a checkpoint; any damage is an RwkvInputError naming the file. */
export function loadCheckpointFile<R>(path: string): LoadedCheckpoint<R> {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RwkvInputError(path, code === "ENOENT" ? "no training checkpoint here (nothing to resume)" : `cannot read the checkpoint (${code})`);
  }
  const corrupt = (why: string) => new RwkvInputError(path, `corrupted training checkpoint: ${why}; resume from an intact copy or start again`);
  if (bytes.length < MAGIC_BYTES + U32_BYTES || bytes.subarray(0, MAGIC_BYTES).toString("latin1") !== MAGIC) {
    throw new RwkvInputError(path, "not an rwkv training checkpoint (to fine-tune from model weights use --model FILE)");
  }
  const n = bytes.readUInt32LE(MAGIC_BYTES);
  if (n > MAX_HEADER_BYTES || MAGIC_BYTES + U32_BYTES + n + U32_BYTES > bytes.length) throw corrupt("truncated header");
  const stored = bytes.readUInt32LE(bytes.length - U32_BYTES);
  const crc = crc32(bytes.subarray(0, bytes.length - U32_BYTES));
  if (crc !== stored) throw corrupt(`checksum mismatch (stored ${stored.toString(16)}, computed ${crc.toString(16)})`);
  let header: CheckpointHeader<R>;
  try {
    header = JSON.parse(bytes.subarray(MAGIC_BYTES + U32_BYTES, MAGIC_BYTES + U32_BYTES + n).toString("utf8")) as CheckpointHeader<R>;
  } catch {
    throw corrupt("header is not JSON");
  }
  if (header.formatVersion !== CHECKPOINT_FORMAT_VERSION) throw new RwkvInputError(path, `checkpoint format ${header.formatVersion} is not supported (expected ${CHECKPOINT_FORMAT_VERSION})`);
  const total = header.params.reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
  const start = MAGIC_BYTES + U32_BYTES + n;
  if (start + 3 * total * F32_BYTES + U32_BYTES !== bytes.length) throw corrupt("size does not match its tensor list");
  const payload = new Float32Array(bytes.buffer.slice(bytes.byteOffset + start, bytes.byteOffset + start + 3 * total * F32_BYTES));
  const params = new ParamStore("f32");
  const m = new Map<string, Buf>(), v = new Map<string, Buf>();
  let o = 0;
  for (const p of header.params) { const k = p.shape.reduce((a, b) => a * b, 1); params.add(p.name, p.shape, payload.subarray(o, o + k)); o += k; }
  for (const p of header.params) { const k = p.shape.reduce((a, b) => a * b, 1); m.set(p.name, payload.slice(o, o + k)); o += k; }
  for (const p of header.params) { const k = p.shape.reduce((a, b) => a * b, 1); v.set(p.name, payload.slice(o, o + k)); o += k; }
  return { header, params, optimizer: { step: header.optimizerStep, m, v } };
}
