import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { RwkvInputError } from "../core/errors.js";

/**
 * The model `rwkv generate` uses when none is given: a small RWKV-7 that this project trained with
 * `rwkv train` on tiny Shakespeare (byte level), shipped in the repository's models/ folder so the
 * README's main command works offline on a fresh clone. models/README.md has the command that made it.
 */
export const DEFAULT_MODEL_NAME = "models/rwkv7-shakespeare.safetensors";

/** The package root: three levels above this file's dist/src/node/. */
const PACKAGE_ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** Where the bundled model is; a clear error when it is not there. */
export function defaultModelPath(root: string = PACKAGE_ROOT): string {
  const path = join(root, DEFAULT_MODEL_NAME);
  if (!existsSync(path)) throw new RwkvInputError(path, "the bundled default model is missing: give a MODEL file");
  return path;
}
