import { createHash, type Hash } from "node:crypto";
import { createReadStream, existsSync, renameSync, statSync, unlinkSync } from "node:fs";
import { open } from "node:fs/promises";
import { RwkvInputError } from "../../core/errors.js";
import { checkWritableTarget } from "../atomic-write.js";

/*
 * One file over HTTP(S) into `dest`, safe to interrupt: bytes go to `dest.partial` (a fixed name,
 * so a later run finds it), a later run asks only for the rest with an HTTP Range request, the
 * SHA-256 and size are checked when known, and only a verified file is renamed to `dest` (atomic
 * on one file system). A download that fails its check is deleted, never renamed.
 */

export interface DownloadOptions {
  /** Expected size in bytes, when known: a different Content-Length or final size is refused. */
  readonly bytes?: number;
  /** Expected SHA-256 (hex), when known. */
  readonly sha256?: string;
  /** Called as bytes arrive: bytes on disk so far (resumed bytes included) and the total when known. */
  readonly onProgress?: (done: number, total: number | null) => void;
  /** Tries in all (the first included) when the connection breaks; each resumes where the last stopped. */
  readonly attempts?: number;
  /** Give up on a connection that delivers nothing for this long. */
  readonly stallMs?: number;
  /** Pause before another try (doubling each time), so a flaky link gets a moment to recover. */
  readonly retryDelayMs?: number;
  /** Injectable for tests; the global fetch otherwise. */
  readonly fetch?: typeof fetch;
}

export interface DownloadResult {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
  /** Bytes that were already on disk from an earlier, interrupted run. */
  readonly resumedFrom: number;
}

const DEFAULT_ATTEMPTS = 3;
const DEFAULT_STALL_MS = 60_000;
const DEFAULT_RETRY_DELAY_MS = 1000;
const HTTP_OK = 200, HTTP_PARTIAL = 206, HTTP_RANGE_NOT_SATISFIABLE = 416;

export const partialPath = (dest: string): string => `${dest}.partial`;

/** A broken connection: worth another try from where it stopped. */
class ConnectionLost extends Error {}

export async function download(url: string, dest: string, options: DownloadOptions = {}): Promise<DownloadResult> {
  checkWritableTarget(dest);
  const attempts = options.attempts ?? DEFAULT_ATTEMPTS;
  const partial = partialPath(dest);
  const resumedFrom = existsSync(partial) ? statSync(partial).size : 0;
  for (let attempt = 1; ; attempt++) {
    try {
      const { bytes, sha256 } = await fetchInto(url, partial, options);
      renameSync(partial, dest);
      return { path: dest, bytes, sha256, resumedFrom };
    } catch (e) {
      if (!(e instanceof ConnectionLost)) throw e;
      const have = existsSync(partial) ? statSync(partial).size : 0;
      if (attempt >= attempts) {
        const resume = have > 0 ? ` after ${have} bytes (${attempt} tries); run the same command again to resume from there` : ` (${attempt} tries)`;
        throw new RwkvInputError(url, e.message + resume);
      }
      const delay = (options.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS) * 2 ** (attempt - 1);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

/** Hashes what an earlier run left in the partial file, so the digest covers the whole file. */
async function hashExisting(path: string, hash: Hash): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
}

async function fetchInto(url: string, partial: string, options: DownloadOptions): Promise<{ bytes: number; sha256: string }> {
  const doFetch = options.fetch ?? fetch;
  const expected = options.bytes;
  let have = existsSync(partial) ? statSync(partial).size : 0;
  if (expected !== undefined && have > expected) { unlinkSync(partial); have = 0; } // not a prefix of this file

  const controller = new AbortController();
  const stallMs = options.stallMs ?? DEFAULT_STALL_MS;
  let stall = setTimeout(() => controller.abort(), stallMs);
  const touch = () => { clearTimeout(stall); stall = setTimeout(() => controller.abort(), stallMs); };
  let res: Response;
  try {
    res = await doFetch(url, { headers: have > 0 ? { Range: `bytes=${have}-` } : {}, signal: controller.signal, redirect: "follow" });
  } catch (e) {
    clearTimeout(stall);
    throw new ConnectionLost(`cannot connect (${causeText(e)})`);
  }
  try {
    if (res.status === HTTP_RANGE_NOT_SATISFIABLE && have > 0) {
      // The partial file already holds everything the server has: check it as it is.
      await res.body?.cancel();
      return await verify(partial, have, options, null);
    }
    if (res.status !== HTTP_OK && res.status !== HTTP_PARTIAL) {
      await res.body?.cancel();
      throw new RwkvInputError(url, `download failed: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ""}${res.status === 404 ? " (no such file on the server: check the name or URL)" : ""}`);
    }
    const resuming = res.status === HTTP_PARTIAL && have > 0;
    if (!resuming) have = 0; // the server sent the whole file: start over
    const range = res.headers.get("content-range");
    if (resuming && range !== null && !range.startsWith(`bytes ${have}-`)) {
      // Appending bytes from another offset would corrupt the file: drop it and start over.
      await res.body?.cancel();
      unlinkSync(partial);
      throw new ConnectionLost(`the server resumed at the wrong offset (${range})`);
    }
    const length = Number(res.headers.get("content-length") ?? NaN);
    const total = Number.isFinite(length) ? have + length : expected ?? null;
    if (expected !== undefined && total !== null && total !== expected) {
      await res.body?.cancel();
      throw new RwkvInputError(url, `the server offers ${total} bytes, but this file has ${expected}: refusing it`);
    }
    const hash = createHash("sha256");
    if (resuming) await hashExisting(partial, hash);
    const file = await open(partial, resuming ? "a" : "w");
    let done = have;
    try {
      options.onProgress?.(done, total);
      if (!res.body) throw new ConnectionLost("empty response");
      try {
        for await (const chunk of res.body) {
          touch();
          if (expected !== undefined && done + chunk.length > expected) {
            throw new RwkvInputError(url, `the server sent more than the expected ${expected} bytes: refusing it`);
          }
          await file.write(chunk);
          hash.update(chunk);
          done += chunk.length;
          options.onProgress?.(done, total);
        }
      } catch (e) {
        if (e instanceof RwkvInputError) throw e;
        throw new ConnectionLost(controller.signal.aborted ? `no data for ${stallMs / 1000} s` : `the connection was cut (${causeText(e)})`);
      }
      await file.sync();
    } finally {
      await file.close();
    }
    if (total !== null && done < total) throw new ConnectionLost("the connection ended early");
    return await verify(partial, done, options, hash);
  } finally {
    clearTimeout(stall);
  }
}

/** Checks size and digest of the finished partial file; a bad file is deleted so the next run starts clean. */
async function verify(partial: string, bytes: number, options: DownloadOptions, hash: Hash | null): Promise<{ bytes: number; sha256: string }> {
  if (hash === null) {
    hash = createHash("sha256");
    await hashExisting(partial, hash);
  }
  const sha256 = hash.digest("hex");
  const bad = options.bytes !== undefined && bytes !== options.bytes ? `size ${bytes} bytes, expected ${options.bytes}`
    : options.sha256 !== undefined && sha256 !== options.sha256.toLowerCase() ? `SHA-256 ${sha256}, expected ${options.sha256}` : null;
  if (bad !== null) {
    unlinkSync(partial);
    throw new RwkvInputError(partial.slice(0, -".partial".length), `the download is corrupt (${bad}); it was deleted, nothing was installed`);
  }
  return { bytes, sha256 };
}

function causeText(e: unknown): string {
  const cause = (e as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (e instanceof Error ? e.message : String(e));
}
