import { existsSync, readdirSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { basename, extname, join } from "node:path";
import { RwkvInputError } from "../../core/errors.js";
import { CATALOG, type CatalogEntry } from "./catalog.js";

/** Where `rwkv pull` keeps models: one folder per model name under `<home>/models/`. */
export interface ModelHome {
  readonly dir: string;
}

/** The environment variable naming the cache folder; read only at the CLI edge (cliConfigFromEnv). */
export const RWKV_HOME_ENV = "RWKV_HOME";

/** ~/.cache/rwkv-ts unless $RWKV_HOME says otherwise. */
export function modelHomeFromEnv(env: Readonly<Record<string, string | undefined>>): ModelHome {
  const dir = env[RWKV_HOME_ENV];
  return { dir: dir !== undefined && dir !== "" ? dir : join(homedir(), ".cache", "rwkv-ts") };
}

/** The folder a pulled model lives in. */
export function modelDir(home: ModelHome, name: string): string {
  return join(home.dir, "models", name);
}

/** Model names are folder names: no separators, no dot files, nothing that walks out of the home. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function isModelName(s: string): boolean {
  return NAME_RE.test(s) && !s.includes("..");
}

/** File endings of the checkpoint formats the loader reads; anything else in a model folder is a side file. */
const MODEL_EXTENSIONS = new Set([".pth", ".safetensors", ".bin", ".gguf"]);

/** The model file inside a pulled model's folder, or null when the name was never pulled. */
export function pulledModelFile(home: ModelHome, name: string): string | null {
  if (!isModelName(name)) return null;
  const dir = modelDir(home, name);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) return null;
  const entry: CatalogEntry | undefined = CATALOG[name];
  if (entry) {
    const file = join(dir, entry.file);
    return existsSync(file) ? file : null;
  }
  const files = readdirSync(dir).filter((f) => !f.startsWith(".") && MODEL_EXTENSIONS.has(extname(f)));
  return files.length === 1 ? join(dir, files[0]) : null;
}

/**
 * What a command's MODEL argument means: an existing file as is; else a name pulled with `rwkv pull`
 * (a catalog name or the file stem of a pulled URL). A catalog name not pulled yet says how to get it;
 * anything else is left to the loader, which names the missing file.
 */
export function resolveModelArg(arg: string, home: ModelHome): string {
  if (existsSync(arg)) return arg;
  const pulled = pulledModelFile(home, arg);
  if (pulled !== null) return pulled;
  if (CATALOG[arg] !== undefined) throw new RwkvInputError(arg, `not downloaded yet: run "rwkv pull ${arg}" first (into ${modelDir(home, arg)})`);
  return arg;
}

/** The name a URL is pulled under: its file name without the extension. */
export function nameForUrl(url: URL): string {
  const file = decodeURIComponent(basename(url.pathname));
  return basename(file, extname(file));
}
