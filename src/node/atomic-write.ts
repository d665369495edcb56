import { randomBytes } from "node:crypto";
import { accessSync, constants as fsConstants, existsSync, renameSync, statSync, unlinkSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { constants } from "node:os";
import { basename, dirname, join } from "node:path";
import { RwkvInputError } from "../core/errors.js";

/*
 * Writes a file so that readers see either nothing (or the old file) or the complete new file:
 * the bytes go to a temporary file in the target's directory (same file system, so the final
 * rename is atomic), chunk by chunk, then the temporary file is fsynced and renamed over the
 * target. On an error, SIGINT or SIGTERM the temporary file is removed. Only SIGKILL (or a power
 * cut) can leave the temporary file behind; the target itself is never partially written.
 */

/** Writes larger than this are split so one huge tensor never needs one huge write call. */
const MAX_WRITE_BYTES = 64 * 1024 * 1024;
const TEMP_RANDOM_BYTES = 6;
const HANDLED_SIGNALS = ["SIGINT", "SIGTERM"] as const;
const SIGNAL_EXIT_BASE = 128;

export interface AtomicWriteResult {
  readonly path: string;
  readonly bytes: number;
}

/** The temporary name used for `target`: hidden, in the same directory, unique per attempt. */
export function tempPathFor(target: string): string {
  return join(dirname(target), `.${basename(target)}.${process.pid}.${randomBytes(TEMP_RANDOM_BYTES).toString("hex")}.tmp`);
}

function describeErrno(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case "ENOENT": return "the directory does not exist";
    case "EACCES": case "EPERM": return "permission denied";
    case "EROFS": return "read-only file system";
    case "ENOSPC": return "no space left on the device";
    case "EISDIR": return "is a directory";
    case "ENOTDIR": return "a parent path is not a directory";
    case "EDQUOT": return "disk quota exceeded";
    default: return err.code ?? err.message;
  }
}

/** Fails early, before any work, when `target` obviously cannot be written. */
export function checkWritableTarget(target: string): void {
  if (existsSync(target) && statSync(target).isDirectory()) throw new RwkvInputError(target, "cannot write the output: is a directory");
  const dir = dirname(target);
  if (!existsSync(dir)) throw new RwkvInputError(target, `cannot write the output: directory ${dir} does not exist`);
  if (!statSync(dir).isDirectory()) throw new RwkvInputError(target, `cannot write the output: ${dir} is not a directory`);
  try {
    accessSync(dir, fsConstants.W_OK);
  } catch {
    throw new RwkvInputError(target, `cannot write the output: directory ${dir} is not writable`);
  }
}

/**
 * Why creating the temporary file failed. ENOENT for a directory that exists means the file system
 * refuses new files there (procfs, sysfs: even root passes the access check), not a missing directory.
 */
function describeCreateError(e: unknown, dir: string): string {
  const code = (e as NodeJS.ErrnoException).code;
  if ((code === "ENOENT" && existsSync(dir)) || code === "EACCES" || code === "EPERM" || code === "EROFS") {
    return `directory ${dir} is not writable${code === "EROFS" ? " (read-only file system)" : ""}`;
  }
  return describeErrno(e);
}

/**
 * Streams `chunks` into `target` atomically. The chunks are produced lazily (a generator that
 * decodes or quantizes one tensor at a time), so memory stays at about one tensor.
 */
export async function writeFileAtomic(target: string, chunks: Iterable<Uint8Array>): Promise<AtomicWriteResult> {
  checkWritableTarget(target);
  const temp = tempPathFor(target);
  const removeTemp = () => {
    try { unlinkSync(temp); } catch { /* already gone, or never created */ }
  };
  const onSignal = (signal: NodeJS.Signals) => {
    removeTemp();
    process.exit(SIGNAL_EXIT_BASE + constants.signals[signal]);
  };
  const onExit = () => removeTemp();
  const unhook = () => {
    for (const s of HANDLED_SIGNALS) process.off(s, onSignal);
    process.off("exit", onExit);
  };
  // Hooked before the file exists: the file appears on disk before open() resolves.
  for (const s of HANDLED_SIGNALS) process.on(s, onSignal);
  process.on("exit", onExit);
  let handle: FileHandle;
  try {
    // "wx": never follow or clobber an existing file under the temporary name.
    handle = await open(temp, "wx");
  } catch (e) {
    unhook();
    throw new RwkvInputError(target, `cannot write the output: ${describeCreateError(e, dirname(target))}`);
  }

  let bytes = 0;
  let done = false;
  try {
    for (const chunk of chunks) {
      for (let off = 0; off < chunk.length; off += MAX_WRITE_BYTES) {
        const part = chunk.subarray(off, Math.min(chunk.length, off + MAX_WRITE_BYTES));
        let written = 0;
        while (written < part.length) {
          // Awaiting each write lets SIGINT/SIGTERM handlers run between writes.
          const { bytesWritten } = await handle.write(part, written, part.length - written, bytes + written);
          written += bytesWritten;
        }
        bytes += part.length;
      }
    }
    await handle.sync();
    await handle.close();
    renameSync(temp, target);
    done = true;
    return { path: target, bytes };
  } catch (e) {
    if (e instanceof RwkvInputError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string") throw new RwkvInputError(target, `writing the output failed: ${describeErrno(e)}`);
    throw e;
  } finally {
    if (!done) {
      await handle.close().catch(() => undefined);
      removeTemp();
    }
    unhook();
  }
}
