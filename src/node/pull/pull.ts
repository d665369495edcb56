import { existsSync, mkdirSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import { CATALOG, type CatalogEntry } from "./catalog.js";
import { download, type DownloadOptions } from "./download.js";
import { isModelName, type ModelHome, modelDir, nameForUrl } from "./home.js";

export interface PullOptions extends Pick<DownloadOptions, "attempts" | "stallMs" | "retryDelayMs" | "fetch"> {
  /** For a URL: the expected SHA-256 (catalog names bring their own). */
  readonly sha256?: string;
  /** For a URL: the name to pull it under (default: the URL's file name without extension). */
  readonly name?: string;
  /** Progress of each file: its name, bytes so far and total (null when the server does not say). */
  readonly onProgress?: (file: string, done: number, total: number | null) => void;
  /** The names known (default: CATALOG); tests point entries at a local server. */
  readonly catalog?: Readonly<Record<string, CatalogEntry>>;
}

export interface PullResult {
  readonly name: string;
  /** The model file, what MODEL resolves to. */
  readonly path: string;
  /** Files fetched now (the rest were already there). */
  readonly downloaded: readonly string[];
}

interface Job { readonly file: string; readonly url: string; readonly bytes?: number; readonly sha256?: string }

const SHA256_RE = /^[0-9a-f]{64}$/i;

/** The files `spec` (a catalog name or an http(s) URL) stands for and the folder name they go under. */
function plan(spec: string, options: PullOptions): { name: string; jobs: Job[] } {
  const catalog = options.catalog ?? CATALOG;
  const entry = catalog[spec];
  if (entry) {
    if (options.sha256 !== undefined || options.name !== undefined) throw new RwkvInputError(spec, "a catalog name brings its own checksum and name");
    return { name: entry.name, jobs: [entry, ...entry.sideFiles] };
  }
  let url: URL;
  try {
    url = new URL(spec);
  } catch {
    throw new RwkvInputError(spec, `not a known model name nor a URL (known names: ${Object.keys(catalog).join(", ")})`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new RwkvInputError(spec, "only http and https URLs can be pulled");
  const file = decodeURIComponent(basename(url.pathname));
  const name = options.name ?? nameForUrl(url);
  if (file === "" || !isModelName(file)) throw new RwkvInputError(spec, "the URL does not end in a usable file name");
  if (!isModelName(name)) throw new RwkvInputError(name, "a model name may hold only letters, digits, '.', '_' and '-'");
  if (catalog[name]) throw new RwkvInputError(name, "is a catalog name: pull it by that name, or pick another --name");
  if (options.sha256 !== undefined && !SHA256_RE.test(options.sha256)) throw new RwkvInputError("--sha256", `must be 64 hex digits, got "${options.sha256}"`);
  return { name, jobs: [{ file, url: url.href, sha256: options.sha256 }] };
}

/** Downloads a model (and, for catalog models, its tokenizer file) into `<home>/models/<name>/`. */
export async function pullModel(spec: string, home: ModelHome, options: PullOptions = {}): Promise<PullResult> {
  const { name, jobs } = plan(spec, options);
  const dir = modelDir(home, name);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new RwkvInputError(dir, `cannot create the model folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const downloaded: string[] = [];
  for (const job of jobs) {
    const dest = join(dir, job.file);
    // A finished file is only ever there after its check passed (download renames it last).
    if (existsSync(dest) && (job.bytes === undefined || statSync(dest).size === job.bytes)) continue;
    await download(job.url, dest, {
      bytes: job.bytes, sha256: job.sha256, attempts: options.attempts, stallMs: options.stallMs, retryDelayMs: options.retryDelayMs, fetch: options.fetch,
      onProgress: options.onProgress && ((done, total) => options.onProgress!(job.file, done, total)),
    });
    downloaded.push(dest);
  }
  return { name, path: join(dir, jobs[0].file), downloaded };
}
