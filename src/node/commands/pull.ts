import { RwkvInputError } from "../../core/errors.js";
import { type CliIO, parse, str } from "../cli-util.js";
import type { CliConfig } from "../model-arg.js";
import { Progress } from "../progress.js";
import { CATALOG } from "../pull/catalog.js";
import { pulledModelFile } from "../pull/home.js";
import { pullModel } from "../pull/pull.js";

export const PULL_USAGE = `pull NAME|URL                download a model into $RWKV_HOME (~/.cache/rwkv-ts); then use NAME as MODEL
      NAME: ${Object.keys(CATALOG).join(", ")} (official RWKV-7 G1, World tokenizer)
      --sha256 HEX  --name NAME   for a URL: its checksum, the name to use it by (default: its file name)
      --list                      the catalog, with what is already pulled
      resumes an interrupted download; a file failing its size or SHA-256 check is deleted, never used`;

const MIB = 2 ** 20, GB = 1e9;

export async function pullCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, { sha256: { type: "string" }, name: { type: "string" }, list: { type: "boolean" } }, ["[NAME|URL]"]);
  if (values.list === true) {
    for (const e of Object.values(CATALOG)) {
      const have = pulledModelFile(config.home, e.name);
      io.stdout(`${e.name.padEnd(16)} ${(e.bytes / GB).toFixed(2).padStart(5)} GB  ${e.description}${have ? `  [pulled: ${have}]` : ""}\n`);
    }
    return 0;
  }
  const spec = positionals[0];
  if (spec === undefined) throw new RwkvInputError("pull", `give a model NAME (${Object.keys(CATALOG).join(", ")}) or a URL`);
  let progress: Progress | null = null;
  let current = "";
  const tty = process.stderr.isTTY === true;
  try {
    const result = await pullModel(spec, config.home, {
      sha256: str(values, "sha256"), name: str(values, "name"),
      onProgress: (file, done, total) => {
        if (file !== current) {
          progress?.finish();
          current = file;
          progress = new Progress({ label: `pull ${file}`, unit: "MiB", write: (t) => io.stderr(t), tty, columns: process.stderr.columns });
        }
        progress!.update(Math.floor(done / MIB), total === null ? 0 : Math.ceil(total / MIB));
      },
    });
    (progress as Progress | null)?.finish();
    io.stderr(result.downloaded.length ? `rwkv pull: ${result.name} ready\n` : `rwkv pull: ${result.name} was already pulled\n`);
    io.stdout(`${result.path}\n`);
    return 0;
  } catch (e) {
    (progress as Progress | null)?.clear();
    throw e;
  }
}
