import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { RwkvInputError } from "../core/errors.js";
import type { Model } from "../core/model/model.js";
import { checkStateBelongs, decodeStateFile, encodeStateFile, modelIdentity, type StateFile } from "../core/state-file.js";
import type { State } from "../core/model/state.js";
import { loadCheckpoint } from "./load.js";

const STATE_FILE_MAGIC = "RWKVSTF1";

export type LoadedStart =
  | { kind: "state"; file: StateFile }
  /** A state-tuning checkpoint: its time_state is now the model's initial state. */
  | { kind: "time_state" };

/**
 * `--state-in FILE`: an rwkv-ts state file (checked to belong to `model`), or a checkpoint with
 * `blocks.i.att.time_state` tensors (a v6/v7 state-tuning result), told apart by content.
 */
export function loadStartState(path: string, model: Model): LoadedStart {
  let head: Buffer;
  try {
    head = readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RwkvInputError(path, code === "ENOENT" ? "no such file" : `cannot read (${code})`);
  }
  if (head.subarray(0, 8).toString("latin1") === STATE_FILE_MAGIC) {
    const file = decodeStateFile(new Uint8Array(head.buffer, head.byteOffset, head.length), path);
    checkStateBelongs(file, model, path);
    return { kind: "state", file };
  }
  const { checkpoint, close } = loadCheckpoint(path);
  try {
    model.useTimeState(checkpoint);
  } finally {
    close();
  }
  return { kind: "time_state" };
}

/**
 * Writes a state file atomically: a temporary file renamed into place, so a crash leaves no half
 * file. Asynchronous because a GPU backend's state values are read back first (State.sync).
 */
export async function saveStateFile(path: string, model: Model, state: State, logits: Float32Array | null, tokens: number, extra: unknown): Promise<void> {
  await state.sync();
  const bytes = encodeStateFile({ model: modelIdentity(model), state, logits, tokens, extra });
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, bytes);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new RwkvInputError(path, `cannot write state file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}
