import { defaultModelPath } from "./default-model.js";
import { type ModelHome, resolveModelArg } from "./pull/home.js";

/** Settings the CLI takes from its environment once, at its edge (cli.ts), and hands to commands. */
export interface CliConfig {
  /** Where `rwkv pull` stores models and where MODEL names are looked up ($RWKV_HOME). */
  readonly home: ModelHome;
}

/** A command's MODEL argument as a file path: the bundled model when absent, a pulled name resolved. */
export function modelPathFor(arg: string | undefined, config: CliConfig): string {
  return arg === undefined ? defaultModelPath() : resolveModelArg(arg, config.home);
}
