import { type ByteSource, checkRange, MemorySource } from "../core/bytes.js";
import { RwkvInputError } from "../core/errors.js";

/** What loadModel / loadTokenizer accept: bytes, a Blob or File, or a URL to fetch. */
export type Source = Uint8Array | ArrayBuffer | Blob | string;

interface FileReaderSyncLike { readAsArrayBuffer(blob: Blob): ArrayBuffer }
type FileReaderSyncCtor = new () => FileReaderSyncLike;

/**
 * Most bytes of a Blob read whole where no synchronous slice reader exists (a page's main thread).
 * Past it the caller is told to load in a Worker (startEngine), which reads slices on demand.
 */
export const MAIN_THREAD_BLOB_LIMIT = 1 << 30;

function fileReaderSync(): FileReaderSyncCtor | undefined {
  return (globalThis as { FileReaderSync?: FileReaderSyncCtor }).FileReaderSync;
}

/**
 * A Blob (a File the user picked, a fetched response) read a slice at a time: the checkpoint
 * parsers ask for a header, then one tensor at a time, so a file of several GB is never held whole
 * in JavaScript. Needs FileReaderSync, which browsers offer in Workers only.
 */
export class BlobSource implements ByteSource {
  readonly size: number;
  private readonly reader: FileReaderSyncLike;

  constructor(readonly name: string, private readonly blob: Blob) {
    const Reader = fileReaderSync();
    if (!Reader) throw new Error("BlobSource needs FileReaderSync (a Worker)");
    this.reader = new Reader();
    this.size = blob.size;
  }

  read(offset: number, length: number): Uint8Array {
    checkRange(this, offset, length);
    try {
      return new Uint8Array(this.reader.readAsArrayBuffer(this.blob.slice(offset, offset + length)));
    } catch (e) {
      // A picked file that was changed or deleted on disk since (NotReadableError).
      throw new RwkvInputError(this.name, `cannot be read any more (${e instanceof Error ? e.name : String(e)}): was it changed or removed?`);
    }
  }
}

function isBlob(x: unknown): x is Blob {
  return typeof Blob === "function" && x instanceof Blob;
}

/** The name errors show: a File's name, a URL, or `fallback`. */
export function sourceName(source: Source, fallback: string): string {
  if (typeof source === "string") return source;
  if (isBlob(source) && typeof (source as File).name === "string" && (source as File).name !== "") return (source as File).name;
  return fallback;
}

/** Fetches a URL as a Blob (browsers keep big ones on disk), with a clear error naming the URL. */
async function fetchBlob(url: string): Promise<Blob> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new RwkvInputError(url, `cannot fetch (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!response.ok) throw new RwkvInputError(url, `HTTP ${response.status} ${response.statusText}`.trim());
  return response.blob();
}

/** Random access to `source`: a Blob by slices where the context allows, bytes as they are. */
export async function openSource(source: Source, name: string): Promise<ByteSource> {
  if (typeof source === "string") return openSource(await fetchBlob(source), name);
  if (source instanceof Uint8Array) return new MemorySource(name, source);
  if (source instanceof ArrayBuffer) return new MemorySource(name, new Uint8Array(source));
  if (isBlob(source)) {
    if (fileReaderSync()) return new BlobSource(name, source);
    if (source.size > MAIN_THREAD_BLOB_LIMIT) {
      throw new RwkvInputError(name, `${(source.size / 2 ** 30).toFixed(1)} GiB is too large to read whole on a page's main thread; ` +
        "load it in a Worker (startEngine), which reads it in slices");
    }
    return new MemorySource(name, new Uint8Array(await source.arrayBuffer()));
  }
  throw new RwkvInputError(name, "expected a Uint8Array, an ArrayBuffer, a Blob/File or a URL string");
}

/** All bytes of a small source (a tokenizer file, a state file). */
export async function readAll(source: Source, name: string): Promise<Uint8Array> {
  if (typeof source === "string") return readAll(await fetchBlob(source), name);
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (isBlob(source)) return new Uint8Array(await source.arrayBuffer());
  throw new RwkvInputError(name, "expected a Uint8Array, an ArrayBuffer, a Blob/File or a URL string");
}
